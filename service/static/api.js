/* tagflow review page, talking to the server: one fetch wrapper that sends the reviewer's key as
 * a Bearer token and turns 401/403 into an AuthError, the reading of FastAPI's error `detail`,
 * and the reviewer's name + key kept in localStorage. No DOM, no page state. */

const STORAGE_KEY = "tagflow.review.credentials";

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

/** One API call with `key`; resolves to {status, ok, data} unless the key is refused. */
export async function api(key, method, path, body, { keepalive = false } = {}) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, keepalive, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await readBody(response);
  if (response.status === 401 || response.status === 403) {
    throw new AuthError(response.status, detailOf(data));
  }
  return { status: response.status, ok: response.ok, data };
}

/* ---------- Credentials kept in this browser ---------- */

/** The saved {reviewer, key}, or null when there is none (or it cannot be read). */
export function loadCredentials() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    return saved && saved.reviewer && saved.key ? saved : null;
  } catch (err) {
    console.warn("ignoring unreadable saved credentials:", err);
    return null;
  }
}

export function saveCredentials(reviewer, key) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify({ reviewer, key }));
}

export function forgetCredentials() {
  localStorage.removeItem(STORAGE_KEY);
}
