import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from tlearn.data.images import decode_rgb
from tlearn.export import load_serving_function
from tlearn.prediction import iter_predictions, predict


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
    assert result.stdout == json.dumps(rows, indent=2) + "\n"  # written row by row, laid out as one list
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


def photo_like(path, seed, size=(600, 400)):
    """A large picture with structure at every scale: smooth colour fields plus fine noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(coarse, dtype=float) + rng.normal(0, 25, (size[1], size[0], 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def test_predict_equals_the_plain_saved_model_on_the_decoded_file(fitted_run, tmp_path):
    # What a server using only TensorFlow computes from the decoded photo (the README's
    # example) must be what `tlearn predict` says, for photos far larger than the model's input.
    paths = [photo_like(tmp_path / f"photo{seed}.jpg", seed) for seed in range(6)]
    predicted = predict(paths, model=fitted_run, top_k=3, batch_size=4)
    serve = load_serving_function(fitted_run / "saved_model")
    for path, prediction in zip(paths, predicted):
        raw = decode_rgb(path).astype(np.float32)[None]  # 400 x 600: the model resizes it
        (plain,) = serve(pixels=raw).values()
        from_predict = {item["label"]: item["probability"] for item in prediction.top_k}
        np.testing.assert_allclose([from_predict[name] for name in ("cloudy", "rain", "sunrise")], plain.numpy()[0],
                                   rtol=0, atol=1e-5)


def test_predictions_stream_batch_by_batch(fitted_run, dataset_dir, tmp_path):
    # The last file is written only after the first prediction came back: a predict that
    # decodes every input first would report it missing.
    paths = [dataset_dir / "rain" / f"rain{n}.jpg" for n in range(5)] + [tmp_path / "late.jpg"]
    stream = iter_predictions(paths, model=fitted_run, batch_size=2)
    assert len(stream) == 6
    rows = iter(stream)
    first = next(rows)
    shutil.copy(dataset_dir / "rain" / "rain9.jpg", tmp_path / "late.jpg")
    rest = list(rows)
    assert [row.path for row in [first, *rest]] == [str(path) for path in paths]
    assert rest[-1].error is None and rest[-1].label == "rain"


PTY_PREDICT = """
import fcntl, os, pty, struct, subprocess, sys, termios
primary, secondary = pty.openpty()
fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
child = subprocess.Popen([sys.executable, "-m", "tlearn", "predict", *sys.argv[1:]], stdout=subprocess.PIPE,
                         stderr=secondary)
os.close(secondary)
terminal = b""
while True:
    try:
        chunk = os.read(primary, 4096)
    except OSError:  # the child closed the terminal
        break
    if not chunk:
        break
    terminal += chunk
stdout = child.stdout.read()
child.wait()
sys.stdout.write(repr((child.returncode, stdout.decode(), terminal.decode(errors="replace"))))
"""


def test_a_progress_bar_shows_on_a_terminal_and_rows_on_stdout(fitted_run, dataset_dir):
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-c", PTY_PREDICT, str(dataset_dir / "rain"), "--model", str(fitted_run),
               "--batch-size", "4", "--format", "csv"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    code, stdout, terminal = ast.literal_eval(subprocess.run(command, capture_output=True, text=True, env=env,
                                                             check=True).stdout)
    assert code == 1  # truncated.jpg cannot be read
    assert "predicting" in terminal and "img" in terminal  # tqdm's bar, drawn on the terminal
    assert len(list(csv.DictReader(io.StringIO(stdout)))) == 14 + 2  # rain0..13, alpha.png, truncated.jpg


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
    assert done.stderr == ""  # no oneDNN, CUDA or absl lines, and no progress bar off a terminal
    assert done.stdout.splitlines()[1].split()[1] == "rain"


@pytest.mark.parametrize("output_format", ["csv", "json"])
def test_a_killed_predict_keeps_the_rows_it_wrote(fitted_run, dataset_dir, tmp_path, output_format):
    """A real `tlearn predict` killed (SIGKILL) midway: every row it wrote is on disk, whole."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    images = sorted((dataset_dir / "cloudy").glob("*.jpg")) * 40  # listed as given, repeats included
    output = tmp_path / f"predictions.{output_format}"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tlearn", "predict", *map(str, images), "--model", str(fitted_run),
             "--batch-size", "1", "--format", output_format],
            stdout=sink, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(root)},
        )
        deadline = time.monotonic() + 240
        folder = str(dataset_dir / "cloudy").encode()
        while output.read_bytes().count(folder) < 5 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL  # killed midway, not finished
    text = output.read_text()
    if output_format == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:  # a JSON array without its closing bracket: each record written is whole
        rows = json.loads(text + "\n]")
    assert 5 <= len(rows) < len(images)
    assert [row["path"] for row in rows] == [str(path) for path in images[: len(rows)]]
    assert all(row["label"] == rows[0]["label"] for row in rows if row["path"] == rows[0]["path"])
