"""`predict`: class probabilities from a run's exported SavedModel.

It runs the SavedModel, not the training code, so what it says is what a deployed model says.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.check import visible_files
from .data.images import IMAGE_SUFFIXES, UnreadableImage, load_rgb, probe
from .errors import TlearnError
from .export import SERVING_INPUT, load_serving_function
from .run import Run
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


def predict(
    images: list[str | Path] | str | Path, *, model: str | Path | Run | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR, top_k: int = PredictSettings.top_k,
    batch_size: int = PredictSettings.batch_size,
) -> list[Prediction]:
    """Classify image files, folders or globs with a run's SavedModel.

    `model` is a run directory (default: the newest run in `models_dir`). A file that cannot
    be read gets its `error` set and the others are still classified. Each result lists the
    `top_k` most likely classes.
    """
    settings = settings_from(PredictSettings, locals())
    if isinstance(images, (str, Path)):
        images = [images]
    run = Run.open(model, models_dir)
    class_names = run.class_names
    if not settings.top_k <= len(class_names):
        raise TlearnError(f"--top-k must be between 1 and {len(class_names)} (the number of classes), got {top_k}")
    if not run.files.saved_model.is_dir():
        raise TlearnError(f"{run.path} has no {run.files.saved_model.name}/: it is incomplete; fit it again")
    serve = load_serving_function(run.files.saved_model)

    paths = collect_images(images)
    if not paths:
        raise TlearnError(f"no images found in {', '.join(map(str, images))}")
    results = [Prediction(str(path)) for path in paths]
    readable: list[tuple[Prediction, np.ndarray]] = []
    for result, path in zip(results, paths):
        try:
            readable.append((result, load_rgb(path, run.spec.image_size)))
        except UnreadableImage as error:
            result.error = str(error)
    for start in range(0, len(readable), settings.batch_size):
        chunk = readable[start : start + settings.batch_size]
        pixels = np.stack([pixels for _, pixels in chunk]).astype(np.float32)
        (probabilities,) = serve(**{SERVING_INPUT: pixels}).values()
        for (result, _), row in zip(chunk, probabilities.numpy()):
            best = np.argsort(-row)[: settings.top_k]
            result.top_k = [{"label": class_names[i], "probability": float(row[i])} for i in best]
            result.label, result.probability = result.top_k[0]["label"], result.top_k[0]["probability"]
    return results
