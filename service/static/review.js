/* tagflow review page: claim an item, label or skip it, claim the next; U undoes the last label.
 * Plain ES modules, no build step. This one is the page's controller and entry point: it owns
 * the page state, runs the actions (claim, label, skip, undo, release, stats) one at a time,
 * and wires sign-in, the keyboard shortcuts and the page lifecycle. HTTP and credentials live
 * in api.js, drawing in render.js. */

import {
  AuthError, api, detailOf, forgetCredentials, forgetHistory, loadCredentials, loadHistory,
  saveCredentials, saveHistory,
} from "./api.js";
import {
  $, fail, leaseDeadline, leaseReceived, renderBusy, renderCounts, renderEmpty,
  renderLease, renderSignin, renderStalled, renderStats, renderTagButtons, renderTask, renderWho,
  say, shortTitle,
} from "./render.js";
import { lastShownElsewhere, showing, shownElsewhere } from "./tabs.js";

const EMPTY_POLL_MS = 20000;
const STATS_POLL_MS = 30000;
// The lease is renewed halfway through, while the tab is visible and its reviewer has done
// something on the page (a key, a click, a touch, a scroll, the pointer moved) within the
// last RENEW_IDLE_LEASES lease lengths (20 minutes with the 10-minute default): an item
// left on an open page goes back to the queue when its lease then runs out.
const RENEW_IDLE_LEASES = 2;
const RENEW_RETRY_MS = 5000; // after a renewal that got no answer
const MIN_LEASE_MS = 2000; // a floor: a lease the server says is (nearly) over renews in 1 s
const ACTIVITY_EVENTS = ["keydown", "pointerdown", "pointermove", "wheel", "touchstart", "scroll"];
// A phone or tablet: no keys to press, so messages name the Undo button, not U (the same
// query as review.css's, which hides the keyboard hints there).
const TOUCH_ONLY = window.matchMedia("(hover: none) and (pointer: coarse)");

const state = {
  reviewer: "",
  key: "",
  tags: [], // [{name, description}], in shortcut order
  task: null, // the task this page holds a lease on
  labelled: [], // {taskId, title, tag} labelled in this session, newest last (for undo)
  sessionDone: new Set(), // task ids labelled in this session
  // A label sent with no answer yet ({taskId, title, tag}): it may be saved or not, so it is
  // sent again (safe: a label counts once) before a reload claims, U undoes anything or
  // Switch hands the page over.
  pending: null,
  busy: false,
  emptyTimer: null,
  // Bumped by Switch: an answer to a request made before it belongs to nobody on this page.
  epoch: 0,
  switching: false, // Switch is sending a label with no answer again first
  // Lease renewal of `task`: its length as the page saw it, when to renew it next, whether
  // a renewal is in flight, and when the reviewer last did something on the page.
  lease: { ms: 0, renewAt: Infinity, renewing: false },
  activeAt: Date.now(),
};

/** An API call with the signed-in reviewer's key. */
function call(method, path, body, options) {
  return api(state.key, method, path, body, options);
}

function reviewerBody() {
  return { reviewer: state.reviewer };
}

/** Whether the reviewer switched since `epoch` was read. */
function stale(epoch) {
  return epoch !== state.epoch;
}

/** What the server said in an answer that is not a success, as words for the reviewer. */
function why(response) {
  return detailOf(response.data) || `the server answered HTTP ${response.status}`;
}

/** A 409 that says the change raced another one ("task 5 changed concurrently; try again",
 * "the queue is too contended right now; try again"): the same request may well go through. */
function raced(response) {
  return response.status === 409 && /changed concurrently|too contended/.test(why(response));
}

/* ---------- Views, with the state that goes with them ---------- */

/** The page holds `task` now (null: none), and the reviewer's other tabs can tell. */
function hold(task) {
  state.task = task;
  showing(state.reviewer, task ? task.task_id : null);
  leaseTaken(task);
}

