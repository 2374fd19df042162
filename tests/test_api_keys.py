"""The key ring: keys in the key file are issued, rotated and revoked while the service runs,
and a file that stops parsing keeps the last good keys."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.api_keys import KeyRing, fingerprint, hash_key, new_key
from service.config import Caller, Role, Settings, parse_api_keys


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def ring(path: Path, clock: Clock, fixed: str = "admin:root") -> KeyRing:
    return KeyRing(parse_api_keys(fixed), path, check_every_s=1.0, clock=clock)


def test_file_keys_are_taken_with_the_fixed_ones(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "keys"
    path.write_text("# reviewers\nreviewer/ann:k-ann\n\nclient:k-app, client/search:k-s\n")
    keys = ring(path, clock)
    assert keys.lookup("root") == Caller(Role.ADMIN)
    assert keys.lookup("k-ann") == Caller(Role.REVIEWER, "ann")
    assert keys.lookup("k-app") == Caller(Role.CLIENT)
    assert keys.lookup("k-s") == Caller(Role.CLIENT, "search")
    assert keys.lookup("# reviewers") is None


def test_a_key_is_rotated_and_revoked_once_the_file_is_read_again(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "keys"
    path.write_text("reviewer/ann:old\nclient:app\n")
    keys = ring(path, clock)
    path.write_text("reviewer/ann:new\n")  # ann's key rotated, the client key revoked
    clock.now += 0.5
    assert keys.lookup("old") == Caller(Role.REVIEWER, "ann")  # not read again within a second
    clock.now += 0.5
    assert keys.lookup("old") is None
    assert keys.lookup("new") == Caller(Role.REVIEWER, "ann")
    assert keys.lookup("app") is None
    assert keys.lookup("root") == Caller(Role.ADMIN)  # the fixed keys are not the file's
    assert keys.reloads == 1


@pytest.mark.parametrize(
    "bad",
    ["reviewer ann new", "boss:new", "client:dup\nadmin:dup", "admin:root", b"\xff\xfe"],
    ids=["malformed", "unknown role", "listed twice", "a fixed key", "not UTF-8"],
)
def test_a_file_that_does_not_parse_keeps_the_last_good_keys(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture, bad: str | bytes
) -> None:
    path = tmp_path / "keys"
    path.write_text("reviewer/ann:k-ann\n")
    keys = ring(path, clock)
    if isinstance(bad, bytes):
        path.write_bytes(bad)
    else:
        path.write_text(bad)
    clock.now += 1
    with caplog.at_level(logging.ERROR, logger="service.api_keys"):
        assert keys.lookup("k-ann") == Caller(Role.REVIEWER, "ann")
        clock.now += 1
        keys.lookup("k-ann")  # the same bad content again: not logged twice
    assert len(caplog.records) == 1
    assert "last good keys stay" in caplog.records[0].getMessage()
    assert not keys.file_valid
    assert keys.rejections == 1
    assert keys.lookup("new") is None and keys.lookup("dup") is None
    path.write_text("reviewer/ann:k-ann2\n")  # fixed: taken at the next read
    clock.now += 1
    assert keys.lookup("k-ann2") == Caller(Role.REVIEWER, "ann")
    assert keys.lookup("k-ann") is None
    assert keys.file_valid


def test_a_missing_file_keeps_the_last_good_keys(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "keys"
    path.write_text("client:app\n")
    keys = ring(path, clock)
    path.unlink()
    clock.now += 1
    assert keys.lookup("app") == Caller(Role.CLIENT)
    assert not keys.file_valid


def test_an_empty_file_revokes_every_file_key(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "keys"
    path.write_text("client:app\n")
    keys = ring(path, clock, fixed="")
    path.write_text("# everyone revoked\n")
    clock.now += 1
    assert keys.lookup("app") is None
    assert keys.file_valid
    assert keys.callers() == []


def test_an_unchanged_file_is_not_parsed_again(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "keys"
    path.write_text("client:app\n")
    keys = ring(path, clock)
    for _ in range(5):
        clock.now += 1
        keys.lookup("app")
    assert keys.reloads == 0


def test_without_a_file_the_fixed_keys_are_all(clock: Clock) -> None:
    keys = KeyRing(parse_api_keys("client:app"), None, clock=clock)
    clock.now += 10
    assert keys.lookup("app") == Caller(Role.CLIENT)
    values = {(s.name, s.labels.get("role")): s.value for s in keys.samples()}
    assert values[("tagflow_api_keys", "client")] == 1
    assert values[("tagflow_api_keys_file_valid", None)] == 1


def test_samples_count_keys_by_role_and_the_file_state(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "keys"
    path.write_text("client:a,client:b,reviewer/ann:c\n")
    keys = ring(path, clock)
    path.write_text("nonsense")
    clock.now += 1
    keys.lookup("a")
    values = {
        (s.name, s.labels.get("role")): s.value
        for s in keys.samples()
        if s.name != "tagflow_api_key_last_used_timestamp_seconds"  # per key, tested below
    }
    assert values == {
        ("tagflow_api_keys", "client"): 2,
        ("tagflow_api_keys", "reviewer"): 1,
        ("tagflow_api_keys", "admin"): 1,
        ("tagflow_api_keys", "metrics"): 0,
        ("tagflow_api_keys_file_valid", None): 0,
        ("tagflow_api_keys_file_reloads", None): 0,
        ("tagflow_api_keys_file_rejections", None): 1,
    }


@pytest.mark.parametrize(
    ("raw", "shared"),
    [
        ("client:c,reviewer/ann:a,admin/root:r", False),
        ("client:c,reviewer/ann:a,reviewer:r", True),
        ("client:c,reviewer/ann:a,admin:r", True),  # admin keys may review too
        ("client:c,reviewer/ann:a,metrics:m", False),  # a metrics key cannot review
    ],
)
def test_shared_review_keys(tmp_path: Path, clock: Clock, raw: str, shared: bool) -> None:
    assert KeyRing(parse_api_keys(raw)).shared_review_keys() is shared
    # The same keys from the file count the same.
    path = tmp_path / "keys"
    path.write_text(raw.replace(",", "\n"))
    assert ring(path, clock, fixed="").shared_review_keys() is shared


def test_a_key_kept_by_its_hash_is_accepted_and_the_hash_is_not_a_key(
    tmp_path: Path, clock: Clock
) -> None:
    key, line = new_key(Role.REVIEWER, "ann")
    assert line == f"reviewer/ann:{hash_key(key)}" and key not in line
    path = tmp_path / "keys"
    path.write_text(f"{line}\nclient:plain-key\n")
    keys = ring(path, clock, fixed=f"admin:{hash_key('root-key')}")
    assert keys.lookup(key) == Caller(Role.REVIEWER, "ann")
    assert keys.lookup("root-key") == Caller(Role.ADMIN)
    assert keys.lookup("plain-key") == Caller(Role.CLIENT)
    # Whoever reads the file (or the environment) learns hashes, and a hash opens nothing.
    assert keys.lookup(hash_key(key)) is None
    assert keys.lookup(hash_key("root-key")) is None
    assert keys.lookup(hash_key(key).removeprefix("sha256:")) is None
    assert sorted(c.role for c in keys.callers()) == sorted(
        [Role.CLIENT, Role.REVIEWER, Role.ADMIN]
    )
    # Nor does a hash in capitals: it is the same hash, never a plain key.
    path.write_text(f"client:{hash_key('upper').upper()}\n")
    clock.now += 2
    keys.refresh()
    assert keys.lookup("upper") == Caller(Role.CLIENT)
    assert keys.lookup(hash_key("upper").upper()) is None


def test_each_key_shows_when_it_last_opened_a_request(tmp_path: Path, clock: Clock) -> None:
    """By a fingerprint an admin can match to the key file's line, kept across a reload."""
    ann, ann_line = new_key(Role.REVIEWER, "ann")
    path = tmp_path / "keys"
    path.write_text(f"{ann_line}\nclient:plain-key\n")
    wall = Clock()
    keys = KeyRing(parse_api_keys("admin:root"), path, clock=clock, wall_clock=wall)

    def last_used() -> dict[tuple[str, str, str], float]:
        return {
            (s.labels["key"], s.labels["role"], s.labels["name"]): s.value
            for s in keys.samples()
            if s.name == "tagflow_api_key_last_used_timestamp_seconds"
        }

    ann_fp = ann_line.split("sha256:")[1][:12]
    plain_fp = hashlib.sha256(b"plain-key").hexdigest()[:12]
    root_fp = fingerprint("root")
    assert fingerprint(ann) == fingerprint(hash_key(ann)) == ann_fp
    assert last_used() == {
        (ann_fp, "reviewer", "ann"): 0.0,
        (plain_fp, "client", ""): 0.0,
        (root_fp, "admin", ""): 0.0,
    }
    wall.now = 1_800_000_000.0
    keys.lookup(ann)
    wall.now += 60
    keys.lookup("plain-key")
    assert keys.lookup("unknown") is None and keys.lookup(hash_key(ann)) is None
    assert last_used() == {
        (ann_fp, "reviewer", "ann"): 1_800_000_000.0,
        (plain_fp, "client", ""): 1_800_000_060.0,
        (root_fp, "admin", ""): 0.0,
    }
    # The plain key is revoked and ann's kept: her time survives the reload, his key is gone.
    path.write_text(f"{ann_line}\n")
    clock.now += 1
    keys.lookup("root")
    assert last_used() == {
        (ann_fp, "reviewer", "ann"): 1_800_000_000.0,
        (root_fp, "admin", ""): 1_800_000_060.0,
    }


