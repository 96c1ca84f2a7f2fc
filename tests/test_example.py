"""The main job, ``examples/train_ctr.py``, on a small dataset against the session's server:
its log is readable when stdout is not a terminal, and its report says whether the model
generalized (validation AUC by epoch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tfra_redis import testing

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_ctr.py"


@pytest.mark.timeout(300)
def test_redirected_log_is_plain_lines_and_the_report_judges_generalization(
    tmp_path, standalone_server
):
    config = testing.write_config_file(
        tmp_path / "redis.json", standalone_server, expire_model_tag_in_seconds=-1
    )
    report = tmp_path / "report.json"
    tag = "example" + uuid.uuid4().hex[:8]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TFRA_REDIS_CONFIG_PATH", None)
    result = subprocess.run(
        [
            sys.executable, str(EXAMPLE), "--config", str(config), "--model-tag", tag,
            "--samples", "40000", "--epochs", "2", "--batch-size", "2048",
            "--report-json", str(report),
        ],
        capture_output=True,  # bytes: text mode would turn a "\r" into a newline
        env=env,
        timeout=280,
    )  # fmt: skip
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    data = json.loads(report.read_text())
    rose = data["val_auc_rose_every_epoch"]
    assert result.returncode == (0 if rose else 1), stderr[-3000:]
    # Keras' bar would redraw with \r and ANSI codes; with stdout a pipe there is one line per
    # epoch instead.
    assert "\r" not in stdout and "\x1b" not in stdout
    epoch_lines = [line for line in stdout.splitlines() if " - val_auc: " in line]
    assert len(epoch_lines) == 2, stdout
    verdict = "rose every epoch" if rose else "fell after epoch"
    assert verdict in stdout + stderr
    # The example cleans up the tables it made in a Redis it was given.
    assert standalone_server.execute("KEYS", f"{tag}:*") == []
