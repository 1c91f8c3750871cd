"""LiteRT and ONNX exports, the SavedModel's bytes signature, and predict from every form.

One copy of the session's 32-px run is exported in every format and quantization; the other
tests read those files.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import CLASS_COLOURS, run_cli, solid_image
from tlearn.data.images import decode_rgb, load_rgb
from tlearn.export import load_serving_function
from tlearn.prediction import predict
from tlearn.runtimes import open_model

COMBINATIONS = [(f, q) for f in ("litert", "onnx") for q in ("none", "float16", "dynamic", "int8")]
SUFFIX = {"litert": ".tflite", "onnx": ".onnx"}


@pytest.fixture(scope="module")
def exported_run(fitted_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("exports") / "colours"
    shutil.copytree(fitted_run, run)
    return run


@pytest.mark.parametrize("format, quantize", COMBINATIONS, ids=[f"{f}-{q}" for f, q in COMBINATIONS])
def test_each_format_and_quantization_is_exported_and_verified(exported_run, format, quantize):
    result = run_cli("export", exported_run, "--format", format, "--quantize", quantize,
                     "--representative-images", "12")
    assert result.exit_code == 0, result.output
    exported = exported_run / "export" / f"model_{quantize}{SUFFIX[format]}"
    assert f"Exported: {exported} (" in result.output
    assert exported.name in result.output and "saved_model (reference)" in result.output
    entry = json.loads((exported_run / "export" / "verification.json").read_text())[f"{format}/{quantize}"]
    assert entry["file"] == exported.name and entry["bytes"] == exported.stat().st_size
    assert entry["test_images"] == 6 and entry["latency_ms"] > 0
    # int8's accuracy is for real weights (the weather check): on random ones its activation
    # ranges say little, so here it only has to export, load and run.
    assert entry["max_probability_difference"] <= {"none": 1e-4, "float16": 1e-3, "dynamic": 0.25, "int8": 1.0}[quantize]
    if quantize in ("none", "float16"):
        assert entry["top1_agreement"] == 1.0
    if quantize == "none":
        assert entry["max_probability_difference"] <= 1e-4 and entry["targets_met"]
    assert [p.name for p in exported.parent.iterdir() if p.name.startswith(".")] == []  # nothing staged left


def test_int8_litert_leaves_the_preprocessing_in_float_and_the_convolutions_in_int8(exported_run):
    from ai_edge_litert.interpreter import Interpreter

    path = exported_run / "export" / "model_int8.tflite"
    if not path.exists():
        assert run_cli("export", exported_run, "--quantize", "int8", "--representative-images", "12").exit_code == 0
    tensors = Interpreter(model_path=str(path)).get_tensor_details()
    preprocessing = [t["dtype"] for t in tensors if "/preprocess" in t["name"]]
    convolutions = [t["dtype"] for t in tensors if "block3_conv1" in t["name"] and "Relu" in t["name"]]
    assert np.float32 in preprocessing and np.int8 not in preprocessing  # (an int32 axis constant aside)
    assert convolutions and set(convolutions) == {np.int8}


def _probabilities(model, paths):
    return np.array([[item["probability"] for item in sorted(p.top_k, key=lambda i: i["label"])]
                     for p in predict(paths, model=model, top_k=3)])


def test_predict_gives_one_answer_from_every_form(exported_run, dataset_dir):
    paths = sorted((dataset_dir / "rain").glob("rain*.jpg"))[:2] + [dataset_dir / "cloudy" / "gray.jpg"]
    from_run = _probabilities(exported_run, paths)
    forms = {"saved_model": (exported_run / "saved_model", 1e-6)}
    for format, suffix in SUFFIX.items():
        forms[f"{format} float32"] = (exported_run / "export" / f"model_none{suffix}", 1e-4)
        forms[f"{format} float16"] = (exported_run / "export" / f"model_float16{suffix}", 1e-3)
    for name, (model, tolerance) in forms.items():
        if not Path(model).exists():
            pytest.skip("the export tests did not run first")
        probabilities = _probabilities(model, paths)
        np.testing.assert_allclose(probabilities, from_run, atol=tolerance, err_msg=name)
        assert list(probabilities.argmax(1)) == list(from_run.argmax(1)), name
    result = run_cli("predict", paths[0], "--model", exported_run / "export" / "model_none.tflite")
    assert result.exit_code == 0 and str(paths[0]) in result.output


def test_an_onnx_file_carries_its_classes_and_a_tflite_file_needs_its_run(exported_run, dataset_dir, tmp_path):
    onnx_file, tflite_file = exported_run / "export" / "model_none.onnx", exported_run / "export" / "model_none.tflite"
    if not (onnx_file.exists() and tflite_file.exists()):
        pytest.skip("the export tests did not run first")
    alone = tmp_path / "alone"
    alone.mkdir()
    for path in (onnx_file, tflite_file):
        shutil.copy(path, alone)
    served = open_model(alone / "model_none.onnx")
    assert served.class_names == sorted(CLASS_COLOURS) and served.image_size == 32
    image = dataset_dir / "rain" / "rain1.jpg"
    assert run_cli("predict", image, "--model", alone / "model_none.onnx").exit_code == 0
    result = run_cli("predict", image, "--model", alone / "model_none.tflite")
    assert result.exit_code == 2 and "keep it inside the run folder it came from" in result.output


def _synthetic_images(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = [folder / "photo.jpg", folder / "drawing.png", folder / "gray.jpg", folder / "alpha.png"]
    solid_image(CLASS_COLOURS["rain"], size=61, seed=1).save(paths[0], quality=90)
    solid_image(CLASS_COLOURS["sunrise"], size=40, seed=2).resize((40, 75)).save(paths[1])
    solid_image(CLASS_COLOURS["cloudy"], size=50, seed=3).convert("L").save(paths[2])
    transparent = solid_image(CLASS_COLOURS["rain"], size=45, seed=4).convert("RGBA")
    transparent.putalpha(Image.fromarray(np.random.default_rng(5).integers(0, 256, (45, 45), dtype=np.uint8)))
    transparent.save(paths[3])
    return paths


def five_routes(run: Path, paths: list[Path]) -> dict[str, np.ndarray]:
    """Each image's probabilities by tlearn predict, the SavedModel's float and bytes
    signatures, and the LiteRT and ONNX float32 files."""
    class_names = (run / "labels.txt").read_text().split()
    size = json.loads((run / "tlearn.json").read_text())["image_size"]
    routes = {"tlearn predict": np.array([[{i["label"]: i["probability"] for i in p.top_k}[name] for name in class_names]
                                          for p in predict(paths, model=run, top_k=len(class_names))])}
    pixels_of = load_serving_function(run / "saved_model")
    bytes_of = load_serving_function(run / "saved_model", "serving_bytes")
    routes["SavedModel pixels"] = np.concatenate(
        [pixels_of(pixels=decode_rgb(p).astype(np.float32)[None])["output_0"].numpy() for p in paths])
    routes["SavedModel bytes"] = bytes_of(image_bytes=tf.constant([p.read_bytes() for p in paths]))["output_0"].numpy()
    resized = np.stack([load_rgb(p, size) for p in paths])
    for name in ("model_none.tflite", "model_none.onnx"):
        routes[name] = open_model(run / "export" / name).probabilities(resized)
    return routes


def test_one_image_five_routes_one_answer(exported_run, tmp_path):
    if not all((exported_run / "export" / n).exists() for n in ("model_none.tflite", "model_none.onnx")):
        pytest.skip("the export tests did not run first")
    routes = five_routes(exported_run, _synthetic_images(tmp_path / "images"))
    for name, probabilities in routes.items():
        np.testing.assert_allclose(probabilities, routes["tlearn predict"], atol=1e-3, rtol=0, err_msg=name)


# A runtime that is not installed: its import fails in the CLI's own process.
_BLOCK_IMPORT = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


@pytest.mark.parametrize("command, blocked, extra", [
    ("predict", ["onnxruntime"], "onnx"),
    ("export", ["ai_edge_litert", "ai_edge_litert.interpreter"], "litert"),
], ids=["predict-onnx", "export-litert"])
def test_a_missing_runtime_is_one_line_naming_the_extra(exported_run, dataset_dir, tmp_path, command, blocked, extra):
    (tmp_path / "sitecustomize.py").write_text(_BLOCK_IMPORT.format(names=blocked))
    args = ([command, str(dataset_dir / "rain" / "rain1.jpg"), "--model", str(exported_run / "export" / "model_none.onnx")]
            if command == "predict" else [command, str(exported_run), "--format", "litert"])
    if command == "predict" and not Path(args[-1]).exists():
        pytest.skip("the export tests did not run first")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])}
    result = subprocess.run([sys.executable, "-m", "tlearn", *args], capture_output=True, text=True, env=environment,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error_lines and error_lines[0].endswith(f'pip install "tlearn[{extra}]"'), result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_export_leaves_no_file_that_looks_done(run_copy, monkeypatch):
    import tlearn.conversion

    def fail(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C during verification

    monkeypatch.setattr(tlearn.conversion, "verify", fail)
    with pytest.raises(KeyboardInterrupt):
        tlearn.conversion.export_model(run_copy, format="litert")
    left = [p.name for p in (run_copy / "export").iterdir()]
    assert [name for name in left if name.startswith(".") or name.startswith("model_")] == []