def test_the_ring_starts_from_the_file_as_the_settings_checked_it(tmp_path: Path) -> None:
    """A key file broken between the settings' check and the API's start does not stop the
    start with a traceback: the ring serves the checked keys, and its refresh refuses the
    edit as it refuses any later one."""
    path = tmp_path / "keys"
    path.write_text("client:app\n")
    settings = Settings(_env_file=None, api_keys_file=path)  # type: ignore[call-arg]
    path.write_text("client:app\nclient:app\n")  # a key listed twice: refused
    keys = KeyRing.from_settings(settings)
    assert keys.lookup("app") == Caller(Role.CLIENT)
    assert keys.file_valid and keys.rejections == 0
    keys.refresh()
    assert not keys.file_valid and keys.rejections == 1
    assert keys.lookup("app") == Caller(Role.CLIENT)  # the checked keys stay


SHORT_KEYS = "admin:Tagflow2026!,reviewer/ann:ann-secret,client:" + "c" * 19
LONG_KEYS = ",".join(f"{role}:{role}-{'x' * 20}" for role in ("admin", "client"))


@pytest.mark.parametrize(
    ("keys", "warning"),
    [
        (
            SHORT_KEYS,
            "3 API key(s) of under 20 characters "
            "(reviewer key ann, shared admin key, shared client key)",
        ),
        (LONG_KEYS, None),
    ],
    ids=["short", "long"],
)
def test_keys_short_enough_to_guess_are_warned_about_at_start(
    make_settings,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
    keys: str,
    warning: str | None,
) -> None:
    """A client key reads every key's fingerprint in /metrics: a short admin key can then be
    guessed offline. The API says so at start, naming holders, never keys."""
    with (
        caplog.at_level(logging.WARNING, logger="service.api.main"),
        TestClient(create_app(make_settings(api_keys=keys))),
    ):
        pass
    said = [r.getMessage() for r in caplog.records if "short enough to guess" in r.getMessage()]
    if warning is None:
        assert said == []
    else:
        assert len(said) == 1 and said[0].startswith(warning)
        assert "Tagflow2026!" not in said[0] and "ann-secret" not in said[0]
