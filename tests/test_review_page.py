"""The reviewer page, end to end: a real headless Chromium driving the real app (uvicorn in a
thread, SQLite, Redis, a trained production model) through the page's keyboard shortcuts."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.api.routes import review_page
from service.config import Settings
from service.crud import labels as labels_crud
from service.entities import (
    Feedback,
    FeedbackStatus,
    ReviewReason,
    ReviewStage,
    ReviewStatus,
    ReviewTask,
)
from service.ml.training import TrainResult
from service.tags import TagSet
from tests.conftest import KEYS, PERSONAL_KEYS, LiveApp, serve_live
from tests.review_page_driver import (
    ITEMS,
    REPORT_COMMENT,
    SCREENSHOT,
    WAIT_S,
    Item,
    active_labels,
    browser_errors,
    make_task,
    press,
    script_modules,
    seed_queue,
    sign_in,
    task_statuses,
    text_of,
    wait_for_title,
    wait_until,
)

# ---------- page helpers ----------


# ---------- tests ----------


@pytest.mark.browser
def test_label_skip_undo_then_empty_queue(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    first, second, third = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])

    # Highest priority first, with why it is here and what the model thinks.
    wait_for_title(browser, ITEMS[0].title)
    assert "Reported by a user" in text_of(browser, "badges")
    assert text_of(browser, "reports") == (
        f"A user says it is natural-language-processing (“{REPORT_COMMENT}”)."
    )
    assert "computer-vision" in text_of(browser, "duplicate")
    assert text_of(browser, "suggestion-tag").startswith("computer-vision")
    buttons = browser.find_elements(By.CSS_SELECTOR, "#tag-buttons .tag")
    assert [b.get_attribute("data-tag") for b in buttons] == tags.names
    assert [b.get_attribute("title") for b in buttons] == [t.description for t in tags.tags]
    suggested = browser.find_elements(By.CSS_SELECTOR, "#tag-buttons .tag.suggested")
    assert [b.get_attribute("data-tag") for b in suggested] == ["computer-vision"]
    wait_until(browser, lambda d: text_of(d, "stat-open") != "–", "queue stats")
    browser.save_screenshot(str(SCREENSHOT))

    # 1 labels with the first tag, then the next item is claimed.
    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    labels = active_labels(live_app.engine, first)
    assert [(label.tag, label.reviewer) for label in labels] == [(tags.names[0], "ada")]
    assert text_of(browser, "stat-session") == "1"

    press(browser, "s")
    wait_for_title(browser, ITEMS[2].title)

    # u reopens the last labelled item; the next label supersedes the first one.
    press(browser, "u")
    wait_for_title(browser, ITEMS[0].title)
    assert text_of(browser, "stat-session") == "0"
    press(browser, "2")
    wait_until(browser, lambda d: text_of(d, "item-title") != ITEMS[0].title, "next after relabel")
    assert [label.tag for label in active_labels(live_app.engine, first)] == [tags.names[1]]

    # Label whatever is left until the queue is empty.
    for _ in range(2):
        title = text_of(browser, "item-title")
        press(browser, "4")
        wait_until(
            browser,
            lambda d, shown=title: (
                d.find_element(By.ID, "empty").is_displayed() or text_of(d, "item-title") != shown
            ),
            "the next item or the empty queue",
        )
    wait_until(browser, lambda d: d.find_element(By.ID, "empty").is_displayed(), "empty queue")
    assert "Nothing to review" in text_of(browser, "empty")
    # Not "the queue is empty": the counters above may show items open (labelled by ada at
    # an earlier stage, waiting for someone else) or leased to others.
    assert "No item is waiting for you" in text_of(browser, "empty")
    assert text_of(browser, "stat-session") == "3"

    # Undo works from the empty page too: the last item comes back, and goes again.
    press(browser, "u")
    wait_for_title(browser, title)
    press(browser, "4")
    wait_until(browser, lambda d: d.find_element(By.ID, "empty").is_displayed(), "empty again")
    for task_id in (second, third):
        assert [label.tag for label in active_labels(live_app.engine, task_id)] == ["other"]
    assert task_statuses(live_app.engine) == {}  # no task is open or leased any more
    assert browser_errors(browser) == []


@pytest.mark.browser
def test_lost_lease_claims_the_next_item(live_app: LiveApp, browser: WebDriver) -> None:
    first, second, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    with Session(live_app.engine) as session:  # another reviewer holds the lease now
        task = session.get(ReviewTask, first)
        assert task is not None and task.leased_by == "ada"
        task.leased_by = "bob"
        session.add(task)
        session.commit()

    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    assert f"was not labelled: task {first} is leased to 'bob'." in text_of(browser, "message")
    assert active_labels(live_app.engine, first) == []
    assert task_statuses(live_app.engine)[second] is ReviewStatus.LEASED


@pytest.mark.browser
def test_leaving_the_page_releases_the_lease(live_app: LiveApp, browser: WebDriver) -> None:
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    assert task_statuses(live_app.engine)[first] is ReviewStatus.LEASED

    browser.get("about:blank")
    deadline = time.monotonic() + WAIT_S
    while task_statuses(live_app.engine)[first] is not ReviewStatus.OPEN:
        assert time.monotonic() < deadline, "the lease was not released on page exit"
        time.sleep(0.1)


@pytest.mark.browser
def test_client_key_is_told_it_is_not_allowed(live_app: LiveApp, browser: WebDriver) -> None:
    seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="mallory", key=KEYS["client"])
    wait_until(browser, lambda d: "not allowed" in text_of(d, "message"), "a 'not allowed' message")
    assert browser.find_element(By.ID, "message").is_displayed()
    assert browser.find_element(By.ID, "signin").is_displayed()
    assert not browser.find_element(By.ID, "workspace").is_displayed()
    assert set(task_statuses(live_app.engine).values()) == {ReviewStatus.OPEN}


@pytest.mark.browser
def test_unknown_key_is_refused(live_app: LiveApp, browser: WebDriver) -> None:
    sign_in(browser, live_app.url, reviewer="ada", key="not-a-key")
    wait_until(browser, lambda d: "not accepted" in text_of(d, "message"), "a bad-key message")
    assert browser.find_element(By.ID, "signin").is_displayed()
    assert browser.execute_script("return localStorage.length") == 0


def saved_credentials(driver: WebDriver) -> dict[str, str] | None:
    """What the page keeps in localStorage for the next visit (None: nothing)."""
    return driver.execute_script(
        "return JSON.parse(localStorage.getItem('tagflow.review.credentials'))"
    )


@pytest.mark.browser
def test_the_shared_key_cannot_sign_in_as_a_personal_key_holder(
    live_app: LiveApp, browser: WebDriver
) -> None:
    seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="pia", key=KEYS["reviewer"])
    wait_until(browser, lambda d: "personal key" in text_of(d, "message"), "a whose-key message")
    assert text_of(browser, "message") == (
        "'pia' has a personal key: only that key acts as 'pia'. Sign in with that key, or "
        "under your own name."
    )
    assert browser.find_element(By.ID, "signin").is_displayed()
    assert set(task_statuses(live_app.engine).values()) == {ReviewStatus.OPEN}


@pytest.mark.browser
def test_a_personal_key_signs_in_without_a_name(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    first, second, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="", key=PERSONAL_KEYS["pia"])
    wait_for_title(browser, ITEMS[0].title)
    assert text_of(browser, "who-name") == "pia"
    assert saved_credentials(browser) == {"reviewer": "pia", "key": PERSONAL_KEYS["pia"]}

    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    labels = active_labels(live_app.engine, first)
    assert [(label.tag, label.reviewer) for label in labels] == [(tags.names[0], "pia")]
    with Session(live_app.engine) as session:
        task = session.get(ReviewTask, second)
        assert task is not None and task.leased_by == "pia"
    assert browser_errors(browser) == []


@pytest.mark.browser
def test_a_personal_key_cannot_sign_in_as_someone_else(
    live_app: LiveApp, browser: WebDriver
) -> None:
    seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="quin", key=PERSONAL_KEYS["pia"])
    wait_until(browser, lambda d: "personal key" in text_of(d, "message"), "a not-yours message")
    assert text_of(browser, "message") == (
        "This key is pia's personal key; leave the name empty or type pia."
    )
    assert browser.find_element(By.ID, "signin").is_displayed()
    assert not browser.find_element(By.ID, "who").is_displayed()
    assert saved_credentials(browser) is None
    assert set(task_statuses(live_app.engine).values()) == {ReviewStatus.OPEN}

    # Clearing the name is enough: the key still in the form signs Pia in.
    browser.find_element(By.ID, "reviewer-name").clear()
    browser.find_element(By.ID, "signin-submit").click()
    wait_for_title(browser, ITEMS[0].title)
    assert text_of(browser, "who-name") == "pia"
    assert set(task_statuses(live_app.engine).values()) == {ReviewStatus.OPEN, ReviewStatus.LEASED}


@pytest.mark.browser
def test_a_saved_sign_in_is_checked_again_on_the_next_visit(
    live_app: LiveApp, browser: WebDriver
) -> None:
    """What the last visit saved still goes with the key: the page resumes. Saved under a
    name the key no longer carries (re-issued as someone's personal key): back to sign-in,
    saying whose key it is, and nothing is claimed under the old name."""
    seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="", key=PERSONAL_KEYS["pia"])
    wait_for_title(browser, ITEMS[0].title)
    browser.refresh()  # the next visit: the lease is released on leaving, and claimed again
    wait_for_title(browser, ITEMS[0].title)
    assert text_of(browser, "who-name") == "pia"

    browser.execute_script(  # kept for the browser and for this tab
        "for (const storage of [localStorage, sessionStorage]) "
        "storage.setItem('tagflow.review.credentials', JSON.stringify(arguments[0]))",
        {"reviewer": "quin", "key": PERSONAL_KEYS["pia"]},
    )
    browser.refresh()
    wait_until(browser, lambda d: "personal key" in text_of(d, "message"), "a not-yours message")
    assert text_of(browser, "message") == (
        "This key is pia's personal key; leave the name empty or type pia."
    )
    assert browser.find_element(By.ID, "signin").is_displayed()
    assert saved_credentials(browser) is None
    with Session(live_app.engine) as session:
        leased_by = {t.leased_by for t in session.exec(select(ReviewTask)).all()}
        assert "quin" not in leased_by
    assert browser_errors(browser) == []


@pytest.mark.browser
def test_a_key_revoked_while_signed_in_goes_back_to_sign_in(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    shared_result: TrainResult,
    browser: WebDriver,
) -> None:
    """Cat's key is revoked in the key file while she works: her next label is refused, the
    page forgets the key and asks for a new one, and the key it is rotated to works."""
    keys = tmp_path / "keys"
    keys.write_text("reviewer/cat:cat-old\n")
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'review.db'}", api_keys_file=keys)
    with serve_live(settings, shared_result) as app:
        first, _, _ = seed_queue(app.engine)
        sign_in(browser, app.url, reviewer="", key="cat-old")
        wait_for_title(browser, ITEMS[0].title)
        assert text_of(browser, "who-name") == "cat"

        keys.write_text("reviewer/cat:cat-new\n")
        time.sleep(1.2)  # the API reads the key file again at most once a second
        press(browser, "1")
        wait_until(browser, lambda d: d.find_element(By.ID, "signin").is_displayed(), "sign-in")
        assert text_of(browser, "message") == (
            "The API key was not accepted (unknown API key). Check it and sign in again."
        )
        assert saved_credentials(browser) is None
        assert active_labels(app.engine, first) == []

        sign_in(browser, app.url, reviewer="", key="cat-new")
        wait_for_title(browser, ITEMS[0].title)  # her lease is still hers, under her name
        press(browser, "1")
        wait_for_title(browser, ITEMS[1].title)
        assert [label.reviewer for label in active_labels(app.engine, first)] == ["cat"]
        # The one refused request is all the browser reports (it logs every 401 it sees).
        [refused] = browser_errors(browser)
        assert f"/review/{first}/label" in refused and "401" in refused


@pytest.mark.browser
def test_a_shared_key_asks_for_a_name(live_app: LiveApp, browser: WebDriver) -> None:
    seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="", key=KEYS["reviewer"])
    wait_until(browser, lambda d: "shared" in text_of(d, "message"), "a type-your-name message")
    assert text_of(browser, "message") == "This key is shared by all reviewers: type your name."
    assert browser.find_element(By.ID, "signin").is_displayed()
    assert saved_credentials(browser) is None
    assert set(task_statuses(live_app.engine).values()) == {ReviewStatus.OPEN}


def add_report(engine: Engine, task_id: int, correct_tag: str, comment: str) -> None:
    """One more user report for the task `task_id` reviews."""
    with Session(engine) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None
        session.add(
            Feedback(
                prediction_id=f"{task_id:032x}{len(comment):x}"[-32:],
                correct_tag=correct_tag,
                comment=comment,
                text_hash=task.text_hash,
                status=FeedbackStatus.IN_REVIEW,
                task_id=task_id,
            )
        )
        session.commit()


def page_overflow(driver: WebDriver) -> int:
    """How far the page is wider than the window (0: nothing to scroll sideways for)."""
    return driver.execute_script(
        "const root = document.documentElement; return root.scrollWidth - root.clientWidth"
    )


@pytest.mark.browser
def test_long_words_stay_inside_a_phone_wide_page(live_app: LiveApp, browser: WebDriver) -> None:
    """A user's comment of one 400-character word, a 200-character title and a reviewer's
    name as long as the API takes wrap or are cut short: before, each made the page wider
    than a phone's screen, and the name pushed Switch (sign out) out of sight."""
    with Session(live_app.engine, expire_on_commit=False) as session:
        long_title = Item("Tokenizer" * 22, "", 2.0, ReviewReason.USER_REPORT, ITEMS[0].scores)
        task = make_task(long_title)
        session.add(task)
        session.commit()
    add_report(live_app.engine, task.id, "mlops", "x" * 400)  # type: ignore[arg-type]
    browser.set_window_size(420, 860)
    name = "Maximilian" * 20
    sign_in(browser, live_app.url, reviewer=name, key=KEYS["reviewer"])
    wait_for_title(browser, long_title.title)
    assert text_of(browser, "reports").startswith("A user says it is mlops (“xxx")
    assert page_overflow(browser) == 0
    press(browser, "s")  # the message line quotes the title
    wait_until(browser, lambda d: text_of(d, "message").startswith("Skipped"), "skipped")
    assert page_overflow(browser) == 0

    switch = browser.find_element(By.ID, "sign-out")
    width = browser.execute_script("return document.documentElement.clientWidth")
    assert switch.is_displayed() and switch.rect["x"] + switch.rect["width"] <= width
    assert browser.find_element(By.ID, "who-name").get_attribute("title") == name
    assert browser_errors(browser) == []


# Where an element is, against the window: [top, bottom, the window's height].
VIEWPORT_SPAN = """
const r = document.getElementById(arguments[0]).getBoundingClientRect();
return [r.top, r.bottom, window.innerHeight];
"""


@pytest.mark.browser
def test_on_a_phone_the_next_item_comes_into_sight_after_a_tap(
    live_app: LiveApp, browser: WebDriver
) -> None:
    """On a phone the tag buttons are below the item: the reviewer scrolls down and taps one.
    Before, the next item came in above the screen (its title 470 px above the window's top,
    the "Labelled" line too) while the same tag buttons stayed under the thumb, so the next
    tap labelled an item the reviewer had not seen; and Skip and Undo were squeezed into
    columns of one word a line."""
    seed_queue(live_app.engine)
    browser.set_window_size(390, 844)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    undo = browser.find_element(By.ID, "undo")
    skip = browser.find_element(By.ID, "skip")
    line = float(computed(browser, "#undo", "line-height").removesuffix("px"))
    assert undo.rect["height"] < 2 * line and skip.rect["height"] < 2 * line

    last = browser.find_elements(By.CSS_SELECTOR, "#tag-buttons button")[-1]
    browser.execute_script("arguments[0].scrollIntoView({block: 'end'})", last)
    assert browser.execute_script(VIEWPORT_SPAN, "item-title")[1] < 0  # scrolled past it
    last.click()
    wait_for_title(browser, ITEMS[1].title)
    top, bottom, height = browser.execute_script(VIEWPORT_SPAN, "item-title")
    assert top >= 0 and bottom <= height, (top, bottom, height)
    top, _, _ = browser.execute_script(VIEWPORT_SPAN, "message")
    assert top >= 0 and text_of(browser, "message").startswith("Labelled")
    assert browser_errors(browser) == []


# The left edges of the characters of `needle`, where it is drawn in the element `id`.
CHARACTER_LEFTS = """
const [id, needle] = arguments;
const walker = document.createTreeWalker(document.getElementById(id), NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const at = node.data.indexOf(needle);
  if (at < 0) continue;
  return [...needle].map((_, i) => {
    const range = document.createRange();
    range.setStart(node, at + i);
    range.setEnd(node, at + i + 1);
    return range.getBoundingClientRect().left;
  });
}
return null;
"""


def reads_left_to_right(driver: WebDriver, element_id: str, needle: str) -> bool:
    lefts = driver.execute_script(CHARACTER_LEFTS, element_id, needle)
    assert lefts, f"{needle!r} is not in #{element_id}"
    return lefts == sorted(lefts)


@pytest.mark.browser
def test_a_right_to_left_override_stays_inside_its_own_text(
    live_app: LiveApp, browser: WebDriver
) -> None:
    """A comment or a title holding U+202E (right-to-left override) is drawn reversed, as
    its sender asked, but what follows it on the line is not: before, a report's comment
    turned the next report's tag around ("rehto"), and a title the message line after it."""
    first, _, _ = seed_queue(live_app.engine)
    with Session(live_app.engine) as session:
        task = session.get(ReviewTask, first)
        assert task is not None
        task.title = "Receipts \u202eOCR"
        session.add(task)
        session.commit()
    add_report(live_app.engine, first, "mlops", "see \u202ethis comment")
    add_report(live_app.engine, first, "other", "")
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, "Receipts \u202eOCR")
    assert reads_left_to_right(browser, "reports", "other")
    assert reads_left_to_right(browser, "reports", "Users say it is")

    press(browser, "3")
    wait_for_title(browser, ITEMS[1].title)
    assert "Press U to undo it." in text_of(browser, "message")
    assert reads_left_to_right(browser, "message", "Press U to undo it")
    assert browser_errors(browser) == []


