"""Commands killed part-way: no half-written export stays behind, and a run always has one
complete model. Each test kills a real tlearn process (SIGKILL) at the moment that matters."""

import json
import os
import subprocess
import sys
from pathlib import Path


import tlearn
from conftest import FAST_FIT, make_class_folders, run_cli
from tlearn.run import Run

ROOT = Path(tlearn.__file__).resolve().parents[1]

# Runs a tlearn function with `module:owner.function` replaced by one that calls the original
# and then kills the process: a crash at exactly that point, with nothing cleaned up.
KILLED_AFTER = """
import os, signal, sys, json, importlib
target, call = sys.argv[1], json.loads(sys.argv[2])
module_name, _, attribute = target.partition(":")
*owner_path, function_name = attribute.split(".")
owner = importlib.import_module(module_name)
for name in owner_path:
    owner = getattr(owner, name)
original = getattr(owner, function_name)

def killed_after(*args, **kwargs):
    original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

setattr(owner, function_name, killed_after)
import tlearn
getattr(tlearn, call["function"])(*call["args"], **call["kwargs"])
"""


def _killed_after(target: str, call: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", KILLED_AFTER, target, json.dumps(call)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -9, done.stderr[-3000:]  # it was killed, not finished
    return done


FIT_SETTINGS = {"weights": "none", "image_size": 32, "epochs": 1, "batch_size": 8, "val_split": 0.25,
                "test_split": 0.25, "progress": False}


def test_a_fit_killed_during_export_leaves_a_folder_the_next_fit_removes(tmp_path):
    data = make_class_folders(tmp_path / "colours", per_class=4)
    models = tmp_path / "models"
    # Killed once the SavedModel is written and before model.keras is: a partial export.
    call = {"function": "fit", "args": [str(data)], "kwargs": {**FIT_SETTINGS, "models_dir": str(models)}}
    _killed_after("tlearn.export:write_saved_model", call)
    (left,) = models.glob(".tlearn-staging-*")
    assert (left / "saved_model").is_dir() and not (left / "model.keras").exists()
    assert not (models / "colours").exists()

    result = run_cli("fit", data, "--models-dir", models, *FAST_FIT, "--epochs", "1",
                     "--val-split", "0.25", "--test-split", "0.25")
    assert result.exit_code == 0, result.output
    assert [p.name for p in models.iterdir()] == ["colours"]  # the abandoned folder is gone


def test_a_staging_folder_of_a_running_command_is_left_alone(tmp_path):
    from tlearn.atomic import make_staging_folder, remove_abandoned_staging

    mine = make_staging_folder(tmp_path)  # this process runs: its folder is in use
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = tmp_path / mine.name.replace(f"{os.getpid()}@", f"{sleeper.pid}@")
        theirs.mkdir()
        assert remove_abandoned_staging(tmp_path) == []
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_abandoned_staging(tmp_path) == [theirs]  # its process has ended
    assert mine.is_dir()


def test_a_finetune_killed_between_its_renames_is_completed_by_the_next_command(run_copy, dataset_dir):
    fit_stage = Run.open(run_copy).last_stage
    call = {"function": "finetune", "args": [str(run_copy)],
            "kwargs": {"epochs": 1, "views": 1, "batch_size": 8, "progress": False}}
    # Killed right after the first rename: the fit's saved_model has moved to stages/fit/,
    # the finetune's is not yet in its place.
    _killed_after("os:rename", call)
    assert not (run_copy / "saved_model").exists()
    assert (run_copy / "stages" / "fit" / "saved_model").is_dir()
    assert json.loads((run_copy / "tlearn.json").read_text())["pending"]["stage"]["name"] == "finetune"

    result = run_cli("predict", dataset_dir / "rain" / "rain2.jpg", "--model", run_copy)
    assert result.exit_code == 0, result.output
    run = Run.open(run_copy)
    assert [stage.name for stage in run.metadata.stages] == ["fit", "finetune"]
    assert run.metadata.pending is None and "pending" not in json.loads((run_copy / "tlearn.json").read_text())
    for name in ("saved_model/saved_model.pb", "model.keras", "report/metrics.json"):
        assert (run_copy / name).is_file() and (run_copy / "stages" / "fit" / name).is_file(), name
    assert not list(run_copy.glob(".tlearn-staging-*"))
    fit_metrics = json.loads((run_copy / "stages" / "fit" / "report" / "metrics.json").read_text())
    assert fit_metrics["accuracy"] == fit_stage.test_accuracy
    assert run.last_stage.test_accuracy == json.loads((run_copy / "report" / "metrics.json").read_text())["accuracy"]