/** `task`'s lease was taken or renewed just now: the next renewal is due halfway through. */
function leaseTaken(task) {
  const deadline = leaseDeadline(task);
  if (deadline === null) {
    state.lease.renewAt = Infinity;
    return;
  }
  const now = Date.now();
  state.lease.ms = Math.max(deadline - now, MIN_LEASE_MS);
  state.lease.renewAt = now + state.lease.ms / 2;
}

function showSignin() {
  hold(null);
  stopEmptyPoll();
  renderSignin(state.reviewer);
}

function showEmpty() {
  hold(null);
  renderEmpty();
  startEmptyPoll();
}

/** Look for work every 20 seconds while the page has none: the queue empty, or the last try
 * failed (an outage ends without the reviewer pressing Retry). */
function startEmptyPoll() {
  if (state.emptyTimer === null) {
    state.emptyTimer = setInterval(() => {
      if (document.visibilityState === "visible") run(begin);
    }, EMPTY_POLL_MS);
  }
}

function stopEmptyPoll() {
  clearInterval(state.emptyTimer);
  state.emptyTimer = null;
}

function showTask(task) {
  stopEmptyPoll();
  hold(task);
  renderTask(task, state.tags);
}

function setBusy(busy) {
  state.busy = busy;
  renderBusy(busy);
}

/** The page's stand after a label, or no item, when the next one could not be fetched:
 * what it held is no longer offered, and Retry claims again. */
function showStalled(text) {
  hold(null);
  renderStalled();
  say(text, "error");
  startEmptyPoll();
}

function updateCounts() {
  renderCounts(state.sessionDone.size, state.labelled.length + (state.pending ? 1 : 0));
  // Kept for this tab only, so that U still works after a reload.
  saveHistory(state.reviewer, state.labelled, [...state.sessionDone], state.pending);
}

/* ---------- Actions ---------- */

/** The approved tags and a button for each; when they cannot be loaded, the page stops on
 * Retry rather than showing nothing. */
async function loadTags() {
  const epoch = state.epoch;
  let response;
  try {
    response = await call("GET", "/tags");
  } catch (err) {
    if (err instanceof AuthError || stale(epoch)) throw err;
    console.error(err);
    return showStalled(`Could not load the tags: tagflow cannot be reached (${err.message}).`);
  }
  if (stale(epoch)) return;
  if (!response.ok) return showStalled(`Could not load the tags: ${why(response)}.`);
  state.tags = response.data.tags;
  renderTagButtons(state.tags, (tag) => run(() => label(tag)));
}

/** The tags (unless loaded already), the label with no answer sent again, then an item:
 * what sign-in, Retry and a return from the back/forward cache do. */
async function begin() {
  if (!state.tags.length) await loadTags();
  if (!state.tags.length) return;
  await settlePending();
  await claimNext();
}

/** Claim the next item and show it. When that fails, the page stops on Retry (the message
 * starts with `done`, what was saved before): it never goes on showing an item it may no
 * longer hold. */
async function claimNext(done = "") {
  const epoch = state.epoch;
  const who = { key: state.key, reviewer: state.reviewer };
  let response;
  try {
    response = await act("/review/claim", reviewerBody());
  } catch (err) {
    if (err instanceof AuthError || stale(epoch)) throw err;
    console.error(err);
    return showStalled(`${done}Could not fetch the next item: tagflow cannot be reached `
      + `(${err.message}).`);
  }
  if (stale(epoch)) return giveBack(response, who);
  if (response.status === 204) showEmpty();
  else if (response.ok && response.data) showTask(leaseReceived(response.data));
  else showStalled(`${done}Could not fetch the next item: ${why(response)}.`);
  refreshStats();
}

/** A claim answered after the reviewer switched: nobody will see its item, so its lease goes
 * back to the queue now rather than when it expires. */
