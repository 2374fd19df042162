"""Locust load test for a running tagflow API: mostly POST /predict, some /predict/batch.

    TAGFLOW_KEY=client-... locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 8 -r 8 -t 60s

Environment:
  TAGFLOW_KEY             a key of role `client` (required)
  TAGFLOW_BENCH_DATASET   CSV / JSON Lines with title, description
                          (default ../shared/data/madewithml/dataset.csv)
  TAGFLOW_BENCH_FRESH     share of requests made unique so the embedding cache cannot help
                          (0..1, default 0.5)
  TAGFLOW_BENCH_BATCH     items per /predict/batch request (default 16)
"""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

from locust import HttpUser, between, events, task

from service.config import DEFAULT_TAGS_FILE
from service.ml.dataset import load_dataset
from service.tags import load_tags

DATASET = Path(os.environ.get("TAGFLOW_BENCH_DATASET", "../shared/data/madewithml/dataset.csv"))
FRESH_SHARE = float(os.environ.get("TAGFLOW_BENCH_FRESH", "0.5"))
BATCH_ITEMS = int(os.environ.get("TAGFLOW_BENCH_BATCH", "16"))
ITEMS: list[dict[str, str]] = []
_unique = itertools.count()


@events.init.add_listener
def load_items(environment, **_kwargs) -> None:  # type: ignore[no-untyped-def]
    """Read the dataset once per locust process, before any user starts."""
    if not os.environ.get("TAGFLOW_KEY"):
        raise SystemExit("set TAGFLOW_KEY to a client API key")
    examples, _ = load_dataset(DATASET, tags=load_tags(DEFAULT_TAGS_FILE))
    ITEMS.extend({"title": e.title, "description": e.description} for e in examples)


def next_item() -> dict[str, str]:
    """A dataset item, made unique (never seen by the server) with probability FRESH_SHARE."""
    item = random.choice(ITEMS)
    if random.random() < FRESH_SHARE:
        return {**item, "description": f"{item['description']} (locust {next(_unique)})"}
    return item


class TagflowClient(HttpUser):
    """An upstream service tagging items one at a time, with an occasional bulk import."""

    wait_time = between(0.0, 0.01)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {os.environ['TAGFLOW_KEY']}"

    @task(20)
    def predict(self) -> None:
        with self.client.post("/predict", json=next_item(), catch_response=True) as response:
            if response.status_code == 200 and response.json().get("tag"):
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")

    @task(1)
    def predict_batch(self) -> None:
        items = [next_item() for _ in range(BATCH_ITEMS)]
        with self.client.post(
            "/predict/batch", json={"items": items}, catch_response=True
        ) as response:
            results = response.json().get("results", []) if response.status_code == 200 else []
            if len(results) == len(items):
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
