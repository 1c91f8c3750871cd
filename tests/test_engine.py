"""The engine of the frozen part (`--engine`): the int8 ONNX Runtime graph, its check and its caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import FAST_FIT, make_class_folders, run_cli
from tlearn.metadata import ModelSpec
from tlearn.model import weights_identity
from tlearn.train.engine import quantised_frozen_part, quantised_model_key, representative_records
from tlearn.data.dataset import scan_folder

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("engine-data") / "colours", per_class=8, size=32)


def _fit(data: Path, root: Path, engine: str, *extra: str):
    return run_cli("fit", data, "--out", root / f"run-{engine}", "--cache-dir", root / "cache", *FAST_FIT,
                   "--epochs", "3", "--no-finetune-cache", "--engine", engine, *extra)


def _stage_settings(run: Path) -> dict:
    return json.loads((run / "tlearn.json").read_text())["stages"][0]["settings"]


def _cache_configs(cache: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(cache.glob("*/config.json"))]


def test_int8_engine_trains_records_its_check_and_caches_apart_from_float32(small_set, tmp_path):
    result = _fit(small_set, tmp_path, "int8")
    assert result.exit_code == 0, result.output
    settings = _stage_settings(tmp_path / "run-int8")
    assert settings["engine"] == "int8"
    assert settings["engine_check"]["images"] > 0 and settings["engine_check"]["mean_cosine"] > 0.99
    assert len(list((tmp_path / "cache" / "int8-engine").glob("*/frozen_int8.onnx"))) == 1
    result = _fit(small_set, tmp_path, "float32")
    assert result.exit_code == 0, result.output
    assert _stage_settings(tmp_path / "run-float32")["engine"] == "float32"
    configs = _cache_configs(tmp_path / "cache")
    assert len(configs) == 2  # one cache per engine at the same cut
    assert sorted("engine" in config for config in configs) == [False, True]  # float32's key is unchanged


_BLOCK_IMPORT = "import sys\nsys.modules['onnxruntime'] = None\n"


@pytest.mark.parametrize("engine", ["auto", "int8"])
def test_without_onnxruntime_auto_falls_back_and_int8_is_one_line(small_set, tmp_path, engine):
    (tmp_path / "sitecustomize.py").write_text(_BLOCK_IMPORT)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])}
    args = ["fit", str(small_set), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), *FAST_FIT,
            "--epochs", "2", "--no-finetune-cache", "--engine", engine]
    result = subprocess.run([sys.executable, "-m", "tlearn", *args], capture_output=True, text=True, env=environment,
                            timeout=300)
    assert "Traceback" not in result.stderr
    if engine == "int8":
        assert result.returncode == 2, result.stderr
        assert 'Error: --engine int8 needs onnxruntime, which is not installed: pip install "tlearn[onnx]"' \
            in result.stderr.splitlines()
    else:
        assert result.returncode == 0, result.stderr
        assert any(line.startswith("Warning: engine float32: onnxruntime is not installed")
                   for line in (result.stdout + result.stderr).splitlines()), result.stderr
        assert _stage_settings(tmp_path / "run")["engine"] == "float32"


def _spec(size: int = 32, seed: int = 1) -> ModelSpec:
    return ModelSpec(["a", "b"], size, "none", weights_identity("none", seed), "caffe", 16, 0.5, 0.0)


def test_the_quantised_model_is_keyed_by_weights_size_cut_and_calibration(small_set, tmp_path):
    records = scan_folder(small_set, image_size=32, cache_dir=tmp_path / "cache").records
    sample = representative_records(records, 1337, 6)
    assert {record.label for record in sample} == {"cloudy", "rain", "sunrise"}  # stratified
    key = quantised_model_key(_spec(), ["block5_pool"], sample)
    assert quantised_model_key(_spec(), ["block5_pool"], sample) == key
    others = [
        quantised_model_key(_spec(size=48), ["block5_pool"], sample),
        quantised_model_key(_spec(seed=2), ["block5_pool"], sample),
        quantised_model_key(replace(_spec(), preprocess="torch"), ["block5_pool"], sample),
        quantised_model_key(_spec(), ["block4_pool"], sample),
        quantised_model_key(_spec(), ["block5_pool"], sample[:-1]),
    ]
    assert len({key, *others}) == len(others) + 1


def test_the_quantised_model_is_built_once_and_reused(small_set, tmp_path):
    records = scan_folder(small_set, image_size=32, cache_dir=tmp_path / "cache").records
    spec = _spec()
    model = spec.build("none")
    sample = representative_records(records, 1337, 4)
    path, key = quantised_frozen_part(model, spec, ["block3_pool"], sample, tmp_path / "cache")
    built = path.stat().st_mtime_ns
    again, same_key = quantised_frozen_part(model, spec, ["block3_pool"], sample, tmp_path / "cache")
    assert (again, same_key) == (path, key) and again.stat().st_mtime_ns == built


def test_auto_keeps_float32_when_the_check_fails_and_records_why(small_set, tmp_path, monkeypatch):
    import tlearn
    import tlearn.train.engine

    monkeypatch.setattr(tlearn.train.engine, "MIN_MEAN_COSINE", 1.5)  # no graph reaches it: the check fails
    result = tlearn.fit(small_set, out=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                        weights="none", image_size=32, epochs=2, batch_size=8, finetune_cache=False, engine="auto")
    settings = _stage_settings(tmp_path / "run")
    assert settings["engine"] == "float32" and settings["engine_check"]["passed"] is False
    notes = [line for line in result.warnings if line.startswith("engine float32: int8 features' cosine")]
    assert len(notes) == 1 and "under 1.5" in notes[0]
    assert all("engine" not in config for config in _cache_configs(tmp_path / "cache"))  # float32's activations