function giveBack(response, who) {
  const task = response.ok ? response.data : null;
  if (!task || !task.task_id || (state.task && state.task.task_id === task.task_id)) return;
  const body = { reviewer: who.reviewer };
  api(who.key, "POST", `/review/${task.task_id}/release`, body)
    .then((answer) => answer.ok || console.warn("release failed:", answer.status))
    .catch((err) => console.warn("release failed:", err));
}

/** POST `path`, once more if the server says the change raced another one. */
async function act(path, body) {
  const response = await call("POST", path, body);
  return raced(response) ? call("POST", path, body) : response;
}

/** After a 409 on `task`: an item that raced again is still the reviewer's and stays; any
 * other (labelled meanwhile, leased to someone else, shed...) is gone, and the next comes. */
async function refused(task, verb, response) {
  const text = `“${shortTitle(task.title)}” was not ${verb}: ${why(response)}.`;
  say(text, "warn");
  if (!raced(response)) await claimNext(`${text} `);
}

/** The tag pressed was taken off the approved list after the page loaded it (tagflow
 * restarted with a new tag file): the buttons are loaded again and the item stays on screen,
 * still held, for another tag. Before, the page kept offering the refused button. */
async function retired(task, response) {
  const text = `“${shortTitle(task.title)}” was not labelled: ${why(response)}.`;
  await loadTags();
  if (state.task !== task) return;
  showTask(task);
  say(`${text} The approved tags have changed: pick one of these.`, "warn");
}

/** The label the server holds for `task` that is this reviewer's own, carried by a 409
 * (their earlier request was saved, and its answer never reached the page); null for any
 * other refusal. The server sends a label with its acting reviewer's own only, and names it
 * as the person was first recorded ("Ann" for an "ann" typed here): the names are not
 * compared. */
function ownLabel(response) {
  return response.status === 409 && response.data && response.data.label
    ? response.data.label
    : null;
}

/** `task` is labelled `tag` on the server: it leaves the page, counts, and U can take it back. */
function recordLabel(task, tag) {
  // Saved: whatever happens next, this item is not offered again.
  if (state.task && state.task.task_id === task.task_id) hold(null);
  state.labelled.push({ taskId: task.task_id, title: task.title, tag });
  state.sessionDone.add(task.task_id);
  updateCounts();
}

/** How to take back the label just given: the key, or on a touch screen the button. */
function undoHint(verb) {
  return TOUCH_ONLY.matches ? `Tap “Undo last label” to ${verb} it.` : `Press U to ${verb} it.`;
}

/** The reviewer's own label was saved already (its answer was lost on the way): the page
 * says so, with the tag saved, and goes on as after any label. */
async function savedBefore(task, saved) {
  recordLabel(task, saved.tag);
  const text = `“${shortTitle(task.title)}” is already labelled ${saved.tag}, by you (a label `
    + `whose answer did not reach this page, or another tab). ${undoHint("change")}`;
  say(text, "success");
  await claimNext(`${text} `);
}

/** An answer about `task` came: a label sent for it with no answer is settled by it. */
function settled(task) {
  if (state.pending && state.pending.taskId === task.task_id) {
    state.pending = null;
    updateCounts();
  }
}

/** Send again the label that got no answer, and say what became of it: saved (now or the
 * first time; it counts once either way) or refused. Returns what it said ("" with nothing
 * pending); null when there is still no answer, and the label stays pending. */
async function settlePending() {
  const pending = state.pending;
  if (!pending) return "";
  const epoch = state.epoch;
  const task = { task_id: pending.taskId, title: pending.title };
  let response;
  try {
    response = await call("POST", `/review/${pending.taskId}/label`,
      { tag: pending.tag, reviewer: state.reviewer });
  } catch (err) {
    if (err instanceof AuthError || stale(epoch)) throw err;
    console.warn("the label with no answer could not be sent again:", err);
    return null;
  }
  if (stale(epoch)) return null;
  settled(task);
  const saved = ownLabel(response) || (response.ok ? response.data : null);
  let text;
  if (saved) {
    recordLabel(task, saved.tag);
    text = `“${shortTitle(task.title)}” is labelled ${saved.tag} (the answer to your label had `
      + "not reached this page).";
  } else {
    text = `“${shortTitle(task.title)}” was not labelled: ${why(response)}.`;
  }
  say(text, saved ? "success" : "warn");
  return text;
}

