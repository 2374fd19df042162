"""The API keys a running service accepts, with the key file re-read while it runs.

Keys in TAGFLOW_API_KEYS hold for the life of the process. Keys in TAGFLOW_API_KEYS_FILE can
be issued, rotated and revoked without a restart: the file is read again at most once a second,
on the next request that shows a key. A file that no longer reads or parses locks no one out
and lets no one new in: the last good set stays in force, the error is logged once per change
of the file, and /metrics shows it (`tagflow_api_keys_file_valid` 0, alert rule
`TagflowApiKeyFileRefused`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from service.config import Caller, Role, Settings, parse_key_file, read_key_file_content
from service.metrics import Sample

log = logging.getLogger(__name__)

CHECK_EVERY_S = 1.0
HASHED = re.compile(r"sha256:([0-9a-f]{64})")
FINGERPRINT_HEX = 12  # of the key's SHA-256: names a key in /metrics without giving it away
# Shorter plain keys are warned about at start: /metrics shows every key's fingerprint to its
# scraper (a `metrics` or admin key), and 48 bits of a SHA-256 confirm a guess offline, with
# no request to count or refuse it. `tagflow keys new` makes 32 random characters after the
# role.
MIN_KEY_CHARS = 20
# The roles whose keys act in the review queue, so a personal one acts as its holder there.
REVIEWING = frozenset({Role.REVIEWER, Role.ADMIN})


def hash_key(key: str) -> str:
    """The entry form of `key`'s SHA-256: `sha256:<64 hex>`."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key(role: Role, name: str | None = None) -> tuple[str, str]:
    """A fresh random key, and the key-file line that accepts it by its hash only."""
    key = f"{role.value}-{secrets.token_urlsafe(24)}"
    holder = f"{role.value}/{name}" if name else role.value
    return key, f"{holder}:{hash_key(key)}"


# Cyrillic and Greek letters drawn as Latin ones, each to the Latin letter it shows: "рiа"
# (Cyrillic р and а) reads as "pia". Cases apart, as a capital and its small letter can look
# like different Latin letters (Greek Ν is N, ν is v).
LOOK_ALIKES = str.maketrans(
    dict(
        zip(
            "асеһіјӏорԛѕԝхуԁАВСЕНІЈКМОРЅТХУҮαιονρυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
            "acehijlopqswxydABCEHIJKMOPSTXYYaiovpuxABEZHIKMNOPTYX",
            strict=True,
        )
    )
)


def name_key(name: str) -> str:
    """What a person reads in a name: compatibility forms folded (fullwidth "ｐｉａ" is "pia"),
    invisible format characters (a zero-width space) dropped, Cyrillic and Greek look-alikes
    read as the Latin letters they show, case folded."""
    folded = unicodedata.normalize("NFKC", name)
    visible = "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")
    return visible.translate(LOOK_ALIKES).casefold().strip()


def fingerprint(key: str) -> str:
    """How /metrics names a key: the start of its SHA-256 (of a hashed entry: the start of the
    hash it holds), `printf %s KEY | sha256sum | cut -c1-12`."""
    if match := HASHED.fullmatch(key):
        return match.group(1)[:FINGERPRINT_HEX]
    return hashlib.sha256(key.encode()).hexdigest()[:FINGERPRINT_HEX]


def _split(keys: dict[str, Caller]) -> tuple[dict[str, Caller], dict[str, Caller]]:
    """Plain keys, and hashed ones by their hex digest."""
    plain: dict[str, Caller] = {}
    hashed: dict[str, Caller] = {}
    for key, caller in keys.items():
        if match := HASHED.fullmatch(key):
            hashed[match.group(1)] = caller
        else:
            plain[key] = caller
    return plain, hashed


