"""The Prometheus set-up in deploy/prometheus: valid for Prometheus itself (promtool, which
`make test` unpacks from Debian's `prometheus` package when the machine has none), each alert
firing as its unit tests say, and every metric an alert reads actually served by the API."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import redis
import yaml
from fastapi.testclient import TestClient
from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry

from service.outbox import LABELING_QUEUE
from tests.conftest import ROOT, auth
from tests.test_metrics import scrape

PROMETHEUS = ROOT / "deploy" / "prometheus"
# Served once the production version has labelled audit items: tests/test_audit.py scrapes them.
AUDIT_ONLY = {"tagflow_audit_meets_target", "tagflow_audit_precision", "tagflow_audit_labelled"}


def promtool(*args: str) -> str:
    # The machine's, or the one `make test` put in the venv.
    tool = shutil.which("promtool", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert tool, "promtool not found: `make test` unpacks it from Debian's prometheus package"
    result = subprocess.run(
        [tool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_prometheus_accepts_the_config_and_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert "SUCCESS: 22 rules found" in promtool("check", "rules", "alerts.yml")


# Minute by minute, and the alerts over hours and days at 5 minutes (far fewer evaluations).
TEST_FILES = ("alerts_test.yml", "alerts_test_days.yml")


def test_every_alert_fires_as_its_unit_tests_say() -> None:
    tests = [
        test
        for name in TEST_FILES
        for test in yaml.safe_load((PROMETHEUS / name).read_text())["tests"]
    ]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert tested == set(alert_exprs()), "every alert has unit tests"
    assert promtool("test", "rules", *TEST_FILES).count("SUCCESS") == len(TEST_FILES)


def test_the_failed_jobs_alert_says_a_requeue_that_works(
    redis_conn: redis.Redis, test_redis_url: str
) -> None:
    """TagflowLabellingJobsFailed tells whoever it pages how to requeue the jobs. It said
    `rq requeue --all`, which rq refuses (`Missing option '--queue'`, exit 2) and would have
    sent to localhost's Redis, not the worker's. The command it renders (as its unit test
    has it), given the worker's Redis URL, puts a failed labelling job back on its queue."""
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    rendered = next(
        alert["exp_annotations"]["description"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["alertname"] == "TagflowLabellingJobsFailed"
        for alert in case["exp_alerts"]
    )
    command = re.search(r"rq requeue [^()]+? -u \$TAGFLOW_REDIS_URL", rendered)
    assert command, rendered
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    job = queue.enqueue("json.loads", "not JSON")  # fails: a JSONDecodeError
    SimpleWorker([queue], connection=redis_conn).work(burst=True)
    assert job.id in FailedJobRegistry(queue=queue)
    args = shlex.split(command.group(0).replace("$TAGFLOW_REDIS_URL", test_redis_url))
    rq = Path(sys.executable).parent / args[0]  # the venv's, as the image's PATH has it
    result = subprocess.run([rq, *args[1:]], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert job.id not in FailedJobRegistry(queue=queue) and job.id in queue.job_ids


def alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def test_every_metric_an_alert_reads_is_served(sqlite_client: TestClient) -> None:
    item = {"title": "YOLOv8 object detection", "description": "Real-time detection."}
    assert sqlite_client.post("/predict", json=item, headers=auth("client")).status_code == 200
    served = {name for name, _ in scrape(sqlite_client)}
    wanted = {m for expr in alert_exprs().values() for m in re.findall(r"tagflow_\w+", expr)}
    assert wanted - AUDIT_ONLY, "the rules read tagflow metrics"
    assert wanted - served - AUDIT_ONLY == set()