async function label(tag) {
  const task = state.task;
  if (!task) return;
  const epoch = state.epoch;
  // Pending from the moment it is sent: a Switch or a reload before the answer sends it again.
  state.pending = { taskId: task.task_id, title: task.title, tag };
  updateCounts();
  let response;
  try {
    response = await act(`/review/${task.task_id}/label`, { tag, reviewer: state.reviewer });
  } catch (err) {
    if (stale(epoch)) throw err;
    if (err instanceof AuthError) {
      settled(task); // refused: nothing to send again
      throw err;
    }
    console.error(err);
    return say(`“${shortTitle(task.title)}” may or may not be saved: tagflow did not answer `
      + `(${err.message}). Press the tag again: a label saved already is not saved twice.`,
    "error");
  }
  if (stale(epoch)) return;
  settled(task);
  const saved = ownLabel(response);
  if (saved) return savedBefore(task, saved);
  if (response.status === 409) return refused(task, "labelled", response);
  if (response.status === 422 && /not in the approved list/.test(why(response))) {
    return retired(task, response);
  }
  if (!response.ok) return fail("Labelling", response);
  recordLabel(task, response.data.tag);
  say(`Labelled “${shortTitle(task.title)}” as ${response.data.tag}. ${undoHint("undo")}`, "success");
  await claimNext(`Saved “${shortTitle(task.title)}” as ${response.data.tag}. `);
}

async function skip() {
  const task = state.task;
  if (!task) return;
  const epoch = state.epoch;
  let response;
  try {
    response = await act(`/review/${task.task_id}/skip`, reviewerBody());
  } catch (err) {
    if (err instanceof AuthError || stale(epoch)) throw err;
    console.error(err);
    return say(`“${shortTitle(task.title)}” may already be skipped: tagflow did not answer `
      + `(${err.message}). Press S again: a skip sent twice counts once.`, "error");
  }
  if (stale(epoch)) return;
  settled(task);
  const saved = ownLabel(response);
  if (saved) return savedBefore(task, saved);
  if (response.status === 409) return refused(task, "skipped", response);
  if (!response.ok) return fail("Skipping", response);
  hold(null);
  say(`Skipped “${shortTitle(task.title)}”.`, "info");
  await claimNext(`Skipped “${shortTitle(task.title)}”. `);
}

async function undo() {
  await settlePending(); // the last label may be the one whose answer never came
  const last = state.labelled[state.labelled.length - 1];
  if (!last) return say("Nothing to undo yet.", "info");
  const epoch = state.epoch;
  const who = { key: state.key, reviewer: state.reviewer };
  const response = await call("POST", `/review/${last.taskId}/reopen`, reviewerBody());
  if (stale(epoch)) return giveBack(response, who);
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
  showTask(leaseReceived(response.data));
  say(`Undone: “${shortTitle(last.title)}” is back (was ${last.tag}). Label it again.`, "info");
  refreshStats();
}

/** Give `task` back to the queue, as a courtesy: when that fails, the lease runs out by
 * itself, and until then the reviewer's next claim hands the task back to them. A failure is
 * logged, never thrown, so it cannot undo what the action around it did. */
async function release(task, options = {}) {
  try {
    const response = await call("POST", `/review/${task.task_id}/release`, reviewerBody(),
      options);
    if (!response.ok) console.warn("release of task", task.task_id, "failed:", response.status);
  } catch (err) {
    if (err instanceof AuthError) throw err;
    console.warn("release of task", task.task_id, "failed:", err);
  }
}

