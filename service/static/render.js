/* tagflow review page, drawing: the message line, which view is showing (sign-in, empty queue,
 * workspace), the counters and queue stats, and a task (badges, duplicate hint, model scores,
 * tag buttons, lease countdown). Plain DOM writes: it holds no state and calls no API; what it
 * draws comes in as arguments. */

import { detailOf } from "./api.js";

const LEASE_WARN_S = 60;
const VIEWS = ["signin", "empty", "stalled", "workspace"];

export const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/* ---------- Messages and views ---------- */

export function say(text, kind = "info") {
  const el = $("message");
  el.textContent = text;
  el.className = text ? `message ${kind}` : "message";
}

/** Take a failure off the message line once what failed works again (an item or the empty
 * queue came): left there, "Could not fetch the next item" stayed in red above the item a
 * Retry fetched. What an action said since (a label saved, a warning) stays. */
function clearFailure() {
  if ($("message").classList.contains("error")) say("");
}

export function fail(what, response) {
  const detail = detailOf(response.data) || `HTTP ${response.status}`;
  say(`${what} failed: ${detail}`, "error");
}

/** Text from outside (a title, a comment, a name) set apart for the bidirectional algorithm:
 * a right-to-left override in it (U+202E) would otherwise turn the rest of its line around. */
function isolated(text) {
  return `\u2068${text}\u2069`;
}

/** A title to quote in the message line, cut to 60 characters and isolated. */
export function shortTitle(title) {
  return isolated(title.length > 60 ? `${title.slice(0, 57)}…` : title);
}

export function showOnly(id) {
  for (const view of VIEWS) $(view).hidden = view !== id;
}

export function renderSignin(reviewer) {
  $("who").hidden = true;
  showOnly("signin");
  $("reviewer-name").value = reviewer;
  $("api-key").value = "";
  (reviewer ? $("api-key") : $("reviewer-name")).focus();
}

export function renderEmpty() {
  clearFailure();
  showOnly("empty");
  $("check-again").focus({ preventScroll: true });
}

/** No item: the next one could not be fetched (the message line says why); Retry has the
 * focus, so Enter tries again. */
export function renderStalled() {
  showOnly("stalled");
  $("retry").focus({ preventScroll: true });
}

export function renderWho(reviewer) {
  $("who-name").textContent = reviewer;
  $("who-name").title = reviewer; // cut short with an ellipsis when it is long
  $("who").hidden = false;
}

export function renderBusy(busy) {
  $("workspace").classList.toggle("busy", busy);
  $("workspace").setAttribute("aria-busy", String(busy));
}

/** `done`: items labelled this session; `undoable`: labels U (or an Undo button: the
 * workspace's, or the one the empty and stalled views show while there is one) can still
 * take back. */
export function renderCounts(done, undoable) {
  $("stat-session").textContent = String(done);
  $("undo").disabled = undoable === 0;
  $("empty-undo").hidden = undoable === 0;
  $("stalled-undo").hidden = undoable === 0;
}

export function renderStats(stats) {
  $("stat-open").textContent = String(stats.open ?? "–");
  $("stat-leased").textContent = String(stats.leased ?? "–");
  $("stat-today").textContent = String(stats.labeled_today ?? "–");
}

/* ---------- A task ---------- */

function badge(text, kind) {
  return element("span", `badge badge-${kind}`, text);
}

function reasonBadge(reason) {
  if (reason === "user_report") return badge("Reported by a user", "report");
  if (reason === "low_confidence") return badge("Low model confidence", "lowconf");
  if (reason === "audit") {
    return badge("Audit sample: a random item; the model's suggestion is hidden, label it as usual", "audit");
  }
  if (reason === "label_check") {
    return badge("Label check: the suggestion is the training data's label, which the model doubts", "check");
  }
  return badge(reason, "plain");
}

/** Second opinions are blind (no earlier label shown); a decision shows both labels. */
function stageBadges(stage) {
  if (stage === "second") {
    return [badge("Second opinion: label it on your own; the first label is hidden", "check")];
  }
  if (stage === "adjudicate") return [badge("Decide: two reviewers disagree", "report")];
  return [];
}

function renderBadges(task) {
  const priority = badge(`priority ${Number(task.priority).toFixed(2)}`, "plain");
  $("badges").replaceChildren(reasonBadge(task.reason), ...stageBadges(task.stage), priority);
}

function renderEarlier(task) {
  const el = $("earlier");
  const labels = task.earlier_labels || [];
  el.hidden = labels.length === 0;
  const parts = labels.flatMap((l, i) => [
    i ? "; " : "",
    element("bdi", "", l.reviewer),
    " chose ",
    element("strong", "", l.tag),
  ]);
  el.replaceChildren(...(labels.length ? [...parts, ". Your label decides."] : []));
}

/** What users reported of the tag (a user_report task): the claim, and their comment. */
function renderReports(task) {
  const el = $("reports");
  const reports = task.reports || [];
  el.hidden = reports.length === 0;
  const parts = reports.flatMap((r, i) => [
    i ? "; " : reports.length > 1 ? "Users say it is " : "A user says it is ",
    element("strong", "", r.correct_tag),
    ...(r.comment ? [" (“", element("bdi", "", r.comment), "”)"] : []),
  ]);
  el.replaceChildren(...(reports.length ? [...parts, "."] : []));
}

/** A labelled item this one reads like. `duplicate_of` is that item's label id, not a task
 * number: shown as "item #4" it named another item (task 4), so the page names the
 * look-alike by its title. */
