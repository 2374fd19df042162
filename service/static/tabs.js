/* tagflow review page, the items this browser's tabs show. Each tab holds a Web Lock named
 * after itself, its reviewer and the item on its screen for as long as it shows it, and the
 * browser drops the lock when the tab closes or crashes; Switch reads the locks to leave
 * leased the items the reviewer's other tabs still show. No DOM, no page state. */

const PREFIX = "tagflow.review.shown ";
// This tab, in its locks' names: its own lock must not count as another tab's.
const TAB = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;

let current = null; // {name, done}: the lock this tab holds (or asked for), done() lets it go
// What shownElsewhere found last, for a tab closing: no promise settles once it is gone.
let lastFound = { reviewer: "", ids: [] };

/** This tab shows `taskId` to `reviewer` now (null: nothing). */
export function showing(reviewer, taskId) {
  const name = reviewer && taskId ? `${PREFIX}${TAB} ${JSON.stringify([reviewer, taskId])}` : "";
  if ((current ? current.name : "") === name) return;
  if (current) current.done();
  current = null;
  if (!name || !navigator.locks) return;
  let done;
  const gone = new Promise((resolve) => {
    done = resolve;
  });
  current = { name, done };
  navigator.locks.request(name, { mode: "shared" }, () => gone)
    .catch((err) => console.warn("cannot tell other tabs what this one shows:", err));
}

/** The ids of the items `reviewer`'s other tabs in this browser show; null when the browser
 * cannot tell (no Web Locks: a page served over plain HTTP from another host than
 * localhost), or when asking failed. */
export async function shownElsewhere(reviewer) {
  if (!navigator.locks) return null;
  let held;
  try {
    ({ held } = await navigator.locks.query());
  } catch (err) {
    console.warn("cannot ask which items other tabs show:", err);
    return null;
  }
  const ids = new Set();
  for (const { name } of held) {
    if (!name || !name.startsWith(PREFIX)) continue;
    const [tab, ...rest] = name.slice(PREFIX.length).split(" ");
    if (tab === TAB) continue;
    try {
      const [who, taskId] = JSON.parse(rest.join(" "));
      if (who === reviewer && Number.isInteger(taskId)) ids.add(taskId);
    } catch (err) {
      console.warn("ignoring an unreadable lock name:", name, err);
    }
  }
  lastFound = { reviewer, ids: [...ids] };
  return lastFound.ids;
}

/** What shownElsewhere(`reviewer`) found last (at most a second ago while this tab shows an
 * item; throttled timers in a hidden tab can make it older): read as the tab closes. */
export function lastShownElsewhere(reviewer) {
  return lastFound.reviewer === reviewer ? lastFound.ids : [];
}
