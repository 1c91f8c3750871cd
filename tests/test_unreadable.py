"""Files that cannot be read at all (no permission) are skipped with their reason, like any
other bad file, by check, fit, evaluate and predict: never a traceback.

As root, reading is denied only once the process has dropped the capabilities that override
file permissions, so the commands run in a subprocess under `setpriv`.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tlearn
from conftest import FAST_FIT, make_class_folders

ROOT = Path(tlearn.__file__).resolve().parents[1]
REASON = "permission denied: this user may not read it"


def _without_override() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv to drop the capability that overrides file permissions")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _tlearn(*args, cache: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TLEARN_CACHE_DIR": str(cache)}
    return subprocess.run([*_without_override(), sys.executable, "-m", "tlearn", *map(str, args)],
                          capture_output=True, text=True, env=environment, timeout=300)


@pytest.fixture
def locked(tmp_path):
    data = make_class_folders(tmp_path / "colours", per_class=6)
    image = data / "rain" / "rain0.jpg"
    image.chmod(0)
    yield data, image
    image.chmod(0o644)


def test_check_fit_evaluate_and_predict_skip_an_unreadable_image(locked, tmp_path):
    data, image = locked
    cache = tmp_path / "cache"
    check = _tlearn("check", data, "--format", "json", cache=cache)
    assert check.returncode == 1, check.stderr
    assert json.loads(check.stdout)["unreadable"] == [{"path": "rain/rain0.jpg", "detail": REASON}]

    fit = _tlearn("fit", data, "--out", tmp_path / "run", *FAST_FIT, "--epochs", "2", cache=cache)
    assert fit.returncode == 0, fit.stderr
    assert f"Warning: skipped {image}: {REASON}" in fit.stderr
    assert "Traceback" not in fit.stderr

    evaluate = _tlearn("evaluate", tmp_path / "run", "--data", data, "--no-progress", cache=cache)
    assert evaluate.returncode == 0, evaluate.stderr
    assert f"Warning: skipped {image}: {REASON}" in evaluate.stderr

    predict = _tlearn("predict", data / "rain", "--model", tmp_path / "run", "--format", "json", cache=cache)
    assert predict.returncode == 1, predict.stderr  # 1: an image could not be read
    errors = {Path(row["path"]).name: row["error"] for row in json.loads(predict.stdout) if row["error"]}
    assert errors == {"rain0.jpg": REASON}
    assert "Traceback" not in check.stderr + evaluate.stderr + predict.stderr
