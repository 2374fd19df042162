"""The runtime that made a model version, and whether the one running now can load it.

A version's artifact is a pickle of scikit-learn estimators (`classifier.TagModel`), and a
pickle is only as good as the release that reads it: scikit-learn does not promise that an
estimator pickled by one release behaves the same, or loads at all, under another (each
estimator keeps `_sklearn_version` in its pickled state, and unpickling it under another
release warns with `InconsistentVersionWarning`); a class that moved between releases of
numpy or scikit-learn fails to unpickle. Every version records the runtime that made it
(`params.runtime`), and `load_artifact` turns what scikit-learn and the unpickler say into a
refusal that names both runtimes and what to do.

A difference of scikit-learn's major or minor release is refused; one of its patch release
alone (1.9.0 against 1.9.1) loads, with a warning: patch releases fix bugs without changing
what estimators keep, and tagflow serves from the fitted arrays themselves (`fastpath`).
"""

from __future__ import annotations

import functools
import logging
import pickle
import platform
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import joblib

from service.entities.model_version import RUNTIME, RUNTIME_PARTS, UNKNOWN
from service.errors import ArtifactError

log = logging.getLogger(__name__)

SKLEARN = "scikit-learn"
# `warnings.catch_warnings` swaps the process's warning filters and hooks: two loads at once
# (the watch loop's swap beside a promotion's check) would restore each other's, and a
# refusal's warning could reach the other's record, or none. Loads are rare: one at a time.
_LOADING = threading.Lock()
# What unpickling a verified artifact raises when this runtime cannot rebuild what it holds:
# a class moved or renamed (AttributeError, ModuleNotFoundError), an extension module that is
# not there (ImportError), a state its class no longer takes (TypeError, ValueError).
UNPICKLING_ERRORS = (AttributeError, ImportError, TypeError, ValueError, pickle.UnpicklingError)


@functools.cache
def current_runtime() -> dict[str, str]:
    """The runtime of this process, as a version records it: tagflow, Python, and the
    libraries a model is pickled and scored with."""
    return {part: _installed(part) for part in RUNTIME_PARTS}


def _installed(part: str) -> str:
    if part == "python":
        return platform.python_version()
    try:
        return package_version(part)
    except PackageNotFoundError:
        return UNKNOWN


def made_with(params: Mapping[str, Any]) -> dict[str, str] | None:
    """The runtime a version's params record; None for a version registered before tagflow
    recorded it (or one whose record says nothing known)."""
    record = params.get(RUNTIME)
    if not isinstance(record, dict):
        return None
    known = {str(k): str(v) for k, v in record.items() if v != UNKNOWN}
    return known or None


def describe(record: Mapping[str, str] | None) -> str:
    """A runtime as one line: "tagflow 0.1.0, python 3.11.7, scikit-learn 1.9.1, ..."."""
    if not record:
        return "an unknown runtime (registered before tagflow recorded it)"
    return ", ".join(f"{part} {record.get(part, UNKNOWN)}" for part in RUNTIME_PARTS)


@dataclass
class Loaded:
    """An unpickled artifact, and what its load warned of that did not refuse it."""

    obj: Any
    notes: list[str] = field(default_factory=list)


def load_artifact(path: Path, *, version: str, recorded: Mapping[str, str] | None) -> Loaded:
    """Unpickle `path`, `version`'s verified artifact; ArtifactError when this runtime cannot
    be trusted with it: another major or minor release of scikit-learn pickled it (by
    scikit-learn's own warning, so a version with no record is judged too), or unpickling
    fails. A patch-level difference loads, and is a note."""
    with _LOADING, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # in this block only: each warning is seen, not once
        try:
            obj = joblib.load(path)
        except UNPICKLING_ERRORS as exc:
            raise ArtifactError(
                _refusal(version, recorded, f"it does not unpickle ({type(exc).__name__}: {exc})")
            ) from None
    differences = _sklearn_differences(caught)
    refused = {old for old in differences if not _same_minor(old, _sklearn())}
    if refused:
        estimators = ", ".join(sorted({n for old in refused for n in differences[old]}))
        raise ArtifactError(
            _refusal(
                version,
                recorded,
                f"scikit-learn {', '.join(sorted(refused))} pickled its {estimators}",
                pin=sorted(refused)[0],
            )
        )
    notes = [
        f"{version} was pickled by scikit-learn {old} and this runtime has {_sklearn()}: "
        "a patch-level difference, loaded"
        for old in sorted(differences)
    ]
    return Loaded(obj, notes)


def _sklearn_differences(caught: list[warnings.WarningMessage]) -> dict[str, set[str]]:
    """The scikit-learn releases scikit-learn says pickled the estimators loaded, other than
    its own, with the estimators each pickled; other warnings are passed on as they came."""
    from sklearn.exceptions import InconsistentVersionWarning

    found: dict[str, set[str]] = {}
    for caught_warning in caught:
        message = caught_warning.message
        if isinstance(message, InconsistentVersionWarning):
            found.setdefault(message.original_sklearn_version, set()).add(message.estimator_name)
        else:
            warnings.warn_explicit(
                message, caught_warning.category, caught_warning.filename, caught_warning.lineno
            )
    return found


def same_sklearn_release(record: Mapping[str, str] | None) -> bool:
    """Whether a version made with `record` was made by this major and minor release of
    scikit-learn (one this runtime loads); a version with no record is taken as one."""
    made = (record or {}).get(SKLEARN)
    return made is None or _same_minor(made, _sklearn())


def _sklearn() -> str:
    return current_runtime()[SKLEARN]


def _same_minor(a: str, b: str) -> bool:
    """Whether two releases share major and minor ("1.9.0", "1.9.1"); "pre-0.18" (an
    estimator pickled before scikit-learn kept its release) shares nothing."""
    return a.split(".")[:2] == b.split(".")[:2] and len(a.split(".")) >= 2


def _refusal(
    version: str, recorded: Mapping[str, str] | None, why: str, *, pin: str | None = None
) -> str:
    pinned = f" (pin scikit-learn=={pin})" if pin else ""
    advice = f"train it again under this runtime, or serve it with the release that made it{pinned}"
    return (
        f"{version} cannot be loaded by this runtime: {why}. It was made with "
        f"{describe(recorded)}; this runtime is {describe(current_runtime())}: refused; {advice}"
    )
