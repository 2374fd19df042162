"""Logging (service/logs.py): one handler, text or JSON lines, and the service's own INFO lines
visible under `tagflow serve` (uvicorn no longer configures logging on its own)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.db import init_db, make_engine
from service.logs import RequestRefusals, configure_logging
from service.ml.training import TrainResult
from tests.conftest import KEYS, ROOT, register_promoted


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, given back as it was (pytest's own capture lives there)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_level_logger_message_and_traceback(
    make_settings: Callable[..., Settings],
    root_logger: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(make_settings(log_format="json", log_level="INFO"))
    log = logging.getLogger("service.test")
    log.debug("not at INFO")
    log.info("swapped in %s", "v0002")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("job failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["level"], e["logger"], e["message"]) for e in lines] == [
        ("INFO", "service.test", "swapped in v0002"),
        ("ERROR", "service.test", "job failed"),
    ]
    assert lines[0]["time"].endswith("+00:00") and "exception" not in lines[0]
    assert "RuntimeError: boom" in lines[1]["exception"]


def test_text_lines_by_default(
    make_settings: Callable[..., Settings],
    root_logger: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(make_settings())
    logging.getLogger("service.test").warning("outbox waiting")
    assert capsys.readouterr().err.rstrip().endswith(" WARNING service.test outbox waiting")


def test_text_in_a_message_cannot_forge_a_record(
    make_settings: Callable[..., Settings],
    root_logger: logging.Logger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A prediction id from a request path (%0A decodes to a line break) is logged as it came
    when the prediction log cannot be flushed: it must stay on its record's line."""
    configure_logging(make_settings())
    forged = "x\n2026-12-05 08:00:00,000 ERROR service.api admin key leaked\r\x1b[2Kz\u2028"
    try:
        raise RuntimeError("database down")
    except RuntimeError:
        logging.getLogger("service.test").exception("flush failed looking up %s", forged)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith(
        " ERROR service.test flush failed looking up "
        "x\\n2026-12-05 08:00:00,000 ERROR service.api admin key leaked\\r\\x1b[2Kz\\u2028"
    )
    assert lines[1] == "Traceback (most recent call last):"  # the traceback keeps its lines
    assert lines[-1] == "RuntimeError: database down"


def test_serve_logs_the_service_and_uvicorn_as_json(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    seed_result: TrainResult,
) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'serve.db'}")
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    version = register_promoted(engine, settings, seed_result)
    engine.dispose()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "TAGFLOW_API_KEYS": f"client:{KEYS['client']}",
        "TAGFLOW_DATABASE_URL": settings.resolved_database_url,
        "TAGFLOW_DATA_DIR": str(settings.data_dir),
        "TAGFLOW_ENCODER_DIR": str(settings.encoder_dir),
        "TAGFLOW_REDIS_URL": str(settings.redis_url),
        "TAGFLOW_LOG_FORMAT": "json",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = {(e["logger"], e["message"]) for e in lines}
    assert ("service.ml.serving", f"serving model {version}") in messages, err[-2000:]
    assert ("uvicorn.error", "Application startup complete.") in messages
    assert all(line.startswith("{") for line in err.splitlines() if line.strip()), err[-2000:]


def test_onnx_export_tooling_lines_are_dropped(
    make_settings: Callable[..., Settings],
    root_logger: logging.Logger,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The quantizer logs on the root logger, one INFO line per tensor, on the first start;
    the service's own lines next to them still come through."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight = numpy_helper.from_array(np.ones((16, 16), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "one-matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "tiny.onnx")
    configure_logging(make_settings(log_level="INFO"))
    quantize_dynamic(
        tmp_path / "tiny.onnx",
        tmp_path / "tiny-int8.onnx",
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    logging.getLogger("service.ml.encoder").info("exported")
    err = capsys.readouterr().err
    assert (tmp_path / "tiny-int8.onnx").exists()
    assert "Quantization parameters" not in err and "pre-processing" not in err, err
    assert err.rstrip().endswith(" INFO service.ml.encoder exported"), err


def test_request_refusals_log_a_reason_once_a_minute_with_the_count_unlogged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client retrying against a 503 made a line per request; now one per reason and
    minute, the next one saying how many went unlogged."""
    refusals = RequestRefusals(logging.getLogger("tests.refusals"), every_s=60.0)
    with caplog.at_level(logging.WARNING, logger="tests.refusals"):
        for second in range(100):
            refusals.refused(
                logging.ERROR, "no model", "no model loaded", now=1000.0 + second * 0.1
            )
        refusals.refused(logging.WARNING, "overloaded", "refused: busy", now=1005.0)
        refusals.refused(logging.ERROR, "no model", "no model loaded", now=1059.9)
        refusals.refused(logging.ERROR, "no model", "no model loaded", now=1060.0)
        refusals.refused(logging.ERROR, "no model", "no model loaded", now=1200.0)
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said == [
        (logging.ERROR, "no model loaded"),
        (logging.WARNING, "refused: busy"),
        (logging.ERROR, "no model loaded (and 100 more since its last line, not logged)"),
        (logging.ERROR, "no model loaded"),
    ]
