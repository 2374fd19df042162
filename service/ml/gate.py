"""The quality gate: a retrained candidate may replace production only if it is not worse.

Both models are evaluated on the same frozen evaluation set; the gate compares the two
reports (`service.ml.evaluation.evaluate_predictions` output) and records every check with
both values, so a refusal can be read and argued with.

A tag's precision may drop by `MAX_CLASS_PRECISION_DROP`, or by one of the candidate's answers
with the tag when that is more: on a young deployment's evaluation set a tag gets 10 to 20
answers, one answer moves its precision by 0.05 to 0.1, and a fixed 0.02 refused candidates
for a single item (loadtests/gate_noise.py measures both rules).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MAX_CLASS_PRECISION_DROP = 0.02
MAX_SLICE_F1_DROP = 0.05
EPSILON = 1e-9  # float noise is not a regression


@dataclass(frozen=True)
class Check:
    """One comparison: passed when `candidate >= limit`."""

    name: str
    candidate: float | None
    production: float | None
    limit: float | None
    passed: bool
    note: str = ""


def _at_least(name: str, cand: float | None, prod: float | None, limit: float, note: str) -> Check:
    passed = cand is not None and cand >= limit - EPSILON
    return Check(name, cand, prod, round(limit, 6), passed, note)


def _precision_slack(candidate: dict[str, Any], tag: str) -> tuple[float, str]:
    """How far the candidate's precision with `tag` may fall below production's, and why: one
    answer's worth when the candidate gives the tag fewer than 1 / MAX_CLASS_PRECISION_DROP
    times here (a hand-made report without a confusion matrix: the fixed drop)."""
    answers = answer_count(candidate, tag) if "confusion" in candidate else 0
    if answers and 1 / answers > MAX_CLASS_PRECISION_DROP:
        return 1 / answers, f"drop of at most one of its {answers} answers with the tag"
    return MAX_CLASS_PRECISION_DROP, f"drop of at most {MAX_CLASS_PRECISION_DROP}"


def _weighted_f1(candidate: dict[str, Any], production: dict[str, Any]) -> Check:
    prod = production["weighted_f1"]
    return _at_least("weighted_f1", candidate["weighted_f1"], prod, prod, "not lower")


def _known_tags(production: dict[str, Any]) -> set[str]:
    """The tags production can answer (a report from before `classes` was kept: all it lists)."""
    return set(production.get("classes", production["per_class"]))


def _new_tag_floor(production: dict[str, Any]) -> float | None:
    """The precision a tag new to production must reach: that of production's least precise
    tag (on items that carry it), less the allowed drop. None when nothing was measured."""
    known = _known_tags(production)
    measured = [
        figures["precision"]
        for tag, figures in production["per_class"].items()
        if tag in known and figures.get("support") and figures.get("precision") is not None
    ]
    return min(measured) - MAX_CLASS_PRECISION_DROP if measured else None


def answer_count(report: dict[str, Any], tag: str) -> int:
    """How often the model gave `tag` (its confusion-matrix column): a precision of 0.0 with
    none is sklearn's zero_division, not a measurement."""
    labels = report["confusion"]["labels"]
    return sum(row[labels.index(tag)] for row in report["confusion"]["matrix"])


def _unmeasured_in_production(
    tag: str, candidate: dict[str, Any], floor: float | None, why: str
) -> Check:
    """A tag production never answers on these items (newly approved, or one it does not
    say): production's precision for it is null (once sklearn's 0.0, a limit of -0.02 any
    candidate cleared), so the candidate's answers with it are held to `floor` instead."""
    cand = candidate["per_class"].get(tag, {}).get("precision")
    if cand is None or not answer_count(candidate, tag):
        note = f"{why} the candidate never answers it here: skipped"
        return Check(f"precision:{tag}", None, None, None, True, note)
    if floor is None:
        note = f"{why} production has no measured precision to compare: skipped"
        return Check(f"precision:{tag}", cand, None, None, True, note)
    note = f"{why} at least production's least precise tag, less {MAX_CLASS_PRECISION_DROP}"
    return _at_least(f"precision:{tag}", cand, None, floor, note)