def luminance(css_color: str) -> float:
    """WCAG relative luminance of a computed colour, `rgb(r, g, b)`."""
    channels = [int(v) / 255 for v in re.findall(r"\d+", css_color)[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: str, other: str) -> float:
    high, low = sorted((luminance(one), luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


COMPUTED = (
    "return getComputedStyle(document.querySelector(arguments[0]), arguments[1])[arguments[2]]"
)


def computed(driver: WebDriver, selector: str, prop: str, pseudo: str | None = None) -> str:
    return driver.execute_script(COMPUTED, selector, pseudo, prop)


@pytest.mark.browser
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_on_the_accent_and_the_focus_ring_can_be_seen(
    live_app: LiveApp, browser: WebDriver, scheme: str
) -> None:
    """WCAG AA in either colour scheme: text on the accent colour (Start reviewing, the
    "suggested" tag) at 4.5:1, the focus ring at 3:1 against the panel. Before, white on the
    dark scheme's light blue was 2.4:1, and the amber ring on white 2:1."""
    seed_queue(live_app.engine)
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
    )
    browser.get(f"{live_app.url}/review")
    wait_until(browser, lambda d: d.find_element(By.ID, "signin").is_displayed(), "sign-in form")
    button = "#signin-submit"
    assert (
        contrast(computed(browser, button, "color"), computed(browser, button, "backgroundColor"))
        >= 4.5
    )
    # The sign-in form puts the focus in the name field: its ring, on the panel around it.
    assert browser.execute_script("return document.activeElement.id") == "reviewer-name"
    ring = computed(browser, "#reviewer-name", "outlineColor")
    assert computed(browser, "#reviewer-name", "outlineStyle") == "solid"
    assert contrast(ring, computed(browser, "#signin", "backgroundColor")) >= 3

    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    chip = ".tag.suggested"
    text, background = (computed(browser, chip, p, "::after") for p in ("color", "backgroundColor"))
    assert contrast(text, background) >= 4.5
    press(browser, "\t")  # from the item to Skip, by keyboard: the ring shows
    assert browser.execute_script("return document.activeElement.id") == "skip"
    assert (
        contrast(
            computed(browser, "#skip", "outlineColor"),
            computed(browser, ".decide", "backgroundColor"),
        )
        >= 3
    )


def test_page_and_assets_are_served(sqlite_client: TestClient) -> None:
    page = sqlite_client.get("/review")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/review/assets/review.js">' in page.text
    assert "/review/assets/review.css" in page.text
    modules = script_modules(sqlite_client)
    assert set(modules) == {"review.js", "api.js", "render.js", "tabs.js"}
    assert "/review/claim" in modules["review.js"]
    style = sqlite_client.get("/review/assets/review.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    for name in ("review.html", "..%2Fconfig.py", "nope.js"):
        assert sqlite_client.get(f"/review/assets/{name}").status_code == 404


@pytest.mark.parametrize("name", ["review%00.js", "x" * 300 + ".js"], ids=["NUL", "too long"])
def test_an_asset_name_no_file_can_have_is_a_404(sqlite_client: TestClient, name: str) -> None:
    """The page's assets need no key: a NUL in the name (ValueError) or a name over the file
    system's 255 bytes (OSError) was a 500, and a traceback in the log, for anyone who asked."""
    missing = sqlite_client.get(f"/review/assets/{name}")
    assert missing.status_code == 404
    assert missing.json()["detail"].startswith("no asset named")


def test_the_page_answers_head_as_it_answers_get(sqlite_client: TestClient) -> None:
    """An uptime check that asks the page with HEAD got a 405."""
    page = sqlite_client.get("/review")
    head = sqlite_client.head("/review")
    assert head.status_code == 200 and head.content == b""
    for name in ("content-type", "content-length", "content-security-policy", "cache-control"):
        assert head.headers[name] == page.headers[name], name


@pytest.mark.parametrize(
    "path",
    [
        "/review/assets/review.js",
        "/review/assets/review.css",
        "/docs",
        "/docs/assets/swagger-ui.css",
    ],
)
def test_the_open_pages_and_assets_answer_head_as_get(sqlite_client: TestClient, path: str) -> None:
    """HEAD /review answered 200 (34a30ca) while its assets and /docs answered 405, so an
    uptime or link check that asks with HEAD saw them missing."""
    got = sqlite_client.get(path)
    head = sqlite_client.head(path)
    assert got.status_code == 200 and head.status_code == 200
    for name in ("content-type", "content-length"):
        assert head.headers[name] == got.headers[name], name


def test_assets_outside_the_static_folder_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    for path in (static / "page.js", static / "notes.txt", tmp_path / "outside.js"):
        path.write_text("// x")
    (static / "link.js").symlink_to(tmp_path / "outside.js")
    monkeypatch.setattr(review_page, "STATIC_DIR", static)
    assert review_page.asset_path("page.js") == (static / "page.js").resolve()
    for name in ("../outside.js", "link.js", "notes.txt", "missing.js", "."):
        assert review_page.asset_path(name) is None, name


def seed_overlap(engine: Engine) -> tuple[int, int]:
    """A task waiting for a decision between Ann and Bob, and one waiting for a second
    opinion after Ann; returns their ids."""
    with Session(engine, expire_on_commit=False) as session:
        decide = make_task(ITEMS[0], stage=ReviewStage.ADJUDICATE, first_reviewer="ann")
        blind = make_task(ITEMS[1], stage=ReviewStage.SECOND, first_reviewer="ann")
        session.add_all([decide, blind])
        session.commit()
        labels = [
            labels_crud.append_label(
                session,
                text_hash=t.text_hash,
                title=t.title,
                description=t.description,
                tag=tag,
                reviewer=who,
                holdout_share=0.0,
                task_id=t.id,
            )
            for t, tag, who in (
                (decide, "natural-language-processing", "ann"),
                (decide, "computer-vision", "bob"),
                (blind, "mlops", "ann"),
            )
        ]
        session.commit()
        decide.first_label_id, decide.second_label_id = labels[0].id, labels[1].id
        decide.second_reviewer = "bob"
        blind.first_label_id = labels[2].id
        session.add_all([decide, blind])
        session.commit()
        return decide.id, blind.id  # type: ignore[return-value]


@pytest.mark.browser
def test_a_decision_shows_both_labels_and_a_second_opinion_none(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    decide, blind = seed_overlap(live_app.engine)
    sign_in(browser, live_app.url, reviewer="cat", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    assert "Decide: two reviewers disagree" in text_of(browser, "badges")
    assert text_of(browser, "earlier") == (
        "ann chose natural-language-processing; bob chose computer-vision. Your label decides."
    )
    browser.save_screenshot(str(SCREENSHOT.with_name("review_page_decide.png")))
    press(browser, str(tags.names.index("computer-vision") + 1))
    wait_for_title(browser, ITEMS[1].title)
    assert "Second opinion" in text_of(browser, "badges")
    assert not browser.find_element(By.ID, "earlier").is_displayed()
    assert "mlops" not in text_of(browser, "item")  # Ann's label stays hidden
    assert [label.tag for label in active_labels(live_app.engine, decide)] == ["computer-vision"]
    assert task_statuses(live_app.engine) == {blind: ReviewStatus.LEASED}
    assert browser_errors(browser) == []


@pytest.mark.browser
def test_an_audit_item_is_shown_without_the_models_suggestion(
    live_app: LiveApp, browser: WebDriver
) -> None:
    """An audit item is labelled blind: the page shows no model panel (no tag, no scores) and
    no tag button marked "suggested", and the item takes the panel's width. Before, the model's
    tag and scores were shown as for any item, and the reviewer leaned towards them. The next
    item, not an audit one, shows its suggestion again."""
    first, _, _ = seed_queue(live_app.engine)
    with Session(live_app.engine) as session:
        task = session.get(ReviewTask, first)
        assert task is not None
        task.reason = ReviewReason.AUDIT
        session.add(task)
        session.commit()
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    assert "Audit sample" in text_of(browser, "badges")
    assert not browser.find_element(By.ID, "suggestion").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "#tag-buttons .tag.suggested") == []
    assert "%" not in text_of(browser, "workspace")  # no score anywhere
    item = browser.find_element(By.ID, "item").rect
    decide = browser.find_element(By.CSS_SELECTOR, ".decide").rect
    assert abs(item["width"] - decide["width"]) < 2  # no empty column where the panel was

    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    assert browser.find_element(By.ID, "suggestion").is_displayed()
    assert text_of(browser, "suggestion-tag").startswith("mlops")
    suggested = browser.find_elements(By.CSS_SELECTOR, "#tag-buttons .tag.suggested")
    assert [b.get_attribute("data-tag") for b in suggested] == ["mlops"]
    assert browser.find_element(By.ID, "item").rect["width"] < decide["width"] - 100
    assert browser_errors(browser) == []