async function refreshStats() {
  if (!state.key) return;
  try {
    const response = await call("GET", "/review/stats");
    if (!response.ok) return console.warn("stats failed:", response.status);
    renderStats(response.data);
  } catch (err) {
    console.warn("stats failed:", err);
  }
}

/** Renew the lease on the item shown when it is due (see RENEW_IDLE_LEASES): before, the
 * lease ran out after 10 minutes while the reviewer was still at the item, and another
 * reviewer's claim took it. Runs beside the reviewer's actions, not as one: the server renews
 * only a lease its reviewer still holds, so a renewal landing after a label or a skip changes
 * nothing. A refusal (someone else holds the item now, it is labelled...) is handled as a
 * refused label is: the page says why and claims the next item. */
async function renewLease() {
  const task = state.task;
  const now = Date.now();
  if (!task || state.lease.renewing || now < state.lease.renewAt) return;
  if (document.visibilityState !== "visible") return;
  if (now - state.activeAt > RENEW_IDLE_LEASES * state.lease.ms) return;
  if (state.pending && state.pending.taskId === task.task_id) return; // its label takes it
  const epoch = state.epoch;
  state.lease.renewing = true;
  let response;
  try {
    response = await call("POST", `/review/${task.task_id}/renew`, reviewerBody());
  } catch (err) {
    if (state.task === task) state.lease.renewAt = Date.now() + RENEW_RETRY_MS;
    // A key refused (revoked meanwhile) goes back to sign-in, as any action's would.
    if (err instanceof AuthError && !stale(epoch)) run(async () => { throw err; });
    else console.warn("lease renewal failed:", err);
    return;
  } finally {
    state.lease.renewing = false;
  }
  if (stale(epoch) || state.task !== task) return;
  if (response.ok && response.data) {
    task.lease_remaining_s = response.data.lease_remaining_s;
    leaseReceived(task);
    leaseTaken(task);
    renderLease(task);
  } else if (response.status === 409) {
    state.lease.renewAt = Infinity;
    const saved = ownLabel(response);
    run(async () => {
      if (state.task !== task) return; // an action moved on meanwhile
      await (saved ? savedBefore(task, saved) : refused(task, "kept for you", response));
    });
  } else {
    console.warn("lease renewal failed:", response.status);
    state.lease.renewAt = Date.now() + RENEW_RETRY_MS;
  }
}

/** The reviewer did something on the page: their item's lease is renewed while they do. */
function active() {
  state.activeAt = Date.now();
}

/* ---------- One action at a time, and what goes wrong ---------- */

/** Run one user action at a time; auth and network problems end up on the message line.
 * Once the reviewer switched, what the action still does or throws is theirs no more. */
async function run(action) {
  if (state.busy) return;
  const epoch = state.epoch;
  setBusy(true);
  try {
    await action();
  } catch (err) {
    if (!stale(epoch)) handleError(err);
  } finally {
    if (!stale(epoch)) setBusy(false);
  }
}

function handleError(err) {
  if (err instanceof AuthError) return authProblem(err);
  console.error(err);
  say(`Could not reach tagflow (${err.message}). Check the connection and try again.`, "error");
}

function authProblem(err) {
  forgetCredentials();
  state.key = "";
  showSignin();
  if (err.status === 403 && (err.detail || "").includes("has a personal key")) {
    // A shared key under the name of someone who has a key of their own.
    say(`${err.detail}. Sign in with that key, or under your own name.`, "error");
  } else if (err.status === 403) {
    say(`This key is not allowed to review items (${err.detail}). Sign in with a reviewer key.`,
      "error");
  } else {
    say(`The API key was not accepted (${err.detail}). Check it and sign in again.`, "error");
  }
}

/* ---------- Sign-in and sign-out ---------- */

async function start() {
  renderWho(state.reviewer);
  await run(begin);
}