def _class_precision(candidate: dict[str, Any], production: dict[str, Any]) -> list[Check]:
    known, floor = _known_tags(production), _new_tag_floor(production)
    checks = [
        _unmeasured_in_production(tag, candidate, floor, "new tag;")
        for tag in sorted(set(production["per_class"]) | set(candidate["per_class"]))
        if tag not in known
    ]
    for tag, prod in production["per_class"].items():
        if tag not in known:
            continue
        cand = candidate["per_class"].get(tag, {}).get("precision")
        if cand is None and prod.get("support") == 0:
            # Only production answers the tag and no item carries it (a retired tag, whose
            # labels training leaves out): every such answer is wrong, and the candidate,
            # which never gives it, cannot do worse. Failing here kept every retraining out.
            note = "the candidate never answers it and no item carries it: skipped"
            checks.append(Check(f"precision:{tag}", None, prod["precision"], None, True, note))
            continue
        if prod.get("precision") is None:
            if not prod.get("support"):
                # No item carries the tag and production never answers it: nothing to keep
                # up. (A candidate's answers with it are all wrong, and weigh on its F1.)
                note = "no item carries it and production never answers it: skipped"
                checks.append(Check(f"precision:{tag}", cand, None, None, True, note))
            else:
                why = "production never answers it;"
                checks.append(_unmeasured_in_production(tag, candidate, floor, why))
            continue
        if cand is None:
            # Items carry the tag and production says it, but the candidate never does: no
            # answer of its is wrong, yet every such item is missed. It fails unless
            # production's own answers with the tag were (nearly) all wrong too.
            limit = prod["precision"] - MAX_CLASS_PRECISION_DROP
            note = "the candidate never answers it, production does"
            checks.append(
                Check(
                    f"precision:{tag}",
                    None,
                    prod["precision"],
                    round(limit, 6),
                    limit <= EPSILON,
                    note,
                )
            )
            continue
        slack, note = _precision_slack(candidate, tag)
        checks.append(
            _at_least(f"precision:{tag}", cand, prod["precision"], prod["precision"] - slack, note)
        )
    return checks


def _slices(candidate: dict[str, Any], production: dict[str, Any]) -> list[Check]:
    checks = []
    for name, prod in production.get("slices", {}).items():
        cand = candidate.get("slices", {}).get(name, {}).get("f1")
        if prod.get("f1") is None:
            checks.append(Check(f"slice_f1:{name}", cand, None, None, True, "empty slice: skipped"))
            continue
        checks.append(
            _at_least(
                f"slice_f1:{name}",
                cand,
                prod["f1"],
                prod["f1"] - MAX_SLICE_F1_DROP,
                f"drop of at most {MAX_SLICE_F1_DROP}",
            )
        )
    return checks


def _auto_precision(
    candidate: dict[str, Any], production: dict[str, Any] | None, target: float
) -> Check:
    cand = candidate["auto"]["precision"]
    prod = production["auto"]["precision"] if production else None
    note = "accepts nothing automatically: fails" if cand is None else "target precision"
    return _at_least("auto_precision", cand, prod, target, note)


def apply_gate(
    candidate: dict[str, Any],
    production: dict[str, Any] | None,
    *,
    target_precision: float,
    production_refused: str | None = None,
) -> dict[str, Any]:
    """Compare two evaluation reports on the same data; `production=None` (no production
    model yet) leaves only the automatic-acceptance precision check. `production_refused`:
    why there is a production model but this runtime could not score it (its artifact
    refused at load): nothing shows the candidate is not worse, so it fails."""
    checks: list[Check] = []
    if production is not None:
        checks.append(_weighted_f1(candidate, production))
        checks += _class_precision(candidate, production)
        checks += _slices(candidate, production)
    checks.append(_auto_precision(candidate, production, target_precision))
    if production_refused is not None:
        checks.append(Check("production_scored", None, None, None, False, production_refused))
    return {
        "passed": all(c.passed for c in checks),
        "failed": [c.name for c in checks if not c.passed],
        "checks": [asdict(c) for c in checks],
    }
