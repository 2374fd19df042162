"""The review page across tabs and time: a tab closed with a label pending, one reviewer in two
tabs, lease renewal and its countdown, touch screens and keyboard layouts (real Chromium)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.config import Settings
from service.crud import labels as labels_crud
from service.entities import (
    ReviewReason,
    ReviewStatus,
    ReviewTask,
)
from service.ml.training import TrainResult
from service.tags import TagSet
from tests.conftest import KEYS, LiveApp, auth, serve_live
from tests.lossy_proxy import LossyProxy
from tests.review_page_driver import (
    ITEMS,
    WAIT_S,
    Item,
    active_labels,
    all_labels,
    block_requests,
    browser_errors,
    fill_sign_in,
    leases,
    make_task,
    press,
    requests_to,
    seed_queue,
    sign_in,
    task_statuses,
    text_of,
    wait_for_title,
    wait_until,
)

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
                make_task(
                    Item(f"Older item {i}", "", 0.1, ReviewReason.LOW_CONFIDENCE, {"other": 1.0})
                )
            )
        session.commit()
        look_alike = Item(
            "Kubeflow pipelines on GKE",
            "Deploying ML workflows.",
            0.0,
            ReviewReason.LOW_CONFIDENCE,
            {"mlops": 0.6, "other": 0.4},
        )
        done = make_task(look_alike, open_key=None, status=ReviewStatus.LABELED)
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
        session.add(make_task(near, duplicate_of=label.id, duplicate_tag="mlops"))
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
