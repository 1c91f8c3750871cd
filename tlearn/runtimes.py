"""Running a classifier in any form tlearn exports: a run, a SavedModel folder, a LiteRT
(.tflite) or an ONNX (.onnx) file, all behind one `probabilities(pixels)` call.

Each takes the pixels tlearn's loader makes (data/images.load_rgb: float32 RGB 0-255 at the
model's size), so predict and the export verification run every format the same way. The
runtimes of LiteRT and ONNX are optional extras, imported only when such a file is used.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np

from .errors import TlearnError
from .run import Run, RunFiles
from .settings import DEFAULT_MODELS_DIR

LITERT_SUFFIX, ONNX_SUFFIX = ".tflite", ".onnx"
# What converting to ONNX and running it take: the "onnx" extra.
ONNX_MODULES = ("onnxruntime", "tf2onnx", "onnx")
ONNX_METADATA_PREFIX = "tlearn."  # metadata_props keys tlearn writes into its .onnx files
_RUN_SEARCH_DEPTH = 3  # RUN/export/model.tflite, RUN/saved_model, RUN/stages/fit/saved_model


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or a TlearnError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TlearnError(f'{purpose} needs {module.split(".")[0]}, which is not installed: '
                          f'pip install "tlearn[{extra}]"') from None


@dataclass
class ServedModel:
    """A loaded classifier of any format: what predict and the export verification call."""

    source: Path
    format: str  # saved_model, litert or onnx
    class_names: list[str]
    image_size: int
    _probabilities: object  # callable: float32 [N, S, S, 3] -> float32 [N, classes]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities of a batch of `image_size` x `image_size` RGB 0-255 pixels."""
        return np.asarray(self._probabilities(np.asarray(pixels, dtype=np.float32)), dtype=np.float32)


def open_model(model: str | Path | Run | None = None, models_dir: str | Path = DEFAULT_MODELS_DIR) -> ServedModel:
    """`model` as given to `predict --model`: a run (default: the newest in `models_dir`, served
    by its SavedModel), a SavedModel folder, or a .tflite / .onnx file."""
    if model is None or isinstance(model, Run) or RunFiles(Path(model)).metadata.is_file():
        run = Run.open(model, models_dir)
        if not run.files.saved_model.is_dir():
            raise TlearnError(f"{run.path} has no {run.files.saved_model.name}/: it is incomplete; fit it again")
        return open_saved_model(run.files.saved_model, run)
    path = Path(model)
    if not path.exists():
        raise TlearnError(f"--model {path}: no such run, folder or file")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise TlearnError(f"--model {path} is not a tlearn run (no tlearn.json), nor a SavedModel folder "
                              "(no saved_model.pb)")
        return open_saved_model(path, run_beside(path))
    if path.suffix.lower() == LITERT_SUFFIX:
        return open_litert(path)
    if path.suffix.lower() == ONNX_SUFFIX:
        return open_onnx(path)
    raise TlearnError(f"--model {path}: give a run, a SavedModel folder, a .tflite or an .onnx file")


def run_beside(path: Path) -> Run:
    """The run a SavedModel folder or an exported file lies in, for its class names and image size."""
    for folder in list(path.resolve().parents)[:_RUN_SEARCH_DEPTH]:
        if RunFiles(folder).metadata.is_file():
            return Run.open(folder)
    raise TlearnError(f"--model {path}: no tlearn run (tlearn.json) in the folders above it, so its class "
                      "names and image size are unknown: keep it inside the run folder it came from")


def open_saved_model(folder: Path, run: Run) -> ServedModel:
    from .export import SERVING_INPUT, load_serving_function

    serve = load_serving_function(folder)

    def probabilities(pixels):
        (output,) = serve(**{SERVING_INPUT: pixels}).values()
        return output.numpy()

    return ServedModel(folder, "saved_model", run.class_names, run.spec.image_size, probabilities)


def open_litert(path: Path, run: Run | None = None) -> ServedModel:
    """A .tflite file through ai-edge-litert's interpreter (TensorFlow's own is deprecated)."""
    interpreter_module = require("ai_edge_litert.interpreter", "litert", "running a .tflite model")
    run = run or run_beside(path)
    with native_output_silenced():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
        interpreter = interpreter_module.Interpreter(model_path=str(path))
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    allocated = [None]  # the batch size the tensors are allocated for

    def probabilities(pixels):
        if allocated[0] != len(pixels):
            with native_output_silenced():
                interpreter.resize_tensor_input(input_index, list(pixels.shape))
                interpreter.allocate_tensors()
            allocated[0] = len(pixels)
        interpreter.set_tensor(input_index, pixels)
        interpreter.invoke()
        return interpreter.get_tensor(output_index).copy()

    return ServedModel(path, "litert", run.class_names, run.spec.image_size, probabilities)


def open_onnx(path: Path, run: Run | None = None) -> ServedModel:
    """An .onnx file through onnxruntime; class names and image size from its metadata, else its run."""
    onnxruntime = require("onnxruntime", "onnx", "running an .onnx model")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the quantized graphs' notes are not the user's concern
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    input_name = session.get_inputs()[0].name
    if run is None and ONNX_METADATA_PREFIX + "class_names" in metadata:
        class_names = json.loads(metadata[ONNX_METADATA_PREFIX + "class_names"])
        image_size = int(metadata[ONNX_METADATA_PREFIX + "image_size"])
    else:
        run = run or run_beside(path)
        class_names, image_size = run.class_names, run.spec.image_size
    return ServedModel(path, "onnx", class_names, image_size,
                       lambda pixels: session.run(None, {input_name: pixels})[0])


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    """Converters and runtimes write notes from C++ straight to stdout and stderr: keep them for a failure only."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            for fd, original in zip((1, 2), saved):
                os.dup2(original, fd)
                os.close(original)
            if failed:
                capture.seek(0)
                sys.stderr.write(capture.read().decode(errors="replace")[-4000:])
