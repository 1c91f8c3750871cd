"""The Run object: a run directory's layout and typed metadata, and how runs are written."""

import ast
import os
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

import tlearn
from conftest import run_cli
from tlearn.data.images import load_rgb
from tlearn.run import Run, RunWriter

PACKAGE = Path(tlearn.__file__).resolve().parent


def test_metadata_round_trips_to_the_same_json(fitted_run):
    recorded = json.loads((fitted_run / "tlearn.json").read_text())
    run = Run.open(fitted_run)
    assert run.metadata.to_json() == recorded
    assert run.class_names == ["cloudy", "rain", "sunrise"] and run.spec.image_size == 32
    assert run.last_stage.name == "fit" and run.last_stage.unfreeze == 0
    assert sum(len(records) for records in run.read_split().values()) == sum(recorded["split"]["sizes"].values())


def test_load_model_in_a_fresh_process_matches_the_export(fitted_run, dataset_dir):
    paths = sorted((dataset_dir / "rain").glob("rain*.jpg"))[:4]
    script = (
        "import sys, json, numpy as np, tlearn\n"
        "from tlearn.data.images import load_rgb\n"
        "model = tlearn.load_model(sys.argv[1])\n"
        "pixels = np.stack([load_rgb(p, 32) for p in sys.argv[2:]]).astype('float32')\n"
        "print(json.dumps(model.predict(pixels, verbose=0).tolist()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(fitted_run), *map(str, paths)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    serve = tf.saved_model.load(str(fitted_run / "saved_model")).signatures["serving_default"]
    pixels = np.stack([load_rgb(p, 32) for p in paths]).astype("float32")
    np.testing.assert_allclose(loaded, serve(pixels=tf.constant(pixels))["output_0"].numpy(), atol=1e-5)


def test_a_damaged_metadata_file_is_a_clear_error(run_copy):
    (run_copy / "tlearn.json").write_text('{"class_names": ')
    result = run_cli("evaluate", run_copy, "--no-progress")
    assert result.exit_code == 2
    assert "tlearn.json cannot be read" in result.output and "Traceback" not in result.output


def test_a_worker_that_does_not_publish_leaves_nothing(tmp_path):
    with RunWriter(tmp_path / "models", publish=False) as writer:
        (writer.files.root / "file").write_text("x")
        assert writer.publish_new(None, tmp_path / "models", "run") is None
        staged = writer.files.root
    assert not staged.exists() and not (tmp_path / "models").exists()


def _tlearn_imports(path: Path) -> set[str]:
    """The tlearn modules that the module at `path` imports, as dotted names."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.module else base
            found |= {f"{module}.{alias.name}" if not node.module else module for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tlearn"):
            found.add(node.module)
    return found


def test_distribution_is_an_adapter_at_the_edge():
    assert _tlearn_imports(PACKAGE / "distribute.py") <= {"tlearn.errors", "tlearn.settings"}
    for path in [*(PACKAGE / "data").glob("*.py"), PACKAGE / "model.py", *(PACKAGE / "train").glob("*.py")]:
        if path.name != "stages.py":  # the stages hand their work to the adapter
            assert "tlearn.distribute" not in _tlearn_imports(path), path.name


def test_runs_and_caches_are_readable_as_the_umask_says(tmp_path):
    from conftest import FAST_FIT, make_class_folders

    data = make_class_folders(tmp_path / "colours", per_class=4)
    previous = os.umask(0o022)  # the usual one: a serving account in the group or others can read
    try:
        result = run_cli("fit", data, "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", *FAST_FIT,
                         "--epochs", "1", "--val-split", "0.25", "--test-split", "0.25")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    folders = [tmp_path / "run", *(p for p in (tmp_path / "run").rglob("*") if p.is_dir())]
    files = [p for root in ("run", "cache") for p in (tmp_path / root).rglob("*") if p.is_file()]
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {"0o755"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}
    assert any(p.suffix == ".data" for p in files) and any(p.name == "saved_model.pb" for p in files)


def test_a_garbage_model_file_is_called_what_it_is(run_copy):
    (run_copy / "model.keras").write_bytes(b"not a zip archive\n")
    result = run_cli("evaluate", run_copy, "--no-progress")
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {run_copy / 'model.keras'} is not a valid Keras file " \
                                    "(not a .keras zip archive): the run is damaged; fit it again"