/** Why the name typed at sign-in cannot go with a key, or "" when it can. A personal key
 * carries its holder's name, and the server refuses any other (403); a shared key says no
 * name, so the typed one is all there is. */
function nameProblem(typed, keyName) {
  if (keyName === null) return typed ? "" : "This key is shared by all reviewers: type your name.";
  if (typed && typed !== keyName) {
    return `This key is ${keyName}'s personal key; leave the name empty or type ${keyName}.`;
  }
  return "";
}

/** The name to review under with `key`, asked of the server (GET /whoami) before anything is
 * claimed; "" when that name cannot go with the key, null when the server could not say (the
 * message line says why in both cases). A client key is refused as a 403 would be; an unknown
 * key throws AuthError from `api`. */
async function reviewerFor(key, typed) {
  const response = await api(key, "GET", "/whoami");
  if (!response.ok) {
    fail("Checking the key", response);
    return null;
  }
  const { role, name } = response.data;
  if (role === "client") throw new AuthError(403, "this key's role (client) may not review");
  const problem = nameProblem(typed, name);
  if (problem) {
    say(problem, "warn");
    $("reviewer-name").focus();
    return "";
  }
  return name ?? typed;
}

async function onSignin(event) {
  event.preventDefault();
  const typed = $("reviewer-name").value.trim();
  const key = $("api-key").value.trim();
  if (!key) {
    say("Enter your API key.", "warn");
    $("api-key").focus();
    return;
  }
  state.reviewer = typed; // a refused key brings the form back with the typed name in it
  let reviewer = "";
  await run(async () => {
    reviewer = await reviewerFor(key, typed);
  });
  if (!reviewer) return;
  Object.assign(state, { reviewer, key, ...loadHistory(reviewer) });
  updateCounts();
  saveCredentials(reviewer, key);
  say("", "info");
  start();
}

/** "Switch": hands the page to the next person, once a label that got no answer was sent
 * again (settleBeforeSwitch); then at once, even with a request in flight (its answer is
 * then ignored, and an item it claimed released), giving back every item the reviewer
 * holds: the one shown, and one whose claim or undo was saved with its answer lost, which
 * the page cannot name. */
async function signOut() {
  if (state.switching) return;
  state.switching = true;
  let settledText;
  try {
    settledText = await settleBeforeSwitch();
  } finally {
    state.switching = false;
  }
  if (settledText !== null) await handOver(settledText ? `${settledText} ` : "");
}

/** Before Switch: the label sent with no answer is sent again, as the next reviewer could
 * not. What that said ("" with nothing pending); null when it still got no answer: the page
 * then does not switch and says so, for switching would lose the label. A key refused now
 * can send nothing more, and the page switches. */
async function settleBeforeSwitch() {
  const pending = state.pending;
  if (!pending) return "";
  const title = shortTitle(pending.title);
  say(`Sending your label of “${title}” again before switching…`, "info");
  let text;
  try {
    text = await settlePending();
  } catch (err) {
    if (!(err instanceof AuthError)) throw err;
    return `Your label of “${title}” could not be sent: the key was refused (${err.detail}).`;
  }
  if (text === null) {
    say(`Not switched: your label of “${title}” (${pending.tag}) still got no answer, and `
      + "switching would lose it. Switch again once tagflow can be reached.", "error");
  }
  return text;
}

/** Switch proper: the page is the next person's at once, and `before` (what became of a
 * label with no answer) starts the message line. */
