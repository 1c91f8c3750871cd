"""--strategy: mirrored over two logical CPUs, and two real workers on 127.0.0.1.

Both need TensorFlow set up before it starts (logical devices, collective ops), so they run
in fresh Python processes, each bounded by a timeout: a hung worker fails the test, never CI.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tlearn
from conftest import FAST_FIT, cached_activations, make_class_folders, run_cli
from tlearn.data.images import load_rgb

ROOT = Path(tlearn.__file__).resolve().parents[1]
WORKER_LIMIT = 150  # seconds before the test kills a worker and fails

MIRRORED_VERSUS_DEFAULT = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import tlearn
data, out = sys.argv[1], sys.argv[2]
settings = dict(weights="none", image_size=32, epochs=8, patience=8, lr=0.003, batch_size=6, dropout=0.0,
                val_split=0.2, test_split=0.2, progress=False)
for strategy in ("mirrored", "none"):
    tlearn.fit(data, out=f"{out}/{strategy}", cache_dir=f"{out}/cache-{strategy}", strategy=strategy, **settings)
"""


def _environment(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra}


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def _run_workers(commands: list[list[str]], environments: list[dict]) -> list[subprocess.CompletedProcess]:
    """Start every worker, wait for all; kill them all and fail if any outlives WORKER_LIMIT."""
    processes = [
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command, env in zip(commands, environments)
    ]
    try:
        outputs = [process.communicate(timeout=WORKER_LIMIT) for process in processes]
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"a worker was still running after {WORKER_LIMIT} s: killed")
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(processes, outputs)]


def _predict(run_dir: Path, paths: list[Path]) -> np.ndarray:
    serve = tf.saved_model.load(str(run_dir / "saved_model")).signatures["serving_default"]
    pixels = np.stack([load_rgb(p, 32) for p in paths]).astype("float32")
    (probabilities,) = serve(pixels=tf.constant(pixels)).values()
    return probabilities.numpy()


def test_mirrored_on_two_cpus_trains_like_one_device(tmp_path):
    data = make_class_folders(tmp_path / "colours", per_class=10)
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_VERSUS_DEFAULT)
    (done,) = _run_workers([[sys.executable, str(script), str(data), str(tmp_path)]], [_environment()])
    assert done.returncode == 0, done.stderr[-3000:]

    mirrored = json.loads((tmp_path / "mirrored" / "tlearn.json").read_text())["stages"][0]
    single = json.loads((tmp_path / "none" / "tlearn.json").read_text())["stages"][0]
    assert mirrored["distribution"] == {"strategy": "mirrored", "replicas": 2, "workers": 1}
    assert single["distribution"] == {"strategy": "none", "replicas": 1, "workers": 1}
    # Same seed, same global batch: the same training, up to float summation order.
    np.testing.assert_allclose(mirrored["history"]["loss"], single["history"]["loss"], rtol=1e-4)
    paths = sorted(data.glob("*/*.jpg"))
    np.testing.assert_allclose(_predict(tmp_path / "mirrored", paths), _predict(tmp_path / "none", paths), atol=1e-5)
    # Each batch was split across the replicas: every output's rows must come back in order.
    for cut in ("block5_pool", "block4_pool"):  # fit's own cut and finetune's, from the same pass
        mirrored_entries = cached_activations(tmp_path / "cache-mirrored", cut)
        single_entries = cached_activations(tmp_path / "cache-none", cut)
        assert list(mirrored_entries) == list(single_entries) and len(single_entries) == len(paths)
        for name, single in single_entries.items():
            np.testing.assert_allclose(mirrored_entries[name], single, rtol=2e-3, atol=1e-3)


def test_two_workers_train_one_run_written_by_the_chief(tmp_path):
    data = make_class_folders(tmp_path / "colours", per_class=10)
    models = tmp_path / "models"
    ports = _free_ports(2)
    command = [sys.executable, "-m", "tlearn", "fit", str(data), "--models-dir", str(models), "--strategy",
               "multi-worker", *FAST_FIT, "--epochs", "20", "--patience", "20", "--lr", "0.006"]
    workers = _run_workers(
        [command, command],
        [_environment(TF_CONFIG=_tf_config(ports, index), TLEARN_WORKER_TIMEOUT="60") for index in (0, 1)],
    )
    for index, worker in enumerate(workers):
        assert worker.returncode == 0, f"worker {index}: {worker.stderr[-3000:]}"
    assert f"Run: {models / 'colours'}" in workers[0].stdout
    assert "Run: written by the chief worker" in workers[1].stdout
    assert [p.name for p in models.iterdir()] == ["colours"]  # no second run, no staging left

    run = models / "colours"
    stage = json.loads((run / "tlearn.json").read_text())["stages"][0]
    assert stage["distribution"] == {"strategy": "multi-worker", "replicas": 2, "workers": 2}
    paths = sorted(data.glob("*/*[0-3].jpg"))
    predicted = _predict(run, paths).argmax(axis=1)
    expected = [["cloudy", "rain", "sunrise"].index(p.parent.name) for p in paths]
    assert (predicted == expected).mean() >= 0.9


def test_a_worker_that_never_joins_is_a_clear_error_not_a_hang(tmp_path):
    data = make_class_folders(tmp_path / "colours", per_class=3)
    command = [sys.executable, "-m", "tlearn", "fit", str(data), "--models-dir", str(tmp_path / "models"),
               "--strategy", "multi-worker", *FAST_FIT]
    (alone,) = _run_workers([command], [_environment(TF_CONFIG=_tf_config(_free_ports(2), 0), TLEARN_WORKER_TIMEOUT="5")])
    assert alone.returncode != 0  # killed by the watchdog: TensorFlow cannot be interrupted there
    assert "Error: --strategy multi-worker: not all 2 workers of TF_CONFIG joined within 5 s" in alone.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "strategy, tf_config, message",
    [
        ("multi-worker", None, "Error: --strategy multi-worker needs $TF_CONFIG on every worker"),
        ("multi-worker", "{not json", "Error: $TF_CONFIG is not a cluster and task"),
        ("multi-worker", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
         "Error: $TF_CONFIG task worker 3 is not a chief or worker of its cluster"),
        ("gpus", None, "Invalid value for '--strategy'"),
    ],
)
def test_bad_strategy_settings_are_one_line_errors(tmp_path, monkeypatch, strategy, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    data = make_class_folders(tmp_path / "data", per_class=3)
    result = run_cli("fit", data, "--models-dir", tmp_path / "models", "--strategy", strategy, *FAST_FIT)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_api_rejects_an_unknown_strategy(tmp_path):
    with pytest.raises(tlearn.TlearnError, match="--strategy must be one of auto, none, mirrored, multi-worker"):
        tlearn.fit(make_class_folders(tmp_path / "data", per_class=3), strategy="gpus", weights="none")
