"""The issue's performance goals, and the comparisons the benchmark report derives from its runs.

Goals are judged on the `fresh` workload (every text new, so the embedding cache cannot help):
that is the honest figure; `repeat` is reported next to it.
"""

from __future__ import annotations

from typing import Any

# The naive reference as measured when the issue was written (client-side, this machine type).
ISSUE_NAIVE = {"c8_rps": 33.5, "c8_p99_ms": 472.0, "c1_p50_ms": 34.0}
SPEEDUP_TARGET = 5.0
C8_P99_MS = 50.0
C1_P50_MS = 10.0
RSS_MB = 600.0
READY_S = 10.0
TRAIN_S = 30.0


def _stat(run: dict[str, Any] | None, workload: str, c: int, key: str) -> float | None:
    if not run:
        return None
    value = run["results"][workload][f"c{c}"][key]
    return None if value != value else value  # NaN (no successful request) -> None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _goal(name: str, target: str, value: float | None, ok: bool | None) -> dict[str, Any]:
    return {"goal": name, "target": target, "value": value, "pass": ok}


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def ratios(report: dict[str, Any]) -> dict[str, float | None]:
    """tagflow / naive (throughput: higher is better; latency: lower is better)."""
    tf, naive = report["tagflow"], report.get("naive")
    out: dict[str, float | None] = {}
    for workload in ("fresh", "repeat"):
        out[f"{workload}_c8_rps_x_naive"] = _ratio(
            _stat(tf, workload, 8, "rps"), _stat(naive, workload, 8, "rps")
        )
        out[f"{workload}_c8_p99_over_naive"] = _ratio(
            _stat(tf, workload, 8, "p99_ms"), _stat(naive, workload, 8, "p99_ms")
        )
        out[f"{workload}_c1_p50_over_naive"] = _ratio(
            _stat(tf, workload, 1, "p50_ms"), _stat(naive, workload, 1, "p50_ms")
        )
    out["fresh_c8_rps_x_issue_naive"] = _ratio(_stat(tf, "fresh", 8, "rps"), ISSUE_NAIVE["c8_rps"])
    out["naive_c8_rps_over_issue_naive"] = _ratio(
        _stat(naive, "fresh", 8, "rps"), ISSUE_NAIVE["c8_rps"]
    )
    return out


def lever_effects(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """The headline figures of the default configuration and of each one-lever change."""
    runs = {"default": report["tagflow"], **report.get("levers", {})}
    return {
        name: {
            "fresh_c8_rps": _stat(run, "fresh", 8, "rps"),
            "fresh_c8_p99_ms": _stat(run, "fresh", 8, "p99_ms"),
            "fresh_c1_p50_ms": _stat(run, "fresh", 1, "p50_ms"),
            "repeat_c8_rps": _stat(run, "repeat", 8, "rps"),
            "repeat_c8_p99_ms": _stat(run, "repeat", 8, "p99_ms"),
            "repeat_c1_p50_ms": _stat(run, "repeat", 1, "p50_ms"),
            "peak_rss_mb": run["memory"]["peak_rss_mb"],
            "ready_s": run["ready_s"],
        }
        for name, run in runs.items()
    }


def training_effects(report: dict[str, Any]) -> dict[str, float]:
    """Wall time of `tagflow train` by default and with each training lever."""
    levers = report.get("training_levers", {})
    return {"default": report["training"]["wall_s"]} | {n: r["wall_s"] for n, r in levers.items()}


def judge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue with the measured value and pass / fail (None: not measured)."""
    tf, naive = report["tagflow"], report.get("naive")
    speedup = _ratio(_stat(tf, "fresh", 8, "rps"), _stat(naive, "fresh", 8, "rps"))
    p99 = _stat(tf, "fresh", 8, "p99_ms")
    p50 = _stat(tf, "fresh", 1, "p50_ms")
    errors = sum(r["errors"] for w in tf["results"].values() for r in w.values())
    return [
        _goal(
            "throughput at concurrency 8 (fresh) vs naive, same run",
            f">= {SPEEDUP_TARGET}x",
            speedup,
            None if speedup is None else speedup >= SPEEDUP_TARGET,
        ),
        _goal(
            "p99 latency at concurrency 8 (fresh), ms",
            f"<= {C8_P99_MS}",
            p99,
            _at_most(p99, C8_P99_MS),
        ),
        _goal(
            "p50 latency at concurrency 1 (fresh), ms",
            f"<= {C1_P50_MS}",
            p50,
            _at_most(p50, C1_P50_MS),
        ),
        _goal(
            "API process peak RSS (VmHWM) after the load, MB",
            f"<= {RSS_MB}",
            tf["memory"]["peak_rss_mb"],
            _at_most(tf["memory"]["peak_rss_mb"], RSS_MB),
        ),
        _goal(
            "ready after start (trained model on disk), s",
            f"<= {READY_S}",
            tf["ready_s"],
            _at_most(tf["ready_s"], READY_S),
        ),
        _goal(
            "training on the shared dataset, wall clock of `tagflow train`, s",
            f"<= {TRAIN_S}",
            report["training"]["wall_s"],
            _at_most(report["training"]["wall_s"], TRAIN_S),
        ),
        _goal("no failed request in the default configuration", "0", errors, errors == 0),
    ]
