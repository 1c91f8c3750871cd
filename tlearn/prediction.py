"""`predict`: class probabilities from an exported model: a run's SavedModel, a SavedModel
folder, or a LiteRT / ONNX file that `tlearn export` wrote (runtimes.py).

It runs the exported model, not the training code, so what it says is what a deployed model says.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Iterator, TypeVar

import numpy as np

from .data.check import visible_files
from .data.images import IMAGE_SUFFIXES, UnreadableImage, load_batches, probe
from .errors import TlearnError
from .run import Run
from .runtimes import ServedModel, open_model
from .settings import DEFAULT_MODELS_DIR, PredictSettings, settings_from


@dataclass
class Prediction:
    path: str
    label: str | None = None
    probability: float | None = None
    top_k: list[dict] = field(default_factory=list)  # [{"label", "probability"}, ...], best first
    error: str | None = None


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for images, globs expanded; in order.

    A path that matches nothing is kept, so that its row can say so.
    """
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found.extend(p for p in visible_files(path) if _looks_like_image(p))
        elif not path.exists() and glob.has_magic(text):
            found.extend(Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file())
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    try:
        probe(path)
        return True
    except UnreadableImage:
        return False


Row = TypeVar("Row")


class ImageStream(Generic[Row]):
    """One row per image of `paths`, in order, made batch by batch as they are iterated over.

    Iterate once; `len()` is the number of images, known before any is decoded.
    """

    def __init__(self, paths: list[Path], rows: Iterator[Row]):
        self.paths = paths
        self._rows = rows

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Row]:
        return self._rows


class PredictionStream(ImageStream[Prediction]):
    """Predictions of `paths`, in order, made batch by batch as they are iterated over."""


def iter_predictions(
    images: list[str | Path] | str | Path, *, model: str | Path | Run | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR, top_k: int = PredictSettings.top_k,
    batch_size: int = PredictSettings.batch_size,
) -> PredictionStream:
    """`predict`, one Prediction at a time: memory stays that of two batches however many
    images there are, and the first rows come while later images are still to be decoded.

    The run and the options are checked and the images found before this returns; the next
    batch decodes while the model works on the current one.
    """
    settings = settings_from(PredictSettings, locals())
    if isinstance(images, (str, Path)):
        images = [images]
    served = open_model(model, models_dir)
    if not settings.top_k <= len(served.class_names):
        raise TlearnError(
            f"--top-k must be between 1 and {len(served.class_names)} (the number of classes), got {top_k}"
        )
    paths = collect_images(images)
    if not paths:
        raise TlearnError(f"no images found in {', '.join(map(str, images))}")
    return PredictionStream(paths, _predicted(paths, served, settings))


def _predicted(paths: list[Path], served: ServedModel, settings: PredictSettings) -> Iterator[Prediction]:
    loaded_batches = load_batches(paths, served.image_size, settings.batch_size)
    for start, loaded in zip(range(0, len(paths), settings.batch_size), loaded_batches):
        results = [Prediction(str(path)) for path in paths[start : start + settings.batch_size]]
        for result, item in zip(results, loaded):
            if isinstance(item, UnreadableImage):
                result.error = str(item)
        readable = [(result, pixels) for result, pixels in zip(results, loaded) if result.error is None]
        if readable:
            # The pixels are those training saw, already at the model's size, where the SavedModel's
            # own resize is the identity: the same as giving it the decoded file. LiteRT and ONNX
            # files take exactly these pixels.
            probabilities = served.probabilities(np.stack([pixels for _, pixels in readable]))
            for (result, _), row in zip(readable, probabilities):
                _rank(result, row, served.class_names, settings.top_k)
        yield from results


def _rank(result: Prediction, probabilities: np.ndarray, class_names: list[str], top_k: int) -> None:
    best = np.argsort(-probabilities)[:top_k]
    result.top_k = [{"label": class_names[i], "probability": float(probabilities[i])} for i in best]
    result.label, result.probability = result.top_k[0]["label"], result.top_k[0]["probability"]


def predict(
    images: list[str | Path] | str | Path, *, model: str | Path | Run | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR, top_k: int = PredictSettings.top_k,
    batch_size: int = PredictSettings.batch_size,
) -> list[Prediction]:
    """Classify image files, folders or globs with a run's SavedModel or an exported file.

    `model` is a run directory (default: the newest run in `models_dir`), a SavedModel folder,
    or a .tflite / .onnx file from `tlearn export` (with the run beside it for class names
    and image size, which an .onnx file also carries itself). A file that cannot
    be read gets its `error` set and the others are still classified. Each result lists the
    `top_k` most likely classes. For many images, `iter_predictions` gives the same results
    one at a time, in bounded memory.
    """
    return list(iter_predictions(images, model=model, models_dir=models_dir, top_k=top_k, batch_size=batch_size))
