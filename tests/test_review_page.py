"""The reviewer page, end to end: a real headless Chromium driving the real app (uvicorn in a
thread, SQLite, Redis, a trained production model) through the page's keyboard shortcuts."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.api.deps import get_tags
from service.api.main import create_app
from service.api.routes import review_page
from service.config import Settings
from service.crud import labels as labels_crud
from service.crud.review_intake import SKIP_STEP
from service.db import init_db, make_engine
from service.entities import (
    Feedback,
    FeedbackStatus,
    Label,
    ReviewReason,
    ReviewStage,
    ReviewStatus,
    ReviewTask,
)
from service.ml.dataset import text_hash
from service.ml.training import TrainResult
from service.tags import TagSet
from tests.conftest import KEYS, PERSONAL_KEYS, auth, live_server, register_promoted
from tests.lossy_proxy import LossyProxy, lossy_proxy

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = Path("/tmp/review_page.png")
WAIT_S = 15
REQUEST_TIMEOUT_S = 20  # api.js: how long the page waits for an answer


@dataclass(frozen=True)
class Item:
    """A review task the test puts in the queue."""

    title: str
    description: str
    priority: float
    reason: ReviewReason
    scores: dict[str, float]


ITEMS = [
    Item(
        "Transformer OCR for scanned receipts",
        "Reads line items from photographed receipts with a vision encoder and a text "
        "decoder, then exports them as structured JSON.",
        1.45,
        ReviewReason.USER_REPORT,
        {
            "computer-vision": 0.46,
            "natural-language-processing": 0.41,
            "mlops": 0.05,
            "other": 0.08,
        },
    ),
    Item(
        "Feature store for real-time fraud scoring",
        "Serves fresh features to fraud models with millisecond latency and keeps training "
        "and serving consistent.",
        0.91,
        ReviewReason.LOW_CONFIDENCE,
        {
            "computer-vision": 0.02,
            "natural-language-processing": 0.03,
            "mlops": 0.52,
            "other": 0.43,
        },
    ),
    Item(
        "Graph neural networks for molecule properties",
        "Message passing networks that predict solubility and toxicity from molecular graphs.",
        0.62,
        ReviewReason.LOW_CONFIDENCE,
        {
            "computer-vision": 0.04,
            "natural-language-processing": 0.06,
            "mlops": 0.05,
            "other": 0.85,
        },
    ),
]


REPORT_COMMENT = "it reads text <img src=x onerror=alert(1)>"


@dataclass
class LiveApp:
    url: str
    engine: Engine


def _task(item: Item, **fields: object) -> ReviewTask:
    digest = text_hash(item.title, item.description)
    top = max(item.scores, key=item.scores.__getitem__)
    values: dict[str, object] = {
        "text_hash": digest,
        "open_key": digest,
        "title": item.title,
        "description": item.description,
        "reason": item.reason,
        "priority": item.priority,
        "suggestion_tag": top,
        "suggestion_scores": item.scores,
        "uncertainty": 0.5,
        "reports": int(item.reason is ReviewReason.USER_REPORT),
    }
    values.update(fields)
    return ReviewTask(**values)


def seed_queue(engine: Engine) -> list[int]:
    """The three open tasks (plus a labelled look-alike of the first); returns their ids."""
    with Session(engine, expire_on_commit=False) as session:
        twin = Item(
            "Receipt OCR with transformers",
            "Scanned receipts to JSON.",
            0.0,
            ReviewReason.LOW_CONFIDENCE,
            ITEMS[0].scores,
        )
        done = _task(twin, open_key=None, status=ReviewStatus.LABELED)
        session.add(done)
        session.commit()
        tasks = [_task(ITEMS[0], duplicate_of=done.id, duplicate_tag="computer-vision")]
        tasks += [_task(item) for item in ITEMS[1:]]
        session.add_all(tasks)
        session.commit()
        session.add(  # the report the first task reviews, with markup a page must not run
            Feedback(
                prediction_id="f" * 32,
                correct_tag="natural-language-processing",
                comment=REPORT_COMMENT,
                text_hash=tasks[0].text_hash,
                status=FeedbackStatus.IN_REVIEW,
                task_id=tasks[0].id,
            )
        )
        session.commit()
        return [task.id for task in tasks]  # type: ignore[misc]


@contextmanager
def serve_live(settings: Settings, result: TrainResult) -> Iterator[LiveApp]:
    """The real app served by uvicorn on a free local port, with `result` in production."""
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    register_promoted(engine, settings, result)
    with live_server(create_app(settings)) as url:
        yield LiveApp(url=url, engine=engine)
    engine.dispose()


@pytest.fixture
def live_app(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> Iterator[LiveApp]:
    with serve_live(
        make_settings(database_url=f"sqlite:///{tmp_path / 'review.db'}"), shared_result
    ) as app:
        yield app


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium from the Debian packages (CI installs them)."""
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "apt-get install chromium chromium-driver"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1280,860",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


# ---------- page helpers ----------


