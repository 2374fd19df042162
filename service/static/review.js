/* tagflow review page: claim an item, label or skip it, claim the next; U undoes the last label.
 * Plain JS, no build step. Every API call sends the reviewer's key as a Bearer token. */
"use strict";

const STORAGE_KEY = "tagflow.review.credentials";
const EMPTY_POLL_MS = 20000;
const STATS_POLL_MS = 30000;
const LEASE_WARN_S = 60;

const $ = (id) => document.getElementById(id);

const state = {
  reviewer: "",
  key: "",
  tags: [], // [{name, description}], in shortcut order
  task: null, // the task this page holds a lease on
  labelled: [], // {taskId, title, tag} labelled in this session, newest last (for undo)
  sessionDone: new Set(), // task ids labelled in this session
  busy: false,
  emptyTimer: null,
};

/** The key was refused (401) or may not do this (403). */
class AuthError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

/* ---------- API ---------- */

function detailOf(data) {
  if (!data) return "";
  const detail = data.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((e) => e.msg || JSON.stringify(e)).join("; ");
  return detail === undefined ? "" : JSON.stringify(detail);
}

async function api(method, path, body, { keepalive = false } = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, keepalive, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  const text = response.status === 204 ? "" : await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text }; }
  }
  if (response.status === 401 || response.status === 403) {
    throw new AuthError(response.status, detailOf(data));
  }
  return { status: response.status, ok: response.ok, data };
}

function reviewerBody() {
  return { reviewer: state.reviewer };
}

/* ---------- Messages and views ---------- */

function say(text, kind = "info") {
  const el = $("message");
  el.textContent = text;
  el.className = text ? `message ${kind}` : "message";
}

function fail(what, response) {
  const detail = detailOf(response.data) || `HTTP ${response.status}`;
  say(`${what} failed: ${detail}`, "error");
}

function shortTitle(title) {
  return title.length > 60 ? `${title.slice(0, 57)}…` : title;
}

function showOnly(id) {
  for (const section of ["signin", "empty", "workspace"]) $(section).hidden = section !== id;
}

function showSignin() {
  state.task = null;
  stopEmptyPoll();
  $("who").hidden = true;
  showOnly("signin");
  $("reviewer-name").value = state.reviewer;
  $("api-key").value = "";
  (state.reviewer ? $("api-key") : $("reviewer-name")).focus();
}

function showEmpty() {
  state.task = null;
  showOnly("empty");
  $("check-again").focus({ preventScroll: true });
  if (state.emptyTimer === null) {
    state.emptyTimer = setInterval(() => {
      if (document.visibilityState === "visible") run(claimNext);
    }, EMPTY_POLL_MS);
  }
}

function stopEmptyPoll() {
  clearInterval(state.emptyTimer);
  state.emptyTimer = null;
}

function setBusy(busy) {
  state.busy = busy;
  $("workspace").classList.toggle("busy", busy);
  $("workspace").setAttribute("aria-busy", String(busy));
}

function updateCounts() {
  $("stat-session").textContent = String(state.sessionDone.size);
  $("undo").disabled = state.labelled.length === 0;
  $("empty-undo").hidden = state.labelled.length === 0;
}

/* ---------- Rendering a task ---------- */

function badge(text, kind) {
  const el = document.createElement("span");
  el.className = `badge badge-${kind}`;
  el.textContent = text;
  return el;
}

function renderBadges(task) {
  const badges = [];
  if (task.reason === "user_report") badges.push(badge("Reported by a user", "report"));
  else if (task.reason === "low_confidence") badges.push(badge("Low model confidence", "lowconf"));
  else if (task.reason === "audit") badges.push(badge("Audit: accepted automatically", "audit"));
  else badges.push(badge(task.reason, "plain"));
  badges.push(badge(`priority ${Number(task.priority).toFixed(2)}`, "plain"));
  $("badges").replaceChildren(...badges);
}

function renderDuplicate(task) {
  const el = $("duplicate");
  el.hidden = task.duplicate_of === null || task.duplicate_of === undefined;
  if (el.hidden) return el.replaceChildren();
  const lead = `Looks like item #${task.duplicate_of}`;
  if (!task.duplicate_tag) return el.replaceChildren(`${lead}, not labelled yet.`);
  const tag = document.createElement("strong");
  tag.textContent = task.duplicate_tag;
  el.replaceChildren(`${lead}, which was labelled `, tag, ".");
}

function percent(value) {
  return `${Math.round(Number(value || 0) * 100)}%`;
}

function renderScores(suggestion) {
  const scores = (suggestion && suggestion.scores) || {};
  const names = state.tags.map((t) => t.name);
  for (const name of Object.keys(scores)) if (!names.includes(name)) names.push(name);
  const top = suggestion && suggestion.tag;
  $("suggestion-tag").textContent = top ? `${top} · ${percent(scores[top])}` : "No suggestion";
  $("scores").replaceChildren(...names.map((name) => scoreRow(name, scores[name], name === top)));
}

