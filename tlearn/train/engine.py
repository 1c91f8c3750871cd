"""The engine that runs the frozen part: Keras in float32, or an int8 ONNX Runtime graph.

On a CPU almost all of `fit` is one float32 pass of the frozen convolutions. The int8 engine
exports that part (the preprocessing layer up to the cut) to ONNX, the route of `tlearn export`,
quantises it statically on a stratified sample of the training split, caches the quantised file,
and embeds with ONNX Runtime. Before training on its activations it is checked on the user's own
validation images against float32 (feature cosine); `auto` keeps float32 when ONNX Runtime is
missing or the check fails, and says why in one line. int8 activations are cached apart from
float32 ones: they differ.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import staging_folder, write_text_atomically
from ..data.dataset import ImageRecord
from ..data.images import load_readable
from ..data.split import representative_records
from ..errors import TlearnError
from ..metadata import ModelSpec
from ..model import feature_extractor
from ..runtimes import ONNX_MODULES
from ..settings import default_cache_root

ENGINE_FORMAT = 1  # part of the quantised model's key: a change of recipe never reuses an old file
# The measurement: 64 images gave cosine 0.9992 to float32 on the weather set; more
# adds calibration time (each one float32 pass) for little.
CALIBRATION_IMAGES = 64
CHECK_IMAGES = 32  # validation images embedded by both engines: a float32 pass of 32 is seconds
# The weather set's mean was 0.9992 (minimum 0.993), and a head fed int8 features changed 1
# prediction in 1,121 there: a mean under 0.99 is a graph quantised far worse than that.
MIN_MEAN_COSINE = 0.99
_MISSING_RUNTIME = '--engine int8 needs {module}, which is not installed: pip install "tlearn[onnx]"'


@dataclass
class EngineChoice:
    """The engine a stage embeds with, and what the run records about it."""

    name: str  # float32 or int8
    extractor: object | None = None  # int8: an OnnxExtractor; float32: None (the Keras one)
    cache_key: dict = field(default_factory=dict)  # added to the activation cache's key; {} for float32
    check: dict | None = None  # feature cosine on validation images, when int8 was tried
    note: str | None = None  # one line: why auto fell back, or an int8 check that failed

    def record(self) -> dict:
        return {"engine": self.name, "engine_check": self.check}


class OutputShape:
    def __init__(self, shape: tuple):
        self.shape = shape


class OnnxExtractor:
    """The quantised frozen part behind the calls compute_activations makes of a Keras extractor."""

    def __init__(self, path: Path, image_size: int, output_shapes: list[tuple]):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = os.cpu_count() or 1
        self.path = path
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = (None, image_size, image_size, 3)
        self.outputs = [OutputShape((None, *shape)) for shape in output_shapes]

    def predict_on_batch(self, pixels: np.ndarray) -> np.ndarray | list[np.ndarray]:
        outputs = self.session.run(None, {self.input_name: np.asarray(pixels, dtype=np.float32)})
        return outputs[0] if len(outputs) == 1 else outputs


def choose_engine(requested: str, model, spec: ModelSpec, cuts: list[str], subsets: dict[str, list[ImageRecord]],
                  seed: int, cache_dir: str | Path | None, single_device: bool) -> EngineChoice:
    """The engine for `requested` (auto, float32 or int8): int8 is built, cached and checked
    on `subsets`' validation images; auto falls back to float32 with a note saying why."""
    if requested == "float32":
        return EngineChoice("float32")
    missing = _missing_runtime()
    if missing is not None:
        if requested == "int8":
            raise TlearnError(_MISSING_RUNTIME.format(module=missing))
        return EngineChoice("float32", note=f'engine float32: {missing} is not installed (pip install "tlearn[onnx]" '
                                             "for the int8 engine)")
    if not single_device:
        if requested == "int8":
            raise TlearnError("--engine int8 runs on one CPU device: give --strategy none, or --engine float32")
        return EngineChoice("float32", note="engine float32: int8 runs on one device, and this stage uses several")
    calibration = representative_records(subsets["train"], seed, CALIBRATION_IMAGES)
    path, key = quantised_frozen_part(model, spec, cuts, calibration, cache_dir)
    keras_extractor = feature_extractor(model, cuts)
    extractor = OnnxExtractor(path, spec.image_size, [tuple(o.shape[1:]) for o in keras_extractor.outputs])
    check = check_engine(keras_extractor, extractor, subsets["validation"][:CHECK_IMAGES], spec.image_size)
    passed = check["mean_cosine"] >= MIN_MEAN_COSINE
    check["passed"] = passed
    if passed or requested == "int8":
        note = None if passed else (f"engine int8: feature cosine to float32 on {check['images']} validation images "
                                    f"is {check['mean_cosine']:.4f}, under {MIN_MEAN_COSINE}")
        return EngineChoice("int8", extractor, {"engine": f"int8-{key}"}, check, note)
    return EngineChoice("float32", check=check, note=(
        f"engine float32: int8 features' cosine to float32 on {check['images']} validation images is "
        f"{check['mean_cosine']:.4f}, under {MIN_MEAN_COSINE}"))