function renderDuplicate(task) {
  const el = $("duplicate");
  el.hidden = task.duplicate_of === null || task.duplicate_of === undefined;
  if (el.hidden) return el.replaceChildren();
  const lead = task.duplicate_title
    ? ["Looks like “", element("bdi", "", task.duplicate_title), "”"]
    : ["Looks like an item"];
  if (!task.duplicate_tag) return el.replaceChildren(...lead, ", not labelled yet.");
  const tag = element("strong", "", task.duplicate_tag);
  el.replaceChildren(...lead, ", which was labelled ", tag, ".");
}

function percent(value) {
  return `${Math.round(Number(value || 0) * 100)}%`;
}

/** Whether the task comes with nothing of the model's: no tag and no scores (an audit item,
 * which is labelled blind). A suggested tag retired since still has its scores to show. */
function noSuggestion(suggestion) {
  return !suggestion || (!suggestion.tag && Object.keys(suggestion.scores || {}).length === 0);
}

/** The model panel: one bar per tag (in shortcut order), then any other tag the model
 * scored; hidden, the item taking its width, when the task comes with no suggestion. */
function renderScores(suggestion, tags) {
  const blind = noSuggestion(suggestion);
  $("suggestion").hidden = blind;
  $("workspace").classList.toggle("blind", blind);
  const scores = (suggestion && suggestion.scores) || {};
  const names = tags.map((t) => t.name);
  for (const name of Object.keys(scores)) if (!names.includes(name)) names.push(name);
  const top = suggestion && suggestion.tag;
  $("suggestion-tag").textContent = top ? `${top} · ${percent(scores[top])}` : "No suggestion";
  $("scores").replaceChildren(...names.map((name) => scoreRow(name, scores[name], name === top)));
}

function scoreRow(name, value, isTop) {
  const head = element("div", "score-head");
  head.append(element("span", "score-name", name), element("span", "score-value", percent(value)));
  const track = element("div", "score-track");
  track.setAttribute("aria-hidden", "true");
  const bar = element("div", "score-bar");
  bar.style.width = percent(value);
  track.append(bar);
  const row = element("li", isTop ? "score score-top" : "score");
  row.append(head, track);
  return row;
}

function tagButton(tag, i, onPick) {
  const button = element("button", "tag");
  button.type = "button";
  button.dataset.tag = tag.name;
  button.title = tag.description;
  if (i < 9) button.setAttribute("aria-keyshortcuts", String(i + 1));
  button.append(
    element("kbd", "", i < 9 ? String(i + 1) : "·"),
    element("span", "tag-name", tag.name),
    element("span", "tag-desc", tag.description),
  );
  button.addEventListener("click", () => onPick(tag.name));
  return button;
}

/** A button per tag; clicking one calls `onPick(tagName)`. */
export function renderTagButtons(tags, onPick) {
  $("tag-buttons").replaceChildren(...tags.map((tag, i) => tagButton(tag, i, onPick)));
}

/** Fill the workspace with `task` and show it; `tags` orders the score bars. */
export function renderTask(task, tags) {
  clearFailure();
  renderBadges(task);
  $("item-title").textContent = task.title;
  $("item-description").textContent = task.description || "(no description)";
  $("item-description").scrollTop = 0;
  renderDuplicate(task);
  renderEarlier(task);
  renderReports(task);
  $("task-ref").textContent = `Task #${task.task_id}`;
  renderScores(task.suggestion, tags);
  const suggested = task.suggestion && task.suggestion.tag;
  for (const button of $("tag-buttons").children) {
    button.classList.toggle("suggested", button.dataset.tag === suggested);
  }
  renderLease(task);
  showOnly("workspace");
  // Focus the item, not a button: a second Enter must not label the next item by accident.
  $("item").focus({ preventScroll: true });
  revealItem();
}

/** Bring the item into sight, with the message line above it, when its top is above the
 * window: on a phone (or a short window) the reviewer scrolls down to the tag buttons, and
 * the next item otherwise came in out of sight while the same buttons stayed under their
 * thumb, so the next tap labelled an item they had not seen. Where the item is in sight
 * already, nothing moves. */
function revealItem() {
  if ($("item").getBoundingClientRect().top < 0) $("message").scrollIntoView({ block: "start" });
}

/* ---------- Lease countdown ---------- */

/** `task` just came from the server: its lease runs out `lease_remaining_s` from now, by
 * the server's clock. Read off `lease_expires_at` against the browser's clock, as before, a
 * clock 20 minutes ahead showed a fresh item's lease as run out, and one behind showed
 * minutes the reviewer did not have. The deadline is kept on Date.now(), whose error cancels
 * out, rather than performance.now(), which some systems stop while the computer sleeps.
 * Returns `task`. */
export function leaseReceived(task) {
  const left = task ? task.lease_remaining_s : null;
  if (task) task.leaseEndsAt = typeof left === "number" ? Date.now() + left * 1000 : null;
  return task;
}

/** When the lease on `task` runs out, on Date.now()'s clock, as `leaseReceived` set it
 * (null: none). */
export function leaseDeadline(task) {
  const end = task && task.leaseEndsAt;
  return typeof end === "number" ? end : null;
}

function leaseText(left) {
  if (left <= 0) return "lease expired: another reviewer may take this item";
  const minutes = Math.floor(left / 60);
  return `yours for ${minutes}:${String(left % 60).padStart(2, "0")}`;
}

/** How long the page still holds `task` (null: no task, the line is cleared). */
export function renderLease(task) {
  const el = $("lease");
  const deadline = leaseDeadline(task);
  if (deadline === null) {
    el.textContent = "";
    return;
  }
  const left = Math.round((deadline - Date.now()) / 1000);
  el.classList.toggle("expiring", left > 0 && left <= LEASE_WARN_S);
  el.classList.toggle("expired", left <= 0);
  el.textContent = leaseText(left);
}