class KeyRing:
    """Who holds each accepted key. `lookup` is the request path; `refresh` reads the file."""

    def __init__(
        self,
        fixed: dict[str, Caller],
        path: Path | None = None,
        *,
        content: bytes | None = None,
        check_every_s: float = CHECK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._fixed = fixed
        self._path = path
        self._check_every_s = check_every_s
        self._clock = clock
        self._wall_clock = wall_clock
        # When each key (by fingerprint) last came with a request to this process: a key unused
        # for months is one to revoke. Kept across reloads: editing one line resets no other key.
        self._last_used: dict[str, float] = {}
        self._next_check = clock() + check_every_s
        self._seen: bytes | None = None  # the file's content at the last read (None: unreadable)
        self.file_valid = True
        self.reloads = 0  # the file read again after a change, and taken
        self.rejections = 0  # ... and refused (the last good keys kept)
        loaded: dict[str, Caller] = {}
        if path is not None:
            # `content`: the file as Settings read and checked it, so a file edited since is
            # judged by `refresh` like any later edit. Read here only when not given; at start
            # a bad file is an error (Settings refuses one with a message first).
            self._seen = path.read_bytes() if content is None else content
            loaded = parse_key_file(self._seen, path=path, fixed=fixed)
        self._take({**fixed, **loaded})

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings.keys, settings.api_keys_file, content=settings.key_file_content)

    def lookup(self, key: str) -> Caller | None:
        """Who holds `key`, or None for a key no one holds."""
        if self._path is not None and self._clock() >= self._next_check:
            # A read of a small local file, at most once a second: cheaper than handing the
            # check to a thread, so it stays on the event loop.
            self.refresh()
        caller = self._plain.get(key)
        digest = None
        if caller is None and self._hashed:
            digest = hashlib.sha256(key.encode()).hexdigest()
            caller = self._hashed.get(digest)
        if caller is not None:
            used = digest[:FINGERPRINT_HEX] if digest else self._fingerprints[key]
            self._last_used[used] = self._wall_clock()
        return caller

    def _take(self, keys: dict[str, Caller]) -> None:
        self._plain, self._hashed = _split(keys)
        self._keys = keys
        self._fingerprints = {key: fingerprint(key) for key in keys}

    def refresh(self) -> None:
        """Read the key file now; take its keys if it changed and parses."""
        if self._path is None:
            return
        self._next_check = self._clock() + self._check_every_s
        unreadable: ValueError | None = None
        try:
            content: bytes | None = read_key_file_content(self._path)  # one read a change
        except ValueError as exc:
            content, unreadable = None, exc
        if content == self._seen:
            return
        self._seen = content
        if content is None:
            assert unreadable is not None  # content is None only when reading failed
            self._refuse(unreadable)
            return
        try:
            loaded = parse_key_file(content, path=self._path, fixed=self._fixed)
        except ValueError as exc:
            self._refuse(exc)
            return
        self._take({**self._fixed, **loaded})
        self.file_valid = True
        self.reloads += 1
        roles = Counter(c.role.value for c in loaded.values())
        log.info("API key file %s read again: %d keys %s", self._path, len(loaded), dict(roles))
        if not self._keys:
            log.warning("no API keys left: every request that needs one gets 401")

    def _refuse(self, problem: ValueError) -> None:
        """A key file that cannot be read or parsed: counted, logged, the keys kept."""
        self.file_valid = False
        self.rejections += 1
        log.error("API key file refused, the last good keys stay in force: %s", problem)

    def callers(self) -> list[Caller]:
        """Every key's holder (one entry per key)."""
        return list(self._keys.values())

    def personal_reviewers(self) -> set[str]:
        """The names (as `name_key` makes them) of the personal keys that may review: only
        they act as them."""
        return {name_key(c.name) for c in self._keys.values() if c.name and c.role in REVIEWING}

    def guessable(self) -> list[Caller]:
        """The holders of plain keys under `MIN_KEY_CHARS` (a hashed entry's length is not
        known; `tagflow keys new` makes those)."""
        return [caller for key, caller in self._plain.items() if len(key) < MIN_KEY_CHARS]

    def shared_review_keys(self) -> bool:
        """Whether some key that may review is shared by its role (names are then declared)."""
        return any(c.name is None and c.role in REVIEWING for c in self._keys.values())

    def samples(self) -> Iterator[Sample]:
        """What /metrics shows: keys by role, when each key was last used, and whether the key
        file's last read was taken."""
        by_role = Counter(c.role.value for c in self._keys.values())
        for role in Role:
            yield Sample(
                "tagflow_api_keys",
                "API keys accepted, by role",
                by_role[role.value],
                {"role": role.value},
            )
        for key, caller in self._keys.items():
            used = self._fingerprints[key]
            yield Sample(
                "tagflow_api_key_last_used_timestamp_seconds",
                "When the key last came with a request to this process (0: not since it started)",
                self._last_used.get(used, 0.0),
                {"key": used, "role": caller.role.value, "name": caller.name or ""},
            )
        # Served with no file too (always 1 then), so the alert rule's metric always exists.
        yield Sample(
            "tagflow_api_keys_file_valid",
            "0 if the API key file's last change was refused (the old keys kept), else 1",
            int(self.file_valid),
            {},
        )
        yield Sample(
            "tagflow_api_keys_file_reloads",
            "Changes of the API key file taken",
            self.reloads,
            {},
            True,
        )
        yield Sample(
            "tagflow_api_keys_file_rejections",
            "Changes of the API key file refused",
            self.rejections,
            {},
            True,
        )