async function handOver(before) {
  const task = state.task;
  const who = { key: state.key, reviewer: state.reviewer };
  state.epoch += 1;
  forgetCredentials();
  forgetHistory();
  // Their own personal key would be refused with the last reviewer's name still in the form.
  Object.assign(state, {
    key: "", reviewer: "", labelled: [], sessionDone: new Set(), pending: null,
  });
  setBusy(false);
  updateCounts();
  showSignin();
  if (!who.key) return say(`${before}Signed out.`, "info");
  say(`${before}${task ? "Signed out. Releasing your item…" : "Signed out."}`, "info");
  // What the reviewer's other tabs show stays theirs: its lease is theirs as much as this
  // tab's (a claim hands a reviewer the item they hold), and they are still at it there.
  const kept = (await shownElsewhere(who.reviewer)) || [];
  const released = await releaseHeld(who, kept);
  if (state.key) return; // someone signed in meanwhile: the message line is theirs
  const text = signedOutText(task, released, kept);
  say(`${before}${text}`, released === null ? "warn" : "info");
}

/** Give back every lease `who` holds but the items of `kept` (POST /review/release); the ids
 * released, or null when that got no answer or was refused. */
async function releaseHeld(who, kept) {
  try {
    const body = { reviewer: who.reviewer, keep: kept };
    const answer = await api(who.key, "POST", "/review/release", body);
    if (answer.ok && answer.data) return answer.data.released;
    console.warn("release failed:", answer.status);
  } catch (err) {
    console.warn("release failed:", err);
  }
  return null;
}

/** What Switch says once the release answered: `task` is the item shown, if any, and `kept`
 * the items left to the reviewer's other tabs. */
function signedOutText(task, released, kept) {
  if (task && kept.includes(task.task_id)) {
    return "Signed out. Your item stays yours in your other tab, which shows it.";
  }
  if (released === null) {
    return task ? "Signed out. Your item could not be released: it goes back to the queue when "
      + "its lease runs out." : "Signed out. An item claimed for you may stay held until its "
      + "lease runs out: tagflow did not answer the release.";
  }
  // Not released: labelled meanwhile, leased to someone else, gone; it was not theirs to hold.
  if (task && released.includes(task.task_id)) return "Signed out. Your item was released.";
  return "Signed out.";
}

/* ---------- Keyboard ---------- */

function typingInField(event) {
  return Boolean(event.target.closest
    && event.target.closest("input, textarea, select, [contenteditable]"));
}

/** The action a key stands for right now: 1-9 label, S skips, U undoes; null for other keys. */
function shortcut(key) {
  const tag = /^[1-9]$/.test(key) ? state.tags[Number(key) - 1] : undefined;
  if (tag && state.task) return () => label(tag.name);
  if (key === "s" && state.task) return skip;
  if (key === "u" && (state.labelled.length || state.pending)) return undo;
  return null;
}

/** The shortcut key `event` stands for: the character typed, or where that is no Latin
 * letter or digit, the key's place on the keyboard (`code`). On a Cyrillic, Greek or Hebrew
 * layout the S key types "ы", "σ" or "ד", and on French AZERTY the number keys type & é " '
 * unshifted: read as typed alone, S and U did nothing there and AZERTY's numbers wanted
 * Shift. A Latin letter is taken as typed, so Dvorak's "o" (on the S key) stays an "o". */
function shortcutKey(event) {
  const typed = (event.key || "").toLowerCase();
  if (/^[a-z0-9]$/.test(typed)) return typed;
  const place = /^(?:Key([A-Z])|Digit([0-9])|Numpad([0-9]))$/.exec(event.code || "");
  // A named key ("End" on a numpad without Num Lock, a dead key) is no character typed.
  if (!place || [...typed].length !== 1) return typed;
  const [, letter, digit, numpad] = place;
  // A letter's place counts only where the layout types no Latin letter there at all.
  if (letter) return /^[\x20-\x7e]$/.test(typed) ? typed : letter.toLowerCase();
  return digit || numpad;
}

function onKey(event) {
  if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || !state.key) return;
  if (typingInField(event)) return;
  const action = shortcut(shortcutKey(event));
  if (!action) return;
  run(action);
  event.preventDefault();
}

/* ---------- Page lifecycle ---------- */

