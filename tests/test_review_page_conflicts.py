"""The review page when things go wrong: labels refused or raced, claims that fail, a tag retired
mid-item, and answers lost between server and browser (real Chromium, real app)."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.api.deps import get_tags
from service.api.main import create_app
from service.config import Settings
from service.crud.review_intake import SKIP_STEP
from service.db import init_db, make_engine
from service.entities import (
    ReviewStatus,
    ReviewTask,
)
from service.ml.training import TrainResult
from service.tags import TagSet
from tests.conftest import KEYS, LiveApp, auth, live_server, register_promoted
from tests.lossy_proxy import LossyProxy
from tests.review_page_driver import (
    ITEMS,
    REQUEST_TIMEOUT_S,
    WAIT_S,
    active_labels,
    all_labels,
    block_requests,
    browser_errors,
    fill_sign_in,
    leases,
    post,
    press,
    requests_to,
    seed_queue,
    settled_then_undone,
    sign_in,
    task_statuses,
    text_of,
    wait_for_title,
    wait_until,
)

# ---------- conflicts and failures ----------


def post_as_ada(app: LiveApp, path: str, body: dict[str, str]) -> httpx.Response:
    """A request from Ada's other tab: the same shared key, the same name."""
    return httpx.post(
        f"{app.url}{path}", json={"reviewer": "ada", **body}, headers=auth("reviewer"), timeout=30
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