def text_of(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def wait_until(driver: WebDriver, condition: Callable[[WebDriver], object], what: str) -> None:
    WebDriverWait(driver, WAIT_S).until(condition, message=what)


def wait_for_title(driver: WebDriver, title: str) -> None:
    wait_until(
        driver,
        lambda d: (
            d.find_element(By.ID, "workspace").is_displayed() and text_of(d, "item-title") == title
        ),
        f"the page to show {title!r}; it shows {text_of(driver, 'item-title')!r}",
    )


def press(driver: WebDriver, key: str) -> None:
    ActionChains(driver).send_keys(key).perform()


def sign_in(driver: WebDriver, url: str, *, reviewer: str, key: str) -> None:
    driver.get(f"{url}/review")
    fill_sign_in(driver, reviewer=reviewer, key=key)


def fill_sign_in(driver: WebDriver, *, reviewer: str, key: str) -> None:
    """Sign in on the form the page shows (without loading the page again)."""
    wait_until(driver, lambda d: d.find_element(By.ID, "signin").is_displayed(), "sign-in form")
    if reviewer:  # left empty: the name comes with a personal key
        driver.find_element(By.ID, "reviewer-name").send_keys(reviewer)
    driver.find_element(By.ID, "api-key").send_keys(key)
    driver.find_element(By.ID, "signin-submit").click()


def active_labels(engine: Engine, task_id: int) -> list[Label]:
    with Session(engine) as session:
        rows = session.exec(select(Label).where(Label.task_id == task_id)).all()
        return [row for row in rows if row.superseded_by is None]


def task_statuses(engine: Engine) -> dict[int, ReviewStatus]:
    with Session(engine) as session:
        tasks = session.exec(select(ReviewTask).where(ReviewTask.open_key.is_not(None))).all()
        return {task.id: ReviewStatus(task.status) for task in tasks}  # type: ignore[misc]


def browser_errors(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def script_modules(client: TestClient) -> dict[str, str]:
    """review.js and every module it imports, directly or not, by name; each must come as
    JavaScript, or browsers refuse to run it."""
    sources: dict[str, str] = {}
    todo = ["review.js"]
    while todo:
        name = todo.pop()
        response = client.get(f"/review/assets/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith("text/javascript"), name
        sources[name] = response.text
        imports = re.findall(r'\bfrom "\./([\w-]+\.js)";', response.text)
        todo += [found for found in imports if found not in sources]
    return sources


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


def settled_then_undone(browser: WebDriver, live_app: LiveApp, tags: TagSet, first: int) -> None:
    """After a reload or a return from the back/forward cache: the page has sent the
    unanswered label of `first` (the first item) again, saved once and counted, and U takes
    it back, leasing the item to its reviewer again."""
    wait_until(browser, lambda d: "is labelled" in text_of(d, "message"), "the label settled")
    assert tags.names[0] in text_of(browser, "message")
    assert text_of(browser, "stat-session") == "1"
    assert [label.tag for label in all_labels(live_app.engine, first)] == [tags.names[0]]
    press(browser, "u")
    wait_for_title(browser, ITEMS[0].title)
    assert task_statuses(live_app.engine)[first] is ReviewStatus.LEASED


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
        task = _task(long_title)
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
        decide = _task(ITEMS[0], stage=ReviewStage.ADJUDICATE, first_reviewer="ann")
        blind = _task(ITEMS[1], stage=ReviewStage.SECOND, first_reviewer="ann")
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


# ---------- conflicts and failures ----------


def post_as_ada(app: LiveApp, path: str, body: dict[str, str]) -> httpx.Response:
    """A request from Ada's other tab: the same shared key, the same name."""
    return httpx.post(
        f"{app.url}{path}", json={"reviewer": "ada", **body}, headers=auth("reviewer"), timeout=30
    )


def requests_to(driver: WebDriver, path: str) -> int:
    """How many requests the page has made to `path` (fetches are resource timing entries)."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter((e) => new URL(e.name).pathname === arguments[0]).length",
        path,
    )


@pytest.mark.browser
def test_a_label_refused_says_why_in_the_servers_words(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    """Bob labels Ada's item (her lease ran out, say), then she presses a tag: the server's
    409 says the item is already labelled and by whom, and so does the page. Before, every
    409 read "Lease lost: this item went to someone else", which sent her looking for a
    colleague."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    with Session(live_app.engine) as session:
        task = session.get(ReviewTask, first)
        assert task is not None
        task.lease_expires_at = datetime(2000, 1, 1, tzinfo=UTC)
        session.add(task)
        session.commit()
    bob = {"tag": "mlops", "reviewer": "bob"}
    answer = httpx.post(f"{live_app.url}/review/{first}/label", json=bob, headers=auth("reviewer"))
    assert answer.status_code == 201

    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    message = text_of(browser, "message")
    assert "was not labelled" in message and "Lease lost" not in message
    assert f"task {first} is already labelled by 'bob'." in message
    assert [label.tag for label in active_labels(live_app.engine, first)] == ["mlops"]
    assert text_of(browser, "stat-session") == "0"
    [refusal] = browser_errors(browser)  # the browser logs each 409 it sees
    assert f"/review/{first}/label" in refusal and "409" in refusal


@pytest.mark.browser
def test_a_label_given_in_another_tab_is_shown_as_the_reviewers_own(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    """Ada labels an item in another tab, then presses another tag on this one: the 409
    carries her saved label, and the page says the item is labelled mlops by her, counts it
    and lets U change it. Before, it read "was not labelled: ... already labelled", as if
    someone else's label stood in her way, and U could not reach it."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    assert post_as_ada(live_app, f"/review/{first}/label", {"tag": "mlops"}).status_code == 201

    label_mlops_found_own_and_undone(browser)


@pytest.mark.browser
def test_a_label_given_under_another_spelling_is_shown_as_the_reviewers_own(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    """Ada first acted as "ADA" (another device); this page is signed in as "ada", the same
    person, so her actions are recorded under "ADA". Her label from the other device is
    still hers here: the page says so and U changes it, though the saved label's name is
    spelled as she first spelled it, not as she typed it on this page."""
    first, _, _ = seed_queue(live_app.engine)
    other_device = {"reviewer": "ADA"}
    assert post(live_app, "/review/claim", other_device).json()["task_id"] == first
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)  # her lease, resumed
    saved = post(live_app, f"/review/{first}/label", {**other_device, "tag": "mlops"})
    assert saved.status_code == 201 and saved.json()["reviewer"] == "ADA"

    label_mlops_found_own_and_undone(browser)


def label_mlops_found_own_and_undone(browser: WebDriver) -> None:
    """The first item, labelled mlops by this reviewer behind the page's back, is labelled
    again from the page: the page says it is already hers and counts it, and U changes it."""
    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    message = text_of(browser, "message")
    assert "is already labelled mlops, by you" in message and "not labelled" not in message
    assert text_of(browser, "stat-session") == "1"
    press(browser, "u")
    wait_for_title(browser, ITEMS[0].title)
    assert "(was mlops)" in text_of(browser, "message")


def post(app: LiveApp, path: str, body: dict[str, str]) -> httpx.Response:
    """A request with the shared reviewer key."""
    return httpx.post(f"{app.url}{path}", json=body, headers=auth("reviewer"), timeout=30)


@pytest.mark.browser
def test_a_tag_retired_while_the_page_is_open_reloads_the_buttons_and_keeps_the_item(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    shared_result: TrainResult,
    browser: WebDriver,
    tags: TagSet,
) -> None:
    """Ada's page loaded the tags before tagflow restarted without one (here the approved
    tags are a dependency override). Pressing the retired tag's key is refused (422); the
    page says so, loads the tags again and keeps the item, held, for one of them. Before, it
    kept the refused button and its shortcut, and every press of it failed again."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'review.db'}")
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    register_promoted(engine, settings, shared_result)
    app = create_app(settings)
    kept = TagSet(tags=tags.tags[:-1])
    try:
        with live_server(app) as url:
            first, _, _ = seed_queue(engine)
            sign_in(browser, url, reviewer="ada", key=KEYS["reviewer"])
            wait_for_title(browser, ITEMS[0].title)
            app.dependency_overrides[get_tags] = lambda: kept

            press(browser, str(len(tags)))  # the last tag's shortcut: retired since
            wait_until(
                browser,
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tag-buttons button")) == len(kept),
                "the buttons of the approved tags",
            )
            message = text_of(browser, "message")
            assert f"tag '{tags.names[-1]}' is not in the approved list" in message
            assert "The approved tags have changed" in message
            assert text_of(browser, "item-title") == ITEMS[0].title
            assert active_labels(engine, first) == []

            press(browser, "1")
            wait_for_title(browser, ITEMS[1].title)
            assert [label.tag for label in active_labels(engine, first)] == [kept.names[0]]
    finally:
        engine.dispose()


# Every label of a task is refused as a concurrent change would be (the row's update does not
# happen): what a reviewer sees when their label keeps racing another writer.
LABELS_RACE = """
CREATE TRIGGER labels_race BEFORE UPDATE OF status ON review_task
WHEN upper(NEW.status) = 'LABELED' BEGIN SELECT RAISE(IGNORE); END
"""


@pytest.mark.browser
def test_a_label_that_raced_is_tried_again_then_kept_on_screen(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    """A 409 "changed concurrently; try again" is tried again once; when it races again, the
    item stays on the page (it is still Ada's) with the server's words, and the next press
    labels it. Before, the page said "Lease lost" and moved on to the next item."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    with live_app.engine.begin() as connection:
        connection.exec_driver_sql(LABELS_RACE)

    press(browser, "1")
    wait_until(browser, lambda d: "not labelled" in text_of(d, "message"), "a not-labelled message")
    assert f"task {first} changed concurrently" in text_of(browser, "message")
    assert requests_to(browser, f"/review/{first}/label") == 2
    wait_for_title(browser, ITEMS[0].title)
    assert active_labels(live_app.engine, first) == []
    assert len(browser_errors(browser)) == 2  # the two 409s, which the browser logs

    with live_app.engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER labels_race")
    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    assert [label.tag for label in active_labels(live_app.engine, first)] == [tags.names[0]]


def block_requests(driver: WebDriver, *paths: str) -> None:
    """Make the browser's requests to `paths` fail as a dropped connection does (none: let
    every request through again)."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": [f"*{path}" for path in paths]})