def _missing_runtime() -> str | None:
    """The first module the int8 engine needs that cannot be imported, or None."""
    for module in ONNX_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            return module
    return None


def quantised_model_key(spec: ModelSpec, cuts: list[str], calibration: list[ImageRecord]) -> str:
    """What the quantised file depends on, hashed: weights, preprocessing, size, cuts and the
    calibration images' content."""
    text = json.dumps({
        "weights": spec.weights_identity, "preprocess": spec.preprocess, "image_size": spec.image_size,
        "cuts": list(cuts), "calibration": [record.sha256 for record in calibration], "format": ENGINE_FORMAT,
    }, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def quantised_frozen_part(model, spec: ModelSpec, cuts: list[str], calibration: list[ImageRecord],
                          cache_dir: str | Path | None) -> tuple[Path, str]:
    """The cached int8 ONNX file of the frozen part up to `cuts` (built if absent), and its key."""
    key = quantised_model_key(spec, cuts, calibration)
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_root()) / "int8-engine" / key
    path = folder / "frozen_int8.onnx"
    if path.is_file():
        return path, key
    folder.mkdir(parents=True, exist_ok=True)
    pixels = _calibration_pixels(calibration, spec.image_size)
    with staging_folder(folder) as work:
        _build_quantised(feature_extractor(model, cuts), pixels, work / path.name, work)
        write_text_atomically(folder / "key.json", json.dumps({"cuts": cuts, "images": len(pixels)}) + "\n")
        os.replace(work / path.name, path)
    return path, key


def _calibration_pixels(records: list[ImageRecord], image_size: int) -> np.ndarray:
    pixels = load_readable([r.path for r in records], image_size)
    if not len(pixels):
        raise TlearnError("--engine int8 needs training images to calibrate on, and none could be read")
    return pixels


def _build_quantised(extractor, calibration: np.ndarray, target: Path, work: Path) -> None:
    """Export `extractor` to ONNX (float32) and quantise it statically: per-channel int8 weights,
    uint8 activations (the issue measured int8 activations 25x slower in ONNX Runtime), QDQ.
    The preprocessing and the nodes giving the outputs stay float: quantised, the pooled
    outputs would be 8-bit values, and the preprocessing rounds the pixels (see conversion.py)."""
    import onnx
    from onnxruntime import quantization

    from ..conversion import CalibrationReader, export_onnx_float32
    from ..runtimes import native_output_silenced

    float32, prepared = work / "float32.onnx", work / "prepared.onnx"
    with native_output_silenced():
        export_onnx_float32(extractor, float32)
        quantization.quant_pre_process(str(float32), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        outputs = {output.name for output in graph.output}
        excluded = [node.name for node in graph.node
                    if "preprocess" in node.name or outputs.intersection(node.output)]
        quantization.quantize_static(
            str(prepared), str(target), CalibrationReader(calibration),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
            nodes_to_exclude=excluded)


def check_engine(keras_extractor, extractor: OnnxExtractor, records: list[ImageRecord], image_size: int) -> dict:
    """Feature cosine of the int8 engine to float32 on `records` (the fit cut's output)."""
    pixels = load_readable([r.path for r in records], image_size)
    if not len(pixels):
        return {"images": 0, "mean_cosine": 0.0, "min_cosine": 0.0}
    reference = _first(keras_extractor.predict_on_batch(pixels)).reshape(len(pixels), -1)
    quantised = _first(extractor.predict_on_batch(pixels)).reshape(len(pixels), -1)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(quantised, axis=1)
    cosine = np.sum(reference * quantised, axis=1) / np.maximum(norms, 1e-12)
    return {"images": len(pixels), "mean_cosine": round(float(cosine.mean()), 5),
            "min_cosine": round(float(cosine.min()), 5)}


def _first(outputs) -> np.ndarray:
    return np.asarray(outputs[0] if isinstance(outputs, (list, tuple)) else outputs, dtype=np.float32)
