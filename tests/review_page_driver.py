"""Drives the review page in the browser tests: the items a test queues, and helpers that read
the page and the database (the fixtures, `live_app`, `browser` and `proxy`, are in conftest)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.entities import (
    Feedback,
    FeedbackStatus,
    Label,
    ReviewReason,
    ReviewStatus,
    ReviewTask,
)
from service.ml.dataset import text_hash
from service.tags import TagSet
from tests.conftest import LiveApp, auth

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


def make_task(item: Item, **fields: object) -> ReviewTask:
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
        done = make_task(twin, open_key=None, status=ReviewStatus.LABELED)
        session.add(done)
        session.commit()
        tasks = [make_task(ITEMS[0], duplicate_of=done.id, duplicate_tag="computer-vision")]
        tasks += [make_task(item) for item in ITEMS[1:]]
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


def requests_to(driver: WebDriver, path: str) -> int:
    """How many requests the page has made to `path` (fetches are resource timing entries)."""
    return driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter((e) => new URL(e.name).pathname === arguments[0]).length",
        path,
    )


def post(app: LiveApp, path: str, body: dict[str, str]) -> httpx.Response:
    """A request with the shared reviewer key."""
    return httpx.post(f"{app.url}{path}", json=body, headers=auth("reviewer"), timeout=30)


def block_requests(driver: WebDriver, *paths: str) -> None:
    """Make the browser's requests to `paths` fail as a dropped connection does (none: let
    every request through again)."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": [f"*{path}" for path in paths]})


def leases(engine: Engine) -> list[tuple[int, str]]:
    """(task id, reviewer) of every leased task."""
    with Session(engine) as session:
        leased = session.exec(select(ReviewTask).where(ReviewTask.status == ReviewStatus.LEASED))
        return [(task.id, task.leased_by) for task in leased]  # type: ignore[misc]


def all_labels(engine: Engine, task_id: int) -> list[Label]:
    """Every label of a task, superseded ones too, oldest first."""
    with Session(engine) as session:
        return list(session.exec(select(Label).where(Label.task_id == task_id).order_by(Label.id)))
