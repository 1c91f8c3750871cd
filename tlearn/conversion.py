"""`export`: a run's classifier as a LiteRT (.tflite) or ONNX (.onnx) file, float32 or quantized.

Neither format has the antialiased resize the SavedModel starts with (TensorFlow's
ScaleAndTranslate op), so their graph starts after it: a fixed-size float32 RGB 0-255 input at
the run's image size, resized beforehand with data/images.resize_for_model, as predict and
training do. Each file is converted in a staging folder inside RUN/export/, verified on the
run's test split (verification.py), and only then renamed into place: an export that fails or
is interrupted leaves no file that looks done.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import staging_folder
from .data.images import RESIZE, load_readable
from .data.split import representative_records
from .errors import TlearnError
from .run import Run
from .runtimes import LITERT_SUFFIX, ONNX_METADATA_PREFIX, ONNX_MODULES, ONNX_SUFFIX, native_output_silenced, require
from .settings import DEFAULT_MODELS_DIR, ExportSettings, settings_from
from .verification import TestImages, read_verification, record_verification, verification_table, verify

EXPORT_INPUT = "pixels"
_BATCH = 16


@dataclass
class ExportResult:
    path: Path  # the exported file, in RUN/export/
    verification: dict  # its entry in RUN/export/verification.json
    table: str  # every verified export of the run, one row each
    warnings: list[str] = field(default_factory=list)


def export_file_name(format: str, quantize: str) -> str:
    return f"model_{quantize}{LITERT_SUFFIX if format == 'litert' else ONNX_SUFFIX}"


def export_model(
    run: str | Path | Run | None = None, *, models_dir: str | Path = DEFAULT_MODELS_DIR,
    format: str = ExportSettings.format, quantize: str = ExportSettings.quantize,
    representative_images: int = ExportSettings.representative_images, data_dir: str | Path | None = None,
) -> ExportResult:
    """Export a run (default: the newest in `models_dir`) as RUN/export/model_<quantize>.tflite
    or .onnx, verified against its SavedModel on the test split (RUN/export/verification.json).

    `format`: litert or onnx; `quantize`: none, float16, dynamic or int8 (int8 calibrates on
    `representative_images` training images). `data_dir`: where the run's dataset is now, if it
    moved. The exported graph takes float32 [N, S, S, 3] RGB 0-255 pixels already resized to the
    run's image size S with tlearn's resize_for_model; it computes in float32.
    """
    settings = settings_from(ExportSettings, locals())
    _require_converter(settings.format)
    run = Run.open(run, models_dir)
    split = run.read_split(data_dir, subsets=("train", "test") if settings.quantize == "int8" else ("test",))
    test = TestImages.load(run, split["test"])
    calibration = _calibration_pixels(run, split["train"], settings.representative_images) \
        if settings.quantize == "int8" else None
    graph = fixed_size_graph(run)
    target = run.files.root / "export" / export_file_name(settings.format, settings.quantize)
    with staging_folder(target.parent) as staging:
        staged = staging / target.name
        with native_output_silenced():
            if settings.format == "litert":
                _convert_litert(graph, staged, settings.quantize, calibration, staging)
            else:
                _convert_onnx(graph, staged, settings.quantize, calibration, run, staging)
        entry, missed = verify(staged, settings.format, settings.quantize, run, test,
                                 read_verification(target.parent))
        entries = record_verification(target.parent, entry)  # first, so a file in place is always verified
        os.replace(staged, target)
    return ExportResult(target, entry, verification_table(entries), missed)


def _require_converter(format: str) -> None:
    if format == "litert":
        require("ai_edge_litert.interpreter", "litert", "--format litert")
    else:
        for module in ONNX_MODULES:
            require(module, "onnx", "--format onnx")


def fixed_size_graph(run: Run):
    """The run's classifier from its preprocessing layer's input to its output, in float32:
    whatever layers follow the base, without the resize that LiteRT and ONNX lack."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # exports compute in float32 whatever training used
    try:
        model = run.load_model()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return keras.Model(model.get_layer("preprocess").input, model.output, name="tlearn_fixed_size")


def _calibration_pixels(run: Run, train_records, count: int) -> np.ndarray:
    """Up to `count` training images, stratified by class, in an order seeded by the run's seed."""
    chosen = representative_records(train_records, run.metadata.split.seed, count)
    pixels = load_readable([record.path for record in chosen], run.spec.image_size, _BATCH)
    if not len(pixels):
        raise TlearnError(f"--quantize int8 needs training images to calibrate on, and none of {run.path}'s "
                          "could be read: pass the dataset's place with --data")
    return pixels


