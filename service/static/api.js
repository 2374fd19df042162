/* tagflow review page, talking to the server: one fetch wrapper that sends the reviewer's key as
 * a Bearer token and turns 401/403 into an AuthError, the reading of FastAPI's error `detail`,
 * the reviewer's name + key kept in localStorage, and their undo list in sessionStorage. No DOM,
 * no page state. */

const STORAGE_KEY = "tagflow.review.credentials";
const HISTORY_KEY = "tagflow.review.history";
const HISTORY_MAX = 100; // labels U can take back after a reload; the server keeps them all
// How long a call waits for its answer. A network that goes silent (no answer, the
// connection never closed) otherwise kept the page busy, every key ignored, for minutes.
// What the server did meanwhile is safe to send again: a label or a skip counts once.
const REQUEST_TIMEOUT_MS = 20000;

/** The key was refused (401) or may not do this (403). */
export class AuthError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

/** The human-readable part of an error body: a string, or FastAPI's list of validation errors. */
export function detailOf(data) {
  if (!data) return "";
  const detail = data.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((e) => e.msg || JSON.stringify(e)).join("; ");
  return detail === undefined ? "" : JSON.stringify(detail);
}

async function readBody(response) {
  const text = response.status === 204 ? "" : await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return { detail: text };
  }
}

/** `fetch`, given up after REQUEST_TIMEOUT_MS: it then throws an Error saying so. */
async function fetchInTime(path, options) {
  try {
    return await fetch(path, { ...options, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  } catch (err) {
    if (err.name !== "TimeoutError") throw err;
    throw new Error(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s`);
  }
}

/** One API call with `key`; resolves to {status, ok, data} unless the key is refused. Throws
 * when no answer comes (the network failed, or nothing came in time). */
export async function api(key, method, path, body, { keepalive = false } = {}) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetchInTime(path, {
    method, headers, keepalive, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await readBody(response);
  if (response.status === 401 || response.status === 403) {
    throw new AuthError(response.status, detailOf(data));
  }
  return { status: response.status, ok: response.ok, data };
}

/* ---------- Credentials kept in this browser ---------- */

/* Kept twice: for this tab (sessionStorage), which a reload of it resumes, and for the
 * browser (localStorage), which a new tab starts from. A Switch in another tab changes the
 * browser's, never this tab's: reloaded, a tab stays its reviewer's, with their undo list
 * and a label of theirs still with no answer. */

function readCredentials(storage) {
  try {
    const saved = JSON.parse(storage.getItem(STORAGE_KEY) || "null");
    return saved && saved.reviewer && saved.key ? saved : null;
  } catch (err) {
    console.warn("ignoring unreadable saved credentials:", err);
    return null;
  }
}

/** The saved {reviewer, key}: this tab's, else the browser's; null when there is none (or it
 * cannot be read). */
export function loadCredentials() {
  return readCredentials(sessionStorage) || readCredentials(localStorage);
}

/** Keep {reviewer, key} for this tab and, unless `tabOnly`, for the next tabs opened. */
export function saveCredentials(reviewer, key, { tabOnly = false } = {}) {
  const saved = JSON.stringify({ reviewer, key });
  if (!tabOnly) localStorage.setItem(STORAGE_KEY, saved);
  sessionStorage.setItem(STORAGE_KEY, saved);
}

export function forgetCredentials() {
  localStorage.removeItem(STORAGE_KEY);
  sessionStorage.removeItem(STORAGE_KEY);
}

/* ---------- The undo list, kept in this tab ---------- */

/** `reviewer`'s undo list, the ids labelled in this tab and the label sent with no answer
 * yet (`pending`), as saved before a reload; empty for anyone else (the tab changed hands
 * with Switch). */
export function loadHistory(reviewer) {
  const empty = { labelled: [], sessionDone: new Set(), pending: null };
  try {
    const saved = JSON.parse(sessionStorage.getItem(HISTORY_KEY) || "null");
    if (!saved || saved.reviewer !== reviewer || !Array.isArray(saved.labelled)) return empty;
    const pending = saved.pending && saved.pending.taskId ? saved.pending : null;
    return { labelled: saved.labelled, sessionDone: new Set(saved.done || []), pending };
  } catch (err) {
    console.warn("ignoring an unreadable undo list:", err);
    return empty;
  }
}

export function saveHistory(reviewer, labelled, done, pending = null) {
  if (!reviewer) return;
  const saved = { reviewer, labelled: labelled.slice(-HISTORY_MAX), done, pending };
  try {
    sessionStorage.setItem(HISTORY_KEY, JSON.stringify(saved));
  } catch (err) {
    console.warn("the undo list is not kept over a reload:", err); // storage full or off
  }
}

export function forgetHistory() {
  sessionStorage.removeItem(HISTORY_KEY);
}