@pytest.mark.browser
def test_a_saved_label_is_not_offered_again_when_the_next_claim_fails(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    """The label is saved, then claiming the next item fails: the page says the label is
    saved and offers Retry, and the labelled item is gone from it. Before, the item stayed
    on screen as if it were still to label, and a second press relabelled it."""
    first, second, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    block_requests(browser, "/review/claim")

    press(browser, "1")
    wait_until(browser, lambda d: d.find_element(By.ID, "stalled").is_displayed(), "Retry")
    assert not browser.find_element(By.ID, "workspace").is_displayed()
    message = text_of(browser, "message")
    assert message.startswith("Saved") and "Could not fetch the next item" in message
    press(browser, "2")  # nothing to label on this page now
    press(browser, "s")
    time.sleep(0.5)
    assert [label.tag for label in active_labels(live_app.engine, first)] == [tags.names[0]]
    assert browser.execute_script("return document.activeElement.id") == "retry"

    block_requests(browser)
    press(browser, "\n")  # Enter on the focused Retry
    wait_for_title(browser, ITEMS[1].title)
    assert task_statuses(live_app.engine)[second] is ReviewStatus.LEASED
    press(browser, "u")  # the saved label can still be taken back
    wait_for_title(browser, ITEMS[0].title)


@pytest.mark.browser
def test_switching_during_a_claim_drops_its_item_and_releases_it(
    live_app: LiveApp, browser: WebDriver
) -> None:
    """Ada presses Switch while her claim waits for the database: when it answers, the page
    stays on the sign-in form and gives the item back, and Bob then gets it. Before, Ada's
    item appeared over the sign-in form and stayed leased to her until the lease expired."""
    first, _, _ = seed_queue(live_app.engine)
    database = live_app.engine.url.database
    assert database is not None
    writer = sqlite3.connect(database, isolation_level=None, timeout=30)
    writer.execute("BEGIN IMMEDIATE")  # the claim's update waits for this lock
    try:
        sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
        wait_until(
            browser,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#tag-buttons .tag"),
            "the tags (the claim comes next)",
        )
        time.sleep(1.0)  # the claim reaches the server and waits
        browser.find_element(By.ID, "sign-out").click()
        wait_until(browser, lambda d: text_of(d, "message").startswith("Signed out"), "signed out")
    finally:
        writer.execute("COMMIT")
        writer.close()

    # Ada's claim is answered now, and the page gives its item back.
    wait_until(
        browser,
        lambda d: requests_to(d, f"/review/{first}/release") == 1,
        "the item claimed for Ada to be released",
    )
    assert requests_to(browser, "/review/claim") == 1
    assert task_statuses(live_app.engine)[first] is ReviewStatus.OPEN
    assert browser.find_element(By.ID, "signin").is_displayed()
    assert not browser.find_element(By.ID, "workspace").is_displayed()

    fill_sign_in(browser, reviewer="bob", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    assert text_of(browser, "who-name") == "bob"
    with Session(live_app.engine) as session:
        leased = session.exec(select(ReviewTask).where(ReviewTask.status == ReviewStatus.LEASED))
        assert [(task.id, task.leased_by) for task in leased] == [(first, "bob")]
    assert browser_errors(browser) == []


@pytest.mark.browser
def test_undo_survives_a_reload(live_app: LiveApp, browser: WebDriver, tags: TagSet) -> None:
    """The page keeps its undo list in sessionStorage: after a reload, U still reopens the
    reviewer's last label. Before, the list was lost and U did nothing."""
    first, second, third = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    press(browser, "2")
    wait_for_title(browser, ITEMS[2].title)

    browser.refresh()
    wait_for_title(browser, ITEMS[2].title)
    assert text_of(browser, "stat-session") == "2"
    assert browser.find_element(By.ID, "undo").is_enabled()
    press(browser, "u")
    wait_for_title(browser, ITEMS[1].title)
    assert text_of(browser, "stat-session") == "1"
    assert task_statuses(live_app.engine) == {second: ReviewStatus.LEASED, third: ReviewStatus.OPEN}
    press(browser, "u")  # and the one before: the item on screen goes back to the queue
    wait_for_title(browser, ITEMS[0].title)
    assert task_statuses(live_app.engine) == {
        first: ReviewStatus.LEASED,
        second: ReviewStatus.OPEN,
        third: ReviewStatus.OPEN,
    }

    # Switch forgets it: the next reviewer in this tab cannot undo Ada's labels.
    browser.find_element(By.ID, "sign-out").click()
    wait_until(browser, lambda d: d.find_element(By.ID, "signin").is_displayed(), "sign-in")
    sign_in(browser, live_app.url, reviewer="bob", key=KEYS["reviewer"])
    wait_until(browser, lambda d: text_of(d, "who-name") == "bob", "signed in as bob")
    assert not browser.find_element(By.ID, "undo").is_enabled()
    assert browser_errors(browser) == []


@pytest.mark.browser
def test_a_reload_that_cannot_load_the_tags_offers_retry(
    live_app: LiveApp, browser: WebDriver
) -> None:
    """Ada reloads while the tags cannot be fetched: the page stops on Retry, which loads
    them and her item once tagflow answers. Before, it showed no view at all, only "Could not
    reach tagflow", and nothing but another reload could bring the work back. Once the item
    is back, so is a quiet message line: before, "Could not load the tags" stayed in red above
    it (and "Could not fetch the next item: the database is unavailable" above the item a
    Retry fetched once a stopped PostgreSQL was back)."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    block_requests(browser, "/tags")

    browser.refresh()
    wait_until(browser, lambda d: d.find_element(By.ID, "stalled").is_displayed(), "Retry")
    assert text_of(browser, "message").startswith("Could not load the tags")
    assert task_statuses(live_app.engine)[first] is ReviewStatus.OPEN  # released on leaving

    block_requests(browser)
    press(browser, "\n")  # Enter on the focused Retry
    wait_for_title(browser, ITEMS[0].title)
    assert text_of(browser, "message") == ""
    assert task_statuses(live_app.engine)[first] is ReviewStatus.LEASED
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tag-buttons .tag")) > 0


@pytest.mark.browser
def test_switch_after_the_item_was_labelled_elsewhere_holds_nothing(
    live_app: LiveApp, browser: WebDriver
) -> None:
    """Ada labels her item in another tab, then presses Switch here: the release gives back
    nothing (the item is labelled), so she holds nothing and the page just says "Signed out."
    Before, it said her item could not be released and would stay hers until its lease ran
    out."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    assert post_as_ada(live_app, f"/review/{first}/label", {"tag": "mlops"}).status_code == 201

    browser.find_element(By.ID, "sign-out").click()
    wait_until(browser, lambda d: requests_to(d, "/review/release") == 1, "the release")
    wait_until(browser, lambda d: "Releasing" not in text_of(d, "message"), "the answer")
    assert text_of(browser, "message") == "Signed out."
    assert browser.find_element(By.ID, "signin").is_displayed()


def leases(engine: Engine) -> list[tuple[int, str]]:
    """(task id, reviewer) of every leased task."""
    with Session(engine) as session:
        leased = session.exec(select(ReviewTask).where(ReviewTask.status == ReviewStatus.LEASED))
        return [(task.id, task.leased_by) for task in leased]  # type: ignore[misc]


@pytest.mark.browser
def test_switch_after_a_claim_whose_answer_was_lost_releases_its_item(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver
) -> None:
    """Ada's claim is saved and its answer lost: the page stops on Retry, not knowing which
    item the server leased her. She presses Switch and Bob signs in: he gets that item, as
    Switch gave back all Ada held. Before, it stayed leased to Ada, unseen, until the lease
    ran out (10 minutes), and Bob got the next one."""
    first, _, _ = seed_queue(live_app.engine)
    proxy.lose_answers("POST", "/review/claim")
    proxy.lose_requests("POST", "/review/claim", count=10)  # Chromium's own resends
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_until(browser, lambda d: d.find_element(By.ID, "stalled").is_displayed(), "Retry")
    proxy.clear()
    assert proxy.lost[0] == "POST /review/claim answer"
    assert leases(live_app.engine) == [(first, "ada")]

    browser.find_element(By.ID, "sign-out").click()
    wait_until(browser, lambda d: leases(live_app.engine) == [], "Ada's item given back")
    assert text_of(browser, "message") == "Signed out."
    fill_sign_in(browser, reviewer="bob", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    assert leases(live_app.engine) == [(first, "bob")]


# Every claim's update is dropped, as when other claims keep taking the candidates first:
# the server gives up after its attempts with 409 "the queue is too contended right now".
CLAIMS_RACE = """
CREATE TRIGGER claims_race BEFORE UPDATE OF status ON review_task
WHEN upper(OLD.status) = 'OPEN' AND upper(NEW.status) = 'LEASED' BEGIN SELECT RAISE(IGNORE); END
"""


@pytest.mark.browser
def test_a_contended_claim_is_tried_again_once_then_offers_retry(
    live_app: LiveApp, browser: WebDriver
) -> None:
    """A claim refused as "too contended; try again" is sent once more before the page says
    so; then the page tries again by itself, as the empty page does every 20 seconds, and
    claims once the queue is free. Before, the first refusal was final, and the page waited
    for Retry."""
    first, _, _ = seed_queue(live_app.engine)
    with live_app.engine.begin() as connection:
        connection.exec_driver_sql(CLAIMS_RACE)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_until(browser, lambda d: d.find_element(By.ID, "stalled").is_displayed(), "Retry")
    assert "the queue is too contended right now" in text_of(browser, "message")
    assert requests_to(browser, "/review/claim") == 2

    with live_app.engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER claims_race")
    WebDriverWait(browser, 30).until(  # no key pressed: the 20-second poll
        lambda d: d.find_element(By.ID, "workspace").is_displayed(),
        message="the page to claim the item by itself",
    )
    assert text_of(browser, "item-title") == ITEMS[0].title
    assert task_statuses(live_app.engine)[first] is ReviewStatus.LEASED


# ---------- lost answers: the server did the work, the browser never heard ----------


@pytest.fixture
def proxy(live_app: LiveApp) -> Iterator[LossyProxy]:
    """The live app behind a proxy that can lose requests or answers; the page goes through
    it (every request a new connection, so Chromium resends nothing by itself)."""
    with lossy_proxy(live_app.url) as lossy:
        yield lossy


def all_labels(engine: Engine, task_id: int) -> list[Label]:
    """Every label of a task, superseded ones too, oldest first."""
    with Session(engine) as session:
        return list(session.exec(select(Label).where(Label.task_id == task_id).order_by(Label.id)))


# What the page says when a request got no answer: now, and before labels were known to be
# safe to send again.
NO_ANSWER = re.compile(r"did not answer|Could not reach")


def press_until_gone(driver: WebDriver, key: str, title: str) -> None:
    """Press `key` as a reviewer does while `title` stays on screen: again after each request
    that got no answer (at most three times). Chromium may send a request again by itself
    when the connection closes unanswered, so the first press can be enough."""
    for _ in range(3):
        driver.execute_script("document.getElementById('message').textContent = ''")
        press(driver, key)
        wait_until(
            driver,
            lambda d: text_of(d, "item-title") != title or NO_ANSWER.search(text_of(d, "message")),
            f"an answer to {key!r}",
        )
        if text_of(driver, "item-title") != title:
            return
    raise AssertionError(f"{title!r} is still on screen after pressing {key!r} three times")


@pytest.mark.browser
def test_a_label_whose_answer_was_lost_is_saved_once_and_the_page_says_so(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """Ada's label reaches the server, which saves it, and the answer is lost. She presses the
    same tag again: the server answers with the label it saved (200), the page says it is
    saved, counts it once and U takes it back. Before, the second press was refused as
    "already labelled", the page said "was not labelled", and U could not undo it."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    proxy.lose_answers("POST", f"/review/{first}/label")

    press_until_gone(browser, "1", ITEMS[0].title)
    wait_for_title(browser, ITEMS[1].title)
    assert proxy.lost == [f"POST /review/{first}/label answer"]
    message = text_of(browser, "message")
    assert "not labelled" not in message and "already" not in message
    assert message.startswith("Labelled") and tags.names[0] in message
    assert [(label.tag, label.reviewer) for label in all_labels(live_app.engine, first)] == [
        (tags.names[0], "ada")
    ]
    assert text_of(browser, "stat-session") == "1"

    press(browser, "u")  # the page knows the label is Ada's, and can take it back
    wait_for_title(browser, ITEMS[0].title)
    press(browser, "2")
    wait_for_title(browser, ITEMS[1].title)
    assert [label.tag for label in active_labels(live_app.engine, first)] == [tags.names[1]]
    assert len(all_labels(live_app.engine, first)) == 2


@pytest.mark.browser
def test_another_tag_after_a_lost_answer_keeps_the_saved_label_and_says_which(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """Ada's label is saved and its answer lost; the network is down a while, then she presses
    another tag. Nothing is saved twice nor silently replaced: the page says the item is
    labelled with her first tag, and U then changes it to the second."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    proxy.lose_answers("POST", f"/review/{first}/label")
    proxy.lose_requests("POST", f"/review/{first}/label", count=10)  # Chromium's own resends

    press(browser, "1")
    wait_until(browser, lambda d: "may or may not be saved" in text_of(d, "message"), "unsure")
    proxy.clear()
    assert text_of(browser, "item-title") == ITEMS[0].title
    assert text_of(browser, "stat-session") == "0"

    press(browser, "2")
    wait_for_title(browser, ITEMS[1].title)
    message = text_of(browser, "message")
    assert f"is already labelled {tags.names[0]}, by you" in message
    assert text_of(browser, "stat-session") == "1"
    assert [label.tag for label in all_labels(live_app.engine, first)] == [tags.names[0]]

    press(browser, "u")
    wait_for_title(browser, ITEMS[0].title)
    press(browser, "2")
    wait_for_title(browser, ITEMS[1].title)
    assert [label.tag for label in active_labels(live_app.engine, first)] == [tags.names[1]]
    assert len(all_labels(live_app.engine, first)) == 2


def task_row(engine: Engine, task_id: int) -> ReviewTask:
    with Session(engine) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None
        return task


@pytest.mark.browser
def test_a_skip_whose_answer_was_lost_counts_once(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver
) -> None:
    """Ada's skip reaches the server and its answer is lost; she presses S again. The item
    is skipped once: one skip counted, its priority lowered once. Before, the second press
    skipped it again (two skips, twice the drop), as if two reviewers had passed on it."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    proxy.lose_answers("POST", f"/review/{first}/skip")

    press_until_gone(browser, "s", ITEMS[0].title)
    wait_for_title(browser, ITEMS[1].title)
    assert proxy.lost == [f"POST /review/{first}/skip answer"]
    assert text_of(browser, "message").startswith("Skipped")
    task = task_row(live_app.engine, first)
    assert (task.status, task.skips, task.skipped_by) == (ReviewStatus.OPEN, 1, "ada")
    assert task.priority == pytest.approx(ITEMS[0].priority - SKIP_STEP)


@pytest.mark.browser
def test_an_undo_whose_answer_was_lost_brings_the_item_back_when_sent_again(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """Ada's undo reaches the server, which leases the item back to her, and its answer is
    lost; she presses U again. The item comes back on her page, the one she was shown goes
    back to the queue, and her next label replaces the first. Before, the second U was
    refused ("no label of 'ada' to undo"), the page dropped the label from its undo list and
    said the undo failed, and the reopened item stayed leased to her, unseen, until the lease
    ran out."""
    first, second, third = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    proxy.lose_answers("POST", f"/review/{first}/reopen")

    press_until_gone(browser, "u", ITEMS[1].title)
    wait_for_title(browser, ITEMS[0].title)
    assert proxy.lost == [f"POST /review/{first}/reopen answer"]
    assert text_of(browser, "message").startswith("Undone")
    assert task_statuses(live_app.engine) == {
        first: ReviewStatus.LEASED,
        second: ReviewStatus.OPEN,
        third: ReviewStatus.OPEN,
    }
    press(browser, "2")
    wait_for_title(browser, ITEMS[1].title)
    assert [label.tag for label in active_labels(live_app.engine, first)] == [tags.names[1]]
    assert len(all_labels(live_app.engine, first)) == 2


@pytest.mark.browser
def test_a_label_the_network_never_answers_frees_the_page(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """Ada's label reaches the server and the network goes silent: no answer, no closed
    connection. Within the page's request timeout it says the label may or may not be saved
    and takes keys again; pressing the tag again saves nothing twice. Before, the page stayed
    busy with no word for as long as the connection hung (over a minute here), every key
    ignored."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    held = proxy.hold_answers("POST", f"/review/{first}/label")
    try:
        press(browser, "1")
        WebDriverWait(browser, REQUEST_TIMEOUT_S + WAIT_S).until(
            lambda d: "may or may not be saved" in text_of(d, "message"),
            message="the page to give up on the label",
        )
        assert "did not answer" in text_of(browser, "message")
        assert browser.find_element(By.ID, "workspace").get_attribute("aria-busy") == "false"
        press(browser, "1")
        wait_for_title(browser, ITEMS[1].title)
    finally:
        held.set()
    assert [label.tag for label in all_labels(live_app.engine, first)] == [tags.names[0]]
    assert text_of(browser, "stat-session") == "1"


@pytest.mark.browser
def test_an_undo_whose_release_of_the_shown_item_fails_still_shows_the_item_undone(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """Ada presses U: the server leases her labelled item back, then the release of the item
    she was shown is lost on the way. The page shows the item undone all the same (it is
    hers now), and the one she was shown, still leased to her, comes back at her next claim.
    Before, the failed release aborted the undo on the page: it kept showing the other item,
    said tagflow could not be reached, and had dropped the label from its undo list, while the
    server held the undone item for her unseen."""
    first, second, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    proxy.lose_requests("POST", f"/review/{second}/release")

    press(browser, "u")
    wait_until(
        browser,
        lambda d: text_of(d, "item-title") == ITEMS[0].title or text_of(d, "message"),
        "an answer to the undo",
    )
    wait_for_title(browser, ITEMS[0].title)
    assert proxy.lost == [f"POST /review/{second}/release request"]
    assert text_of(browser, "message").startswith("Undone")
    assert task_statuses(live_app.engine)[second] is ReviewStatus.LEASED  # still Ada's

    press(browser, "2")
    wait_for_title(browser, ITEMS[1].title)  # her next claim gives it back to her
    assert [label.tag for label in active_labels(live_app.engine, first)] == [tags.names[1]]


@pytest.mark.browser
def test_a_label_with_no_answer_is_settled_after_a_reload(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """Ada's label is saved and its answer lost, and she reloads the page. The page sends the
    label again before claiming: it says the item is labelled, counts it, and U takes it
    back. Before, the reloaded page went on to the next item without a word: the label was
    saved, but the page counted nothing and U could not reach it."""
    first, second, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    proxy.lose_answers("POST", f"/review/{first}/label")
    press(browser, "1")
    wait_until(browser, lambda d: "may or may not be saved" in text_of(d, "message"), "unsure")

    browser.refresh()
    wait_for_title(browser, ITEMS[1].title)
    settled_then_undone(browser, live_app, tags, first)


@pytest.mark.browser
def test_undo_after_a_label_with_no_answer_takes_back_that_label(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """Ada labels two items; the second label is saved and its answer lost, and she presses
    U. What she takes back is that label, the last she gave: the item stays on her page to
    label again, and the first item's label stands. Before, U reopened the first item and
    the second's label stood unseen (the page knew nothing of it)."""
    first, second, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    proxy.lose_answers("POST", f"/review/{second}/label")
    press(browser, "2")
    wait_until(browser, lambda d: "may or may not be saved" in text_of(d, "message"), "unsure")

    press(browser, "u")
    wait_until(browser, lambda d: text_of(d, "message").startswith("Undone"), "the undo")
    assert text_of(browser, "item-title") == ITEMS[1].title
    assert f"(was {tags.names[1]})" in text_of(browser, "message")
    assert task_statuses(live_app.engine)[second] is ReviewStatus.LEASED
    assert [label.tag for label in active_labels(live_app.engine, first)] == [tags.names[0]]
    press(browser, "3")
    wait_for_title(browser, ITEMS[2].title)
    assert [label.tag for label in active_labels(live_app.engine, second)] == [tags.names[2]]
    assert len(all_labels(live_app.engine, second)) == 2


@pytest.mark.browser
def test_undo_works_when_the_only_label_got_no_answer(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """The first label of Ada's session is saved and its answer lost: U is on all the same,
    and takes that label back. Before, U was off (the page had no label to undo) while the
    label stood."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    proxy.lose_answers("POST", f"/review/{first}/label")
    press(browser, "1")
    wait_until(browser, lambda d: "may or may not be saved" in text_of(d, "message"), "unsure")
    assert browser.find_element(By.ID, "undo").is_enabled()

    press(browser, "u")
    wait_until(browser, lambda d: text_of(d, "message").startswith("Undone"), "the undo")
    assert text_of(browser, "item-title") == ITEMS[0].title
    assert text_of(browser, "stat-session") == "0"
    assert task_statuses(live_app.engine)[first] is ReviewStatus.LEASED


@pytest.mark.browser
def test_switch_sends_a_label_with_no_answer_again_first(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """Ada's label is lost on the way (the server never sees it) and she presses Switch. The
    page sends it again first: while that gets no answer either, it does not switch and says
    why; once tagflow answers, the label is saved and the page switches. Before, Switch
    dropped the label the page was keeping to send again, and it was lost."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    proxy.lose_requests("POST", f"/review/{first}/label", count=10)
    press(browser, "1")
    wait_until(browser, lambda d: "may or may not be saved" in text_of(d, "message"), "unsure")

    browser.find_element(By.ID, "sign-out").click()
    wait_until(browser, lambda d: text_of(d, "message").startswith("Not switched"), "refused")
    assert tags.names[0] in text_of(browser, "message")
    assert text_of(browser, "who-name") == "ada"
    assert browser.find_element(By.ID, "workspace").is_displayed()
    assert all_labels(live_app.engine, first) == []

    proxy.clear()
    browser.find_element(By.ID, "sign-out").click()
    wait_until(browser, lambda d: d.find_element(By.ID, "signin").is_displayed(), "sign-in")
    wait_until(browser, lambda d: "Releasing" not in text_of(d, "message"), "the release")
    message = text_of(browser, "message")
    assert f"is labelled {tags.names[0]} (the answer to your label" in message
    assert message.endswith("reached this page). Signed out.")
    assert [(label.tag, label.reviewer) for label in all_labels(live_app.engine, first)] == [
        (tags.names[0], "ada")
    ]
    assert leases(live_app.engine) == []


@pytest.mark.browser
def test_a_label_with_no_answer_is_settled_when_the_page_comes_back_from_history(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """Ada's label is saved and its answer lost; she leaves the page and comes Back to it,
    which the browser restores from its back/forward cache (no reload). The page sends the
    label again before claiming, as after a reload: it says the item is labelled, counts it,
    and U takes it back. Before, it claimed the next item without a word."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    proxy.lose_answers("POST", f"/review/{first}/label")
    proxy.lose_requests("POST", f"/review/{first}/label", count=10)  # Chromium's own resends
    press(browser, "1")
    wait_until(browser, lambda d: "may or may not be saved" in text_of(d, "message"), "unsure")
    proxy.clear()
    browser.execute_script("window.notReloaded = true")

    browser.get("about:blank")
    browser.back()
    wait_for_title(browser, ITEMS[1].title)
    assert browser.execute_script("return window.notReloaded === true"), "not from the bfcache"
    settled_then_undone(browser, live_app, tags, first)


@pytest.mark.browser
def test_a_skip_with_no_answer_says_it_is_safe_to_press_again(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver
) -> None:
    """Ada's skip reaches the server and no answer comes back: the page says the skip may
    have gone through and that pressing S again is safe, and the second S skips it once.
    Before, it said only "Could not reach tagflow ... try again", as if nothing was done."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    proxy.lose_answers("POST", f"/review/{first}/skip")
    proxy.lose_requests("POST", f"/review/{first}/skip", count=10)  # Chromium's own resends

    press(browser, "s")
    wait_until(browser, lambda d: "may already be skipped" in text_of(d, "message"), "unsure")
    assert "counts once" in text_of(browser, "message")
    assert text_of(browser, "item-title") == ITEMS[0].title
    proxy.clear()
    press(browser, "s")
    wait_for_title(browser, ITEMS[1].title)
    task = task_row(live_app.engine, first)
    assert (task.status, task.skips, task.skipped_by) == (ReviewStatus.OPEN, 1, "ada")


@pytest.mark.browser
def test_switch_during_a_label_sends_it_before_switching(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet
) -> None:
    """Ada presses a tag and, while the label is still on its way (lost in a silent network,
    it never reaches the server), presses Switch. The page sends the label again before it
    switches, and it is saved once. Before, Switch ignored the label in flight: it never
    reached the server, and nobody was told it was lost."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    held = proxy.hold_requests("POST", f"/review/{first}/label")
    try:
        press(browser, "1")
        wait_until(browser, lambda d: proxy.lost, "the label lost on its way")
        browser.find_element(By.ID, "sign-out").click()
        wait_until(browser, lambda d: d.find_element(By.ID, "signin").is_displayed(), "sign-in")
        wait_until(browser, lambda d: "Releasing" not in text_of(d, "message"), "the release")
    finally:
        held.set()
    assert proxy.lost == [f"POST /review/{first}/label request"]
    assert f"is labelled {tags.names[0]}" in text_of(browser, "message")
    assert [(label.tag, label.reviewer) for label in all_labels(live_app.engine, first)] == [
        (tags.names[0], "ada")
    ]
    assert leases(live_app.engine) == []


# ---------- a tab closed with a label pending ----------


def wait_for_labels(engine: Engine, task_id: int, expected: list[tuple[str, str]]) -> None:
    """Wait until `task_id`'s labels, oldest first, are `expected` ((tag, reviewer) each)."""
    deadline = time.monotonic() + WAIT_S
    while (found := [(row.tag, row.reviewer) for row in all_labels(engine, task_id)]) != expected:
        assert time.monotonic() < deadline, f"labels of task {task_id}: {found} != {expected}"
        time.sleep(0.1)


@pytest.mark.browser
@pytest.mark.parametrize("lost", ["answered nothing", "still on its way"])
def test_a_label_with_no_answer_is_sent_when_its_tab_is_closed(
    live_app: LiveApp, proxy: LossyProxy, browser: WebDriver, tags: TagSet, lost: str
) -> None:
    """Ada labels an item in a tab of her own; the label never reaches the server (its request
    lost, or held in a silent network), and she closes the tab. The page sends the label as
    it goes, and it is saved once; the item is not given back to the queue before it. Before,
    the label kept in the closed tab's sessionStorage went with the tab: lost unseen."""
    first, _, _ = seed_queue(live_app.engine)
    home = browser.current_window_handle
    browser.switch_to.new_window("tab")
    sign_in(browser, proxy.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    if lost == "answered nothing":
        proxy.lose_requests("POST", f"/review/{first}/label", count=10)  # Chromium's resends
        press(browser, "1")
        wait_until(browser, lambda d: "may or may not be saved" in text_of(d, "message"), "unsure")
        proxy.clear()
        held = None
    else:
        held = proxy.hold_requests("POST", f"/review/{first}/label")
        press(browser, "1")
        wait_until(browser, lambda d: proxy.lost, "the label lost on its way")
    try:
        assert all_labels(live_app.engine, first) == []
        browser.close()
        browser.switch_to.window(home)
        wait_for_labels(live_app.engine, first, [(tags.names[0], "ada")])
    finally:
        if held is not None:
            held.set()
    assert leases(live_app.engine) == []
    assert task_statuses(live_app.engine).get(first) is None  # labelled, out of the queue


# ---------- one reviewer, two tabs ----------


@pytest.mark.browser
def test_switch_in_one_tab_leaves_the_item_another_tab_of_the_reviewer_shows(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    """Ada reviews in two tabs, which show the item she holds; she hands one tab to Bob with
    Switch. Her other tab keeps its item: Bob gets the next one, and Ada's label is saved.
    Before, Switch gave back every lease Ada held, Bob was handed the item her other tab
    showed, and her label there was refused as "leased to 'bob'"."""
    first, second, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    kept = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"{live_app.url}/review")  # signed in already: the saved key
    wait_for_title(browser, ITEMS[0].title)  # the item Ada holds

    browser.find_element(By.ID, "sign-out").click()
    wait_until(browser, lambda d: requests_to(d, "/review/release") == 1, "the release")
    wait_until(browser, lambda d: "Releasing" not in text_of(d, "message"), "its answer")
    assert leases(live_app.engine) == [(first, "ada")]
    assert "your other tab" in text_of(browser, "message")
    fill_sign_in(browser, reviewer="bob", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[1].title)
    assert sorted(leases(live_app.engine)) == [(first, "ada"), (second, "bob")]

    browser.switch_to.window(kept)
    press(browser, "1")
    wait_until(browser, lambda d: text_of(d, "message").startswith("Labelled"), "the label")
    assert [(row.tag, row.reviewer) for row in all_labels(live_app.engine, first)] == [
        (tags.names[0], "ada")
    ]
    assert browser_errors(browser) == []


@pytest.mark.browser
def test_closing_one_tab_leaves_the_item_another_tab_of_the_reviewer_shows(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    """Ada's two tabs show the item she holds, and she closes one: the item stays leased to
    her, for the other tab shows it, and her label there is saved. Before, the closed tab
    gave the item back to the queue, for anyone to claim from under the other tab."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    kept = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"{live_app.url}/review")
    wait_for_title(browser, ITEMS[0].title)
    time.sleep(2.5)  # long enough for each tab to see what the other shows

    browser.close()
    browser.switch_to.window(kept)
    time.sleep(1.0)  # a release sent as the tab closed would have landed by now
    assert leases(live_app.engine) == [(first, "ada")]
    press(browser, "1")
    wait_until(browser, lambda d: text_of(d, "message").startswith("Labelled"), "the label")
    assert [(row.tag, row.reviewer) for row in all_labels(live_app.engine, first)] == [
        (tags.names[0], "ada")
    ]


@pytest.mark.browser
def test_a_tab_reloaded_after_another_tab_switched_stays_its_reviewers(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    """Ada signs in, opens a second tab (signed in by what the first saved) and labels there;
    in the first tab she presses Switch and Bob signs in. Her second tab, reloaded, is still
    hers: her name, her count, and U takes back her label. Before, it came back signed in as
    Bob (the sign-in the last tab saved), its undo list dropped: the next labels there were
    Bob's, and a label of Ada's with no answer was forgotten."""
    first, _, _ = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    switched = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"{live_app.url}/review")
    wait_for_title(browser, ITEMS[0].title)
    press(browser, "1")
    wait_for_title(browser, ITEMS[1].title)
    kept = browser.current_window_handle

    browser.switch_to.window(switched)
    browser.find_element(By.ID, "sign-out").click()
    fill_sign_in(browser, reviewer="bob", key=KEYS["reviewer"])
    wait_until(browser, lambda d: text_of(d, "who-name") == "bob", "Bob signed in")

    browser.switch_to.window(kept)
    browser.refresh()
    wait_until(browser, lambda d: d.find_element(By.ID, "workspace").is_displayed(), "an item")
    assert text_of(browser, "who-name") == "ada"
    assert text_of(browser, "stat-session") == "1"
    press(browser, "u")
    wait_for_title(browser, ITEMS[0].title)
    assert (first, "ada") in leases(live_app.engine)
    browser.switch_to.new_window("tab")  # a new tab starts from the last sign-in: Bob's
    browser.get(f"{live_app.url}/review")
    wait_until(browser, lambda d: text_of(d, "who-name") == "bob", "Bob's sign-in")


# ---------- lease renewal ----------

# The page renews at half a lease, looking once a second: 4 s left it 1 to 2 s before the
# lease ran out, which a busy CI machine (browser, API and test on 2 cores) could miss.
SHORT_LEASE_S = 8


@pytest.fixture
def short_lease_app(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> Iterator[LiveApp]:
    """The live app with leases of SHORT_LEASE_S seconds (600 by default)."""
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'review.db'}", review_lease_s=SHORT_LEASE_S
    )
    with serve_live(settings, shared_result) as app:
        yield app


def lease_of(engine: Engine, task_id: int) -> tuple[str | None, float]:
    """Who holds a task's lease, and the seconds left on it (negative: run out)."""
    with Session(engine) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None and task.lease_expires_at is not None
        left = task.lease_expires_at.replace(tzinfo=UTC) - datetime.now(UTC)
        return task.leased_by, left.total_seconds()


@pytest.mark.browser
def test_the_lease_is_renewed_while_the_reviewer_is_at_the_item_and_not_once_idle(
    short_lease_app: LiveApp, browser: WebDriver
) -> None:
    """With short leases (SHORT_LEASE_S), Ada stays on her item for 2 leases, pressing keys: the
    page renews it, and Bob's claim gets the next item. Before, the page never renewed a lease:
    it ran out after its 8 s (10 minutes by default) and Bob's claim took Ada's item from under
    her. Once she does nothing for 2 lease lengths, the page stops renewing and the lease runs
    out."""
    app = short_lease_app
    first, second, _ = seed_queue(app.engine)
    sign_in(browser, app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    until = time.monotonic() + 2 * SHORT_LEASE_S
    while time.monotonic() < until:
        press(browser, "x")  # no shortcut: only a reviewer at work
        holder, left = lease_of(app.engine, first)
        assert holder == "ada" and left > 0, (holder, left)
        time.sleep(0.3)
    bob = httpx.post(
        f"{app.url}/review/claim", json={"reviewer": "bob"}, headers=auth("reviewer")
    ).json()
    assert bob["task_id"] == second
    assert "yours for" in text_of(browser, "lease")

    # Idle: renewals stop after 2 lease lengths, and the last one runs out.
    WebDriverWait(browser, 3 * SHORT_LEASE_S + WAIT_S).until(
        lambda d: "lease expired" in text_of(d, "lease"), message="the lease to run out"
    )
    assert lease_of(app.engine, first)[1] < 0
    time.sleep(1.5)  # still run out: a renewal would have moved it
    assert lease_of(app.engine, first)[1] < 0
    assert browser_errors(browser) == []


# Puts the page's clock (Date.now) off by {ms} milliseconds, before any script of the page runs.
CLOCK_OFF = "(() => {{ const now = Date.now; Date.now = () => now.call(Date) + {ms}; }})();"


def seconds_shown(driver: WebDriver) -> int:
    """The seconds the page's lease countdown shows ("yours for 9:58")."""
    shown = re.fullmatch(r"yours for (\d+):(\d\d)", text_of(driver, "lease"))
    assert shown, text_of(driver, "lease")
    return int(shown[1]) * 60 + int(shown[2])


@pytest.mark.browser
@pytest.mark.parametrize("clock_off_s", [20 * 60, -20 * 60], ids=["ahead", "behind"])
def test_the_lease_countdown_is_the_servers_whatever_the_browsers_clock(
    live_app: LiveApp, browser: WebDriver, clock_off_s: int
) -> None:
    """The browser's clock is 20 minutes off (its Date.now, which is all the page reads of
    it). The page counts the 10-minute lease down from the seconds the server says are left
    (`lease_remaining_s`), so it shows what the server holds. Before, it read
    `lease_expires_at` against its own clock: 20 minutes ahead, a fresh item showed "lease
    expired: another reviewer may take this item"; behind, "yours for 29:59"."""
    first, _, _ = seed_queue(live_app.engine)
    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": CLOCK_OFF.format(ms=clock_off_s * 1000)}
    )
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    page_off_s = browser.execute_script("return Date.now()") / 1000 - time.time()
    assert abs(page_off_s - clock_off_s) < 5  # the page's clock is off indeed
    wait_until(browser, lambda d: text_of(d, "lease").startswith("yours for"), "the countdown")
    _, left = lease_of(live_app.engine, first)
    assert abs(seconds_shown(browser) - left) <= 2, (text_of(browser, "lease"), left)
    assert browser.find_element(By.ID, "lease").get_attribute("class") == "lease"  # no warning
    time.sleep(2.1)
    _, left = lease_of(live_app.engine, first)
    assert abs(seconds_shown(browser) - left) <= 2  # and it counts down
    assert browser_errors(browser) == []


@pytest.mark.browser
def test_a_hidden_tab_does_not_renew_and_back_in_sight_moves_on_from_a_lost_item(
    short_lease_app: LiveApp, browser: WebDriver
) -> None:
    """A tab in the background renews nothing: its lease runs out and Bob's claim takes the
    item. Back in sight, the page tries to renew, is told the item is Bob's, says so and
    shows Ada the next item (before, it kept showing the lost item until a label was
    refused)."""
    app = short_lease_app
    first, second, _ = seed_queue(app.engine)
    sign_in(browser, app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    ada = browser.current_window_handle
    browser.switch_to.new_window("tab")  # Ada's tab is hidden now
    deadline = time.monotonic() + SHORT_LEASE_S + WAIT_S
    while lease_of(app.engine, first)[1] >= 0:
        assert time.monotonic() < deadline, "the hidden tab kept renewing"
        time.sleep(0.2)
    bob = httpx.post(
        f"{app.url}/review/claim", json={"reviewer": "bob"}, headers=auth("reviewer")
    ).json()
    assert bob["task_id"] == first

    browser.switch_to.window(ada)
    wait_for_title(browser, ITEMS[1].title)
    assert f"was not kept for you: task {first} is leased to 'bob'." in text_of(browser, "message")
    assert lease_of(app.engine, second)[0] == "ada"
    [refusal] = browser_errors(browser)  # the browser logs each 409 it sees
    assert f"/review/{first}/renew" in refusal and "409" in refusal


@pytest.mark.browser
def test_keyboard_hints_are_not_shown_on_a_touch_screen(
    live_app: LiveApp, browser: WebDriver
) -> None:
    """On a phone (a coarse pointer that cannot hover: Chromium's touch emulation) the page
    does not say "press a number" above the tag buttons, nor "Press U" to undo (its messages
    say to tap the Undo button), nor show S and U on those buttons: there are no keys to
    press. Before, all showed. With a keyboard they still do."""
    seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)
    assert browser.find_element(By.ID, "keys-hint").is_displayed()

    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
    browser.set_window_size(390, 844)
    browser.refresh()  # signed in already: the saved key
    wait_for_title(browser, ITEMS[0].title)
    touch_only = "return matchMedia('(hover: none) and (pointer: coarse)').matches"
    assert browser.execute_script(touch_only)
    assert not browser.find_element(By.ID, "keys-hint").is_displayed()
    assert text_of(browser, "decide-heading").lower() == "your label"
    buttons = browser.find_elements(By.CSS_SELECTOR, "#tag-buttons button")
    buttons[-1].click()
    wait_for_title(browser, ITEMS[1].title)
    assert browser.find_element(By.ID, "undo").is_displayed()  # Undo is a button to tap
    # ...and the messages name it, not the U key; nor do Skip and Undo show their keys.
    assert "Tap “Undo last label” to undo it." in text_of(browser, "message")
    assert "Press U" not in text_of(browser, "message")
    assert text_of(browser, "undo") == "Undo last label" and text_of(browser, "skip") == "Skip"
    browser.find_elements(By.CSS_SELECTOR, "#tag-buttons button")[0].click()
    wait_for_title(browser, ITEMS[2].title)
    browser.find_elements(By.CSS_SELECTOR, "#tag-buttons button")[0].click()
    wait_until(browser, lambda d: d.find_element(By.ID, "empty").is_displayed(), "empty")
    # The empty view's Undo is a button to tap too; its "or press U" is not shown.
    assert browser.find_element(By.ID, "empty-undo-button").is_displayed()
    assert text_of(browser, "empty-undo") == "Undo last label"
    browser.find_element(By.ID, "empty-undo-button").click()
    wait_for_title(browser, ITEMS[2].title)
    assert text_of(browser, "stat-session") == "2"
    assert browser_errors(browser) == []


@pytest.mark.browser
def test_the_empty_and_stalled_views_offer_an_undo_button(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    """Once the reviewer has a label to take back, the views with no item (the queue empty
    for them, or the next claim failed) show an "Undo last label" button, which does what U
    does: the item comes back, leased to them. Before, those views said only "Press U", which
    a phone cannot press (and did not show it there): its reviewer had no way to undo. With
    nothing to undo, no button."""
    first, second, third = seed_queue(live_app.engine)
    block_requests(browser, "/review/claim")
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_until(browser, lambda d: d.find_element(By.ID, "stalled").is_displayed(), "Retry")
    assert not browser.find_element(By.ID, "stalled-undo").is_displayed()  # nothing to undo

    block_requests(browser)
    browser.find_element(By.ID, "retry").click()
    wait_for_title(browser, ITEMS[0].title)
    block_requests(browser, "/review/claim")
    press(browser, "1")
    wait_until(browser, lambda d: d.find_element(By.ID, "stalled").is_displayed(), "Retry")
    undo = browser.find_element(By.ID, "stalled-undo-button")
    assert undo.is_displayed() and undo.text == "Undo last label"
    assert "or press U" in text_of(browser, "stalled-undo")  # a keyboard: the key beside it
    undo.click()
    wait_for_title(browser, ITEMS[0].title)
    assert task_statuses(live_app.engine)[first] is ReviewStatus.LEASED  # back, for a new label
    assert text_of(browser, "stat-session") == "0"

    block_requests(browser)
    for task_id in (first, second, third):
        title = text_of(browser, "item-title")
        press(browser, str(tags.names.index("other") + 1))
        wait_until(
            browser,
            lambda d, shown=title: (
                d.find_element(By.ID, "empty").is_displayed() or text_of(d, "item-title") != shown
            ),
            f"the label of task {task_id} saved",
        )
    wait_until(browser, lambda d: d.find_element(By.ID, "empty").is_displayed(), "empty queue")
    browser.find_element(By.ID, "empty-undo-button").click()
    wait_for_title(browser, ITEMS[2].title)
    assert task_statuses(live_app.engine) == {third: ReviewStatus.LEASED}
    assert text_of(browser, "message").startswith("Undone")


@pytest.mark.browser
def test_a_key_revoked_is_met_by_the_lease_renewal(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    shared_result: TrainResult,
    browser: WebDriver,
) -> None:
    """Cat's key is revoked while she reads her item: the page's next renewal is refused, and
    the page goes back to sign-in as a refused label does (not renewing in vain every 5 s)."""
    keys = tmp_path / "keys"
    keys.write_text("reviewer/cat:cat-old\n")
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'review.db'}",
        api_keys_file=keys,
        review_lease_s=SHORT_LEASE_S,
    )
    with serve_live(settings, shared_result) as app:
        first, _, _ = seed_queue(app.engine)
        sign_in(browser, app.url, reviewer="", key="cat-old")
        wait_for_title(browser, ITEMS[0].title)
        keys.write_text("reviewer/cat:cat-new\n")
        deadline = time.monotonic() + SHORT_LEASE_S + WAIT_S  # the renewal comes at half a lease
        while not browser.find_element(By.ID, "signin").is_displayed():
            assert time.monotonic() < deadline, "the page did not go back to sign-in"
            press(browser, "x")  # at work: the page renews
            time.sleep(0.3)
        assert text_of(browser, "message") == (
            "The API key was not accepted (unknown API key). Check it and sign in again."
        )
        [refused] = browser_errors(browser)
        assert f"/review/{first}/renew" in refused and "401" in refused


def press_on_layout(driver: WebDriver, key: str, code: str) -> None:
    """Press the physical key `code` on a keyboard layout where it types `key` (what the
    browser reports as KeyboardEvent.key): Russian ЙЦУКЕН types "ы" on the S key and "г" on
    U, French AZERTY "&" and "é" on the 1 and 2 keys, unshifted."""
    for kind in ("keyDown", "keyUp"):
        driver.execute_cdp_cmd(
            "Input.dispatchKeyEvent",
            {"type": kind, "key": key, "code": code, "text": key if kind == "keyDown" else ""},
        )


@pytest.mark.browser
def test_the_shortcuts_work_on_other_keyboard_layouts(
    live_app: LiveApp, browser: WebDriver, tags: TagSet
) -> None:
    """S, U and the numbers are the keys where they stand on the keyboard. On a Cyrillic,
    Greek or Hebrew layout the S key types a letter of its own, and on French AZERTY the
    number keys type & é " ' ( unshifted: the page read only the character typed, so these
    reviewers could neither skip nor undo from the keyboard, and AZERTY's had to hold Shift
    for every label. A letter typed elsewhere on a Latin layout (Dvorak's "o" on the S key)
    stays what it types."""
    first, second, third = seed_queue(live_app.engine)
    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, ITEMS[0].title)

    press_on_layout(browser, "o", "KeyS")  # Dvorak: an "o", no shortcut
    time.sleep(1)
    assert text_of(browser, "item-title") == ITEMS[0].title
    press_on_layout(browser, "ы", "KeyS")  # Russian: the S key skips
    wait_for_title(browser, ITEMS[1].title)
    press_on_layout(browser, "é", "Digit2")  # AZERTY: the 2 key labels with the second tag
    wait_for_title(browser, ITEMS[2].title)
    assert [label.tag for label in active_labels(live_app.engine, second)] == [tags.names[1]]
    press_on_layout(browser, "г", "KeyU")  # Russian: the U key undoes
    wait_for_title(browser, ITEMS[1].title)
    press_on_layout(browser, "&", "Digit1")
    wait_until(browser, lambda d: text_of(d, "item-title") != ITEMS[1].title, "the next item")
    assert [label.tag for label in active_labels(live_app.engine, second)] == [tags.names[0]]
    assert browser_errors(browser) == []


@pytest.mark.browser
def test_a_near_duplicate_names_the_labelled_item_it_looks_like(
    live_app: LiveApp, browser: WebDriver
) -> None:
    """The worker flags a new item that reads like one already labelled: `duplicate_of` is that
    label's id (as GET /labels/export numbers it), not a task's. The page said "Looks like item
    #2, which was labelled mlops", next to "Task #9": item #2 was another item altogether
    (task 2), and the look-alike, task 7 here, was named nowhere. It shows the look-alike's
    title now."""
    engine = live_app.engine
    with Session(engine, expire_on_commit=False) as session:
        for i in range(6):  # task and label ids apart, as in any queue that has run a while
            session.add(
                _task(Item(f"Older item {i}", "", 0.1, ReviewReason.LOW_CONFIDENCE, {"other": 1.0}))
            )
        session.commit()
        look_alike = Item(
            "Kubeflow pipelines on GKE",
            "Deploying ML workflows.",
            0.0,
            ReviewReason.LOW_CONFIDENCE,
            {"mlops": 0.6, "other": 0.4},
        )
        done = _task(look_alike, open_key=None, status=ReviewStatus.LABELED)
        session.add(done)
        session.commit()
        label = labels_crud.append_label(
            session,
            text_hash=done.text_hash,
            title=done.title,
            description=done.description,
            tag="mlops",
            reviewer="bob",
            holdout_share=0.0,
            task_id=done.id,
        )
        session.commit()
        assert label.id != done.id
        near = Item(
            "Kubeflow pipelines on GKE!",
            "Deploying ML workflows.",
            2.0,
            ReviewReason.LOW_CONFIDENCE,
            {"mlops": 0.55, "other": 0.45},
        )
        session.add(_task(near, duplicate_of=label.id, duplicate_tag="mlops"))
        session.commit()

    claimed = httpx.post(
        f"{live_app.url}/review/claim", json={"reviewer": "bob"}, headers=auth("reviewer")
    ).json()
    assert (claimed["duplicate_of"], claimed["duplicate_title"]) == (label.id, look_alike.title)
    httpx.post(f"{live_app.url}/review/release", json={"reviewer": "bob"}, headers=auth("reviewer"))

    sign_in(browser, live_app.url, reviewer="ada", key=KEYS["reviewer"])
    wait_for_title(browser, near.title)
    hint = text_of(browser, "duplicate")
    assert hint == f"Looks like “{look_alike.title}”, which was labelled mlops."
    assert f"#{label.id}" not in hint