function scoreRow(name, value, isTop) {
  const row = document.createElement("li");
  row.className = isTop ? "score score-top" : "score";
  const head = document.createElement("div");
  head.className = "score-head";
  const label = document.createElement("span");
  label.className = "score-name";
  label.textContent = name;
  const number = document.createElement("span");
  number.className = "score-value";
  number.textContent = percent(value);
  head.append(label, number);
  const track = document.createElement("div");
  track.className = "score-track";
  track.setAttribute("aria-hidden", "true");
  const bar = document.createElement("div");
  bar.className = "score-bar";
  bar.style.width = percent(value);
  track.append(bar);
  row.append(head, track);
  return row;
}

function renderTagButtons() {
  const buttons = state.tags.map((tag, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tag";
    button.dataset.tag = tag.name;
    button.title = tag.description;
    const kbd = document.createElement("kbd");
    kbd.textContent = i < 9 ? String(i + 1) : "·";
    if (i < 9) button.setAttribute("aria-keyshortcuts", String(i + 1));
    const name = document.createElement("span");
    name.className = "tag-name";
    name.textContent = tag.name;
    const desc = document.createElement("span");
    desc.className = "tag-desc";
    desc.textContent = tag.description;
    button.append(kbd, name, desc);
    button.addEventListener("click", () => run(() => label(tag.name)));
    return button;
  });
  $("tag-buttons").replaceChildren(...buttons);
}

function showTask(task) {
  stopEmptyPoll();
  state.task = task;
  renderBadges(task);
  $("item-title").textContent = task.title;
  $("item-description").textContent = task.description || "(no description)";
  $("item-description").scrollTop = 0;
  renderDuplicate(task);
  $("task-ref").textContent = `Task #${task.task_id}`;
  renderScores(task.suggestion);
  const suggested = task.suggestion && task.suggestion.tag;
  for (const button of $("tag-buttons").children) {
    button.classList.toggle("suggested", button.dataset.tag === suggested);
  }
  tickLease();
  showOnly("workspace");
  // Focus the item, not a button: a second Enter must not label the next item by accident.
  $("item").focus({ preventScroll: true });
}

function leaseDeadline(task) {
  const raw = task && task.lease_expires_at;
  if (!raw) return null;
  const hasZone = /([zZ]|[+-]\d\d:?\d\d)$/.test(raw);
  return Date.parse(hasZone ? raw : `${raw}Z`);
}

function tickLease() {
  const el = $("lease");
  const deadline = leaseDeadline(state.task);
  if (deadline === null || Number.isNaN(deadline)) {
    el.textContent = "";
    return;
  }
  const left = Math.round((deadline - Date.now()) / 1000);
  el.classList.toggle("expiring", left > 0 && left <= LEASE_WARN_S);
  el.classList.toggle("expired", left <= 0);
  if (left <= 0) {
    el.textContent = "lease expired: another reviewer may take this item";
  } else {
    const minutes = Math.floor(left / 60);
    el.textContent = `yours for ${minutes}:${String(left % 60).padStart(2, "0")}`;
  }
}

/* ---------- Actions ---------- */

async function loadTags() {
  const response = await api("GET", "/tags");
  if (!response.ok) return fail("Loading the tags", response);
  state.tags = response.data.tags;
  renderTagButtons();
}

async function claimNext() {
  const response = await api("POST", "/review/claim", reviewerBody());
  if (response.status === 204) showEmpty();
  else if (response.ok && response.data) showTask(response.data);
  else fail("Claiming the next item", response);
  refreshStats();
}

async function label(tag) {
  const task = state.task;
  if (!task) return;
  const response = await api("POST", `/review/${task.task_id}/label`, { tag, reviewer: state.reviewer });
  if (response.status === 409) {
    say("Lease lost: this item went to someone else. Here is the next one.", "warn");
    return claimNext();
  }
  if (!response.ok) return fail("Labelling", response);
  state.labelled.push({ taskId: task.task_id, title: task.title, tag });
  state.sessionDone.add(task.task_id);
  updateCounts();
  say(`Labelled “${shortTitle(task.title)}” as ${tag}. Press U to undo.`, "success");
  await claimNext();
}

async function skip() {
  const task = state.task;
  if (!task) return;
  const response = await api("POST", `/review/${task.task_id}/skip`, reviewerBody());
  if (response.status === 409) say("Lease lost: this item went to someone else.", "warn");
  else if (!response.ok) return fail("Skipping", response);
  else say(`Skipped “${shortTitle(task.title)}”.`, "info");
  await claimNext();
}