def _convert_litert(graph, path: Path, quantize: str, calibration: np.ndarray | None, work: Path) -> None:
    """Keras's own LiteRT route (SavedModel, then TFLiteConverter), with the converter in hand
    so that int8 can leave the preprocessing in float (see _quantize_litert_int8)."""
    import tensorflow as tf

    size = graph.input.shape[1]
    saved_model = work / "litert_source"
    graph.export(str(saved_model), format="tf_saved_model", verbose=False,
                 input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=EXPORT_INPUT)])
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops: the plain runtime runs it
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        path.write_bytes(_quantize_litert_int8(converter, calibration))
    else:
        path.write_bytes(converter.convert())


def _quantize_litert_int8(converter, calibration: np.ndarray) -> bytes:
    """int8 weights and activations, float32 pixels in and probabilities out, and the
    preprocessing layer's few elementwise ops left in float32.

    Quantized, those ops round the normalised pixels three more times at one scale shared by
    all three channels before the first convolution has seen them; on the weather run that
    alone turned four uncertain test images (top-two margin under 0.5) to another class (97.6%
    agreement), and leaving them in float32 kept 100% at the same size and speed. TFLite's
    selective quantization takes the ops by their output tensors, which carry the layer's name.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    converter.representative_dataset = lambda: ([pixels[None]] for pixels in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    debugger = tf.lite.experimental.QuantizationDebugger(  # calibrates once; quantizes on request
        converter=converter, debug_dataset=lambda: ([pixels[None]] for pixels in calibration[:1]))
    tensors = Interpreter(model_content=debugger.calibrated_model).get_tensor_details()
    preprocessing = [tensor["name"] for tensor in tensors if "/preprocess" in tensor["name"]]
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=preprocessing)
    return debugger.get_nondebug_quantized_model()


def export_onnx_float32(graph, path: Path) -> None:
    """`graph` (fixed-size RGB pixels in) as a float32 ONNX file through Keras and tf2onnx,
    with its input named EXPORT_INPUT."""
    import tensorflow as tf

    size = graph.input.shape[1]
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    graph.export(str(path), format="onnx", verbose=False,
                 input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=EXPORT_INPUT)])


class CalibrationReader:
    """ONNX Runtime's calibration data reader over pixels, in batches: its MinMax ranges are the
    same whatever the batching, and batches keep the float32 calibration pass's cores busy."""

    def __init__(self, pixels: np.ndarray, batch_size: int = _BATCH):
        self.batches = iter([{EXPORT_INPUT: pixels[i:i + batch_size]} for i in range(0, len(pixels), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def _convert_onnx(graph, path: Path, quantize: str, calibration: np.ndarray | None, run: Run, work: Path) -> None:
    import onnx

    float32 = work / "float32.onnx"
    export_onnx_float32(graph, float32)
    if quantize == "none":
        model = onnx.load(str(float32))
    elif quantize == "float16":
        float16 = require("onnxconverter_common.float16", "onnx", "--format onnx --quantize float16")
        with warnings.catch_warnings():  # one warning per weight too small for float16: that is what float16 is
            warnings.simplefilter("ignore", UserWarning)
            model = float16.convert_float_to_float16(onnx.load(str(float32)), keep_io_types=True)
    else:
        model = onnx.load(str(_quantize_onnx(float32, quantize, calibration, work)))
    _add_onnx_metadata(model, run, quantize)
    onnx.save(model, str(path))


def _quantize_onnx(float32: Path, quantize: str, calibration: np.ndarray | None, work: Path) -> Path:
    from onnxruntime import quantization

    prepared, quantized = work / "prepared.onnx", work / "quantized.onnx"
    quantization.quant_pre_process(str(float32), str(prepared))  # shapes and folding the quantizer needs
    if quantize == "dynamic":
        quantization.quantize_dynamic(str(prepared), str(quantized), weight_type=quantization.QuantType.QInt8)
        return quantized
    quantization.quantize_static(
        str(prepared), str(quantized), CalibrationReader(calibration), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8)
    return quantized


def _add_onnx_metadata(model, run: Run, quantize: str) -> None:
    """What predict needs without the run: class names, image size and how the input is made."""
    spec = run.spec
    properties = {
        "class_names": json.dumps(spec.class_names), "image_size": str(spec.image_size),
        "input": f"float32 [N, {spec.image_size}, {spec.image_size}, 3] RGB 0-255, resized from the decoded image "
                 f"with tlearn's resize_for_model ({RESIZE['interpolation']}, antialias={RESIZE['antialias']})",
        "preprocess": f"{spec.preprocess} (inside the graph)", "quantize": quantize,
        "tlearn_version": __version__, "stage": run.last_stage.name,
    }
    for key, value in properties.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_PREFIX + key, value
