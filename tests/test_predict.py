import csv
import io
import json
import shutil

import pytest

from conftest import run_cli


def test_table_lists_each_image_with_its_class(fitted_run, dataset_dir):
    result = run_cli("predict", dataset_dir / "sunrise" / "sunrise3.jpg", "--model", fitted_run)
    assert result.exit_code == 0, result.output
    header, row = result.output.strip().splitlines()
    assert header.split() == ["path", "prediction"]
    assert row.split()[1] == "sunrise"


def test_folders_are_searched_and_bad_files_get_their_own_row(fitted_run, dataset_dir):
    result = run_cli("predict", dataset_dir / "cloudy", "--model", fitted_run, "--format", "json", "--top-k", "2")
    assert result.exit_code == 1  # notes.jpg cannot be read
    rows = json.loads(result.stdout)
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in rows if r["error"]}
    assert errors == {"notes.jpg": "not an image"}  # empty.jpg lives in sunrise/
    good = [r for r in rows if not r["error"]]
    assert len(good) == 14 + 2 and all(r["label"] == "cloudy" for r in good)
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] for r in good)
    assert not any(".DS_Store" in r["path"] for r in rows)


def test_csv_has_flattened_top_k(fitted_run, dataset_dir):
    pattern = str(dataset_dir / "rain" / "rain1?.jpg")
    result = run_cli("predict", pattern, "--model", fitted_run, "--format", "csv", "--top-k", "3")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 4  # rain10..rain13
    assert list(rows[0]) == ["path", "label", "probability", "label_1", "probability_1", "label_2",
                             "probability_2", "label_3", "probability_3", "error"]
    assert {row["label"] for row in rows} == {"rain"}


def test_newest_run_in_models_dir_is_the_default(run_copy, dataset_dir, monkeypatch):
    monkeypatch.chdir(run_copy.parent.parent)  # ./models/colours
    result = run_cli("predict", dataset_dir / "rain" / "rain2.jpg")
    assert result.exit_code == 0, result.output
    assert "rain" in result.output.splitlines()[1]


def test_missing_file_is_an_error_row(fitted_run, tmp_path):
    result = run_cli("predict", tmp_path / "nope.jpg", "--model", fitted_run)
    assert result.exit_code == 1
    assert "no such file (moved or deleted?)" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}"], "is not a tlearn run"),
        (["--models-dir", "{tmp}/empty"], "no runs in"),
        (["--model", "{run}", "--top-k", "9"], "--top-k must be between 1 and 3"),
        (["--model", "{run}", "--format", "xml"], "Invalid value for '--format'"),
    ],
)
def test_bad_model_or_option_is_exit_code_2(fitted_run, dataset_dir, tmp_path, args, message):
    filled = [a.format(tmp=tmp_path, run=fitted_run) for a in args]
    result = run_cli("predict", dataset_dir / "rain" / "rain2.jpg", *filled)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_incomplete_run_is_a_clear_error(run_copy, dataset_dir):
    shutil.rmtree(run_copy / "saved_model")
    result = run_cli("predict", dataset_dir / "rain" / "rain2.jpg", "--model", run_copy)
    assert result.exit_code == 2 and "has no saved_model/" in result.output


def test_tensorflow_start_up_noise_stays_out_of_the_output(fitted_run, dataset_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import tlearn

    root = Path(tlearn.__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "tlearn", "predict", str(dataset_dir / "rain" / "rain2.jpg"), "--model", str(fitted_run)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no oneDNN, CUDA or absl lines: nothing a user can act on
    assert done.stdout.splitlines()[1].split()[1] == "rain"