async function undo() {
  const last = state.labelled[state.labelled.length - 1];
  if (!last) return say("Nothing to undo yet.", "info");
  const response = await api("POST", `/review/${last.taskId}/reopen`, reviewerBody());
  if (!response.ok) {
    if (response.status === 404 || response.status === 409) state.labelled.pop();
    updateCounts();
    return fail(`Undoing the label of “${shortTitle(last.title)}”`, response);
  }
  state.labelled.pop();
  state.sessionDone.delete(last.taskId);
  updateCounts();
  const current = state.task;
  if (current && current.task_id !== response.data.task_id) await release(current);
  showTask(response.data);
  say(`Undone: “${shortTitle(last.title)}” is back (was ${last.tag}). Label it again.`, "info");
  refreshStats();
}

async function release(task, options = {}) {
  const response = await api("POST", `/review/${task.task_id}/release`, reviewerBody(), options);
  if (!response.ok) console.warn("release of task", task.task_id, "failed:", response.status);
}

async function refreshStats() {
  if (!state.key) return;
  try {
    const response = await api("GET", "/review/stats");
    if (!response.ok) return console.warn("stats failed:", response.status);
    $("stat-open").textContent = String(response.data.open ?? "–");
    $("stat-leased").textContent = String(response.data.leased ?? "–");
    $("stat-today").textContent = String(response.data.labeled_today ?? "–");
  } catch (err) {
    console.warn("stats failed:", err);
  }
}

/** Run one user action at a time; auth and network problems end up on the message line. */
async function run(action) {
  if (state.busy) return;
  setBusy(true);
  try {
    await action();
  } catch (err) {
    handleError(err);
  } finally {
    setBusy(false);
  }
}

function handleError(err) {
  if (err instanceof AuthError) return authProblem(err);
  console.error(err);
  say(`Could not reach tagflow (${err.message}). Check the connection and try again.`, "error");
}

function authProblem(err) {
  localStorage.removeItem(STORAGE_KEY);
  state.key = "";
  showSignin();
  if (err.status === 403) {
    say(`This key is not allowed to review items (${err.detail}). Sign in with a reviewer key.`,
      "error");
  } else {
    say(`The API key was not accepted (${err.detail}). Check it and sign in again.`, "error");
  }
}

/* ---------- Sign-in, keyboard, lifecycle ---------- */

async function start() {
  $("who-name").textContent = state.reviewer;
  $("who").hidden = false;
  await run(async () => {
    await loadTags();
    if (state.tags.length) await claimNext();
  });
}

function onSignin(event) {
  event.preventDefault();
  const reviewer = $("reviewer-name").value.trim();
  const key = $("api-key").value.trim();
  if (!reviewer || !key) {
    say("Enter your name and your API key.", "warn");
    (reviewer ? $("api-key") : $("reviewer-name")).focus();
    return;
  }
  Object.assign(state, { reviewer, key, labelled: [], sessionDone: new Set() });
  updateCounts();
  localStorage.setItem(STORAGE_KEY, JSON.stringify({ reviewer, key }));
  say("", "info");
  start();
}

async function signOut() {
  await run(async () => {
    if (state.task) await release(state.task);
  });
  localStorage.removeItem(STORAGE_KEY);
  state.key = "";
  say("Signed out. Your lease was released.", "info");
  showSignin();
}

function onKey(event) {
  if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || !state.key) return;
  if (event.target.closest && event.target.closest("input, textarea, select, [contenteditable]")) {
    return;
  }
  const key = event.key.toLowerCase();
  const tag = /^[1-9]$/.test(key) ? state.tags[Number(key) - 1] : undefined;
  if (tag && state.task) run(() => label(tag.name));
  else if (key === "s" && state.task) run(skip);
  else if (key === "u" && state.labelled.length) run(undo);
  else return;
  event.preventDefault();
}

function releaseOnExit() {
  if (!state.task || !state.key) return;
  // sendBeacon cannot carry the Authorization header; a keepalive fetch outlives the page.
  release(state.task, { keepalive: true }).catch((err) => console.warn("release failed:", err));
  state.task = null;
}

function readSaved() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    return saved && saved.reviewer && saved.key ? saved : null;
  } catch (err) {
    console.warn("ignoring unreadable saved credentials:", err);
    return null;
  }
}

function init() {
  $("signin-form").addEventListener("submit", onSignin);
  $("sign-out").addEventListener("click", signOut);
  $("skip").addEventListener("click", () => run(skip));
  $("undo").addEventListener("click", () => run(undo));
  $("check-again").addEventListener("click", () => run(claimNext));
  document.addEventListener("keydown", onKey);
  window.addEventListener("pagehide", releaseOnExit);
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && state.key) run(claimNext);
  });
  setInterval(tickLease, 1000);
  setInterval(() => {
    if (document.visibilityState === "visible") refreshStats();
  }, STATS_POLL_MS);
  const saved = readSaved();
  if (!saved) return showSignin();
  Object.assign(state, saved);
  start();
}

init();