/** The page is going away (closed, left, or hidden where the browser may discard it): the
 * label with no answer is sent once more, then the item shown is given back. Both go as
 * keepalive fetches, which outlive the page (sendBeacon cannot carry the Authorization
 * header the key travels in). */
function onExit() {
  if (!state.key) return;
  sendPendingOnExit();
  releaseOnExit();
}

/** Send the label with no answer as the page goes: its sessionStorage goes with a closed tab,
 * and the label with it. Sent twice (a label in flight, hidden then closed) it counts once;
 * it stays pending here, for a page that comes back settles it as a reload does. */
function sendPendingOnExit() {
  const pending = state.pending;
  if (!pending) return;
  call("POST", `/review/${pending.taskId}/label`, { tag: pending.tag, reviewer: state.reviewer },
    { keepalive: true })
    .catch((err) => console.warn("the label with no answer could not be sent:", err));
}

function releaseOnExit() {
  const task = state.task;
  // The item of a label with no answer is not given back: its label, sent above, takes it
  // out of the queue, and released first it could go to another reviewer meanwhile.
  if (!task || (state.pending && state.pending.taskId === task.task_id)) return;
  // Another tab of the reviewer shows it: the lease is theirs there still.
  if (lastShownElsewhere(state.reviewer).includes(task.task_id)) return;
  release(task, { keepalive: true }).catch((err) => console.warn("release failed:", err));
  hold(null);
}

function bindControls() {
  $("signin-form").addEventListener("submit", onSignin);
  $("sign-out").addEventListener("click", signOut);
  $("skip").addEventListener("click", () => run(skip));
  for (const id of ["undo", "empty-undo-button", "stalled-undo-button"]) {
    $(id).addEventListener("click", () => run(undo));
  }
  $("check-again").addEventListener("click", () => run(claimNext));
  $("retry").addEventListener("click", () => run(begin));
  document.addEventListener("keydown", onKey);
  window.addEventListener("pagehide", onExit);
  // A phone may discard a hidden page without a pagehide: the last moment to send is now.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden" && state.key) sendPendingOnExit();
    if (document.visibilityState === "visible") active(); // back at the page
  });
  for (const type of ACTIVITY_EVENTS) {
    document.addEventListener(type, active, { capture: true, passive: true });
  }
  // Back from the back/forward cache: what it held was released on leaving, and it starts
  // again as a reload does (a label with no answer sent again first, then a claim).
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && state.key) run(begin);
  });
}

function startTimers() {
  setInterval(() => {
    renderLease(state.task);
    if (state.task) shownElsewhere(state.reviewer); // for releaseOnExit, which cannot wait
    if (state.key) renewLease();
  }, 1000);
  setInterval(() => {
    if (document.visibilityState === "visible") refreshStats();
  }, STATS_POLL_MS);
}

/** Sign in again with what the last visit saved, checked with the server first: a key
 * re-issued to someone else since then goes back to the sign-in form saying whose it is,
 * rather than failing at the first claim; a revoked one is refused as at sign-in. */
async function resume(saved) {
  Object.assign(state, saved, loadHistory(saved.reviewer));
  updateCounts();
  let reviewer; // stays undefined when the check threw: unreachable, or the key refused
  await run(async () => {
    reviewer = await reviewerFor(saved.key, saved.reviewer);
  });
  if (reviewer === "") {
    forgetCredentials();
    state.key = "";
    return showSignin(); // the message line keeps what reviewerFor said
  }
  if (reviewer && reviewer !== state.reviewer) {
    Object.assign(state, { reviewer, ...loadHistory(reviewer) });
    updateCounts();
  }
  // This tab is theirs now, whoever later signs in in another tab.
  if (reviewer) saveCredentials(reviewer, saved.key, { tabOnly: true });
  // Unreachable, or an answer other than 200: start() tries again and says what fails.
  if (state.key) start();
}

function init() {
  bindControls();
  startTimers();
  const saved = loadCredentials();
  if (!saved) return showSignin();
  resume(saved);
}

init();
