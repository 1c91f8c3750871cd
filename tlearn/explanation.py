"""Grad-CAM: which parts of an image made the classifier decide as it did.

The heatmap is Grad-CAM (Selvaraju et al., 2017) at the base's last convolution: its channels
weighted by the mean gradient of the class score over each channel, summed, ReLU'd and scaled
to [0, 1]. VGG16 is a model nested in the classifier, so its layers are called one by one
here, between the classifier's own layers before it (resize, preprocessing) and after it
(the head), whatever those are: the score is the logit of the class where the output layer
exposes one, else its probability.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from .atomic import write_atomically
from .data.images import UnreadableImage, decode_rgb, resize_for_model
from .errors import TlearnError
from .model import BASE_NAME, base_of
from .prediction import ImageStream, collect_images
from .run import Run
from .settings import DEFAULT_EXPLANATIONS_DIR, DEFAULT_MODELS_DIR, ExplainSettings, settings_from

CONV_LAYER = "block5_conv3"  # VGG16's last convolution: the finest map that still sees whole objects
COLORMAP = "jet"  # Grad-CAM's customary map: red = most evidence, blue = none
GALLERY_THUMBNAIL = 256  # longest side, in pixels, of the error gallery's pictures
ERRORS_FOLDER = "errors"
WORST_ERRORS_CSV = "worst_errors.csv"
_DISPLAY_SIDE = 448  # longest side of each picture in an explanation figure


def gradcam(
    model: keras.Model, pixels: np.ndarray, class_index: int | Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and Grad-CAM heatmaps of `pixels` under the classifier `model`.

    `pixels`: one H x W x 3 image or a batch N x H x W x 3, RGB 0-255 at the model's size
    (what data.images.load_rgb returns). `class_index`: the class to explain, one for all
    or one per image; default each image's predicted class. Returns (probabilities N x
    classes, heatmaps N x h x w in [0, 1], h x w being block5_conv3's grid: 14 x 14 at 224 px).
    """
    batch = np.asarray(pixels, dtype=np.float32)
    single = batch.ndim == 3
    batch = batch[None] if single else batch
    heatmaps, probabilities = _forward(model, tf.convert_to_tensor(batch), class_index)
    probabilities, heatmaps = probabilities.numpy(), heatmaps.numpy()
    return (probabilities[0], heatmaps[0]) if single else (probabilities, heatmaps)


def _forward(model: keras.Model, batch: tf.Tensor, class_index) -> tuple[tf.Tensor, tf.Tensor]:
    """(heatmaps, probabilities) of one pass through the model, the base layer by layer."""
    base_position = [layer.name for layer in model.layers].index(BASE_NAME)
    before, after = model.layers[1:base_position], model.layers[base_position + 1 :]
    with tf.GradientTape() as tape:
        x = batch
        for layer in before:  # resize (the identity at the model's size) and preprocessing
            x = layer(x)
        for layer in base_of(model).layers[1:]:
            x = layer(x, training=False)
            if layer.name == CONV_LAYER:
                convolution = x
                tape.watch(convolution)
        for layer in after[:-1]:
            x = layer(x, training=False)
        # The output layer turns the logits into (tempered) probabilities. Grad-CAM follows the
        # logit: a probability near 1 has almost no gradient and would leave an empty heatmap.
        logits = tf.cast(x, tf.float32)
        probabilities = tf.cast(after[-1](x, training=False), tf.float32)
        chosen = _chosen_classes(class_index, probabilities)
        score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
    gradients = tf.cast(tape.gradient(score, convolution), tf.float32)
    return _heatmaps(tf.cast(convolution, tf.float32), gradients), probabilities


def _chosen_classes(class_index, probabilities: tf.Tensor) -> tf.Tensor:
    count, classes = probabilities.shape
    if class_index is None:
        return tf.argmax(probabilities, axis=1)[:, None]
    chosen = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (count,))
    if not ((chosen >= 0) & (chosen < classes)).all():
        raise ValueError(f"class_index must be between 0 and {classes - 1}, got {class_index}")
    return tf.constant(chosen[:, None])


def _heatmaps(convolution: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
    """Channels weighted by their mean gradient, summed, ReLU'd and scaled to [0, 1] per image."""
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    heatmaps = tf.nn.relu(tf.reduce_sum(convolution * weights, axis=-1))
    peaks = tf.reduce_max(heatmaps, axis=(1, 2), keepdims=True)
    return tf.math.divide_no_nan(heatmaps, peaks)  # no evidence at all: an all-zero map


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = ExplainSettings.alpha) -> np.ndarray:
    """`heatmap` (values in [0, 1], any grid) coloured and blended over `image` (H x W x 3).

    The heatmap is upsampled smoothly (bicubic) to the whole image: the model saw the image
    stretched to a square, so stretching the map back puts each cell over what it saw.
    Returns H x W x 3 uint8 RGB.
    """
    from matplotlib import colormaps

    height, width = image.shape[:2]
    upsampled = Image.fromarray(np.asarray(heatmap, dtype=np.float32)).resize((width, height), Image.BICUBIC)
    colours = colormaps[COLORMAP](np.clip(np.asarray(upsampled), 0, 1))[..., :3] * 255
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _shrunk(pixels: np.ndarray, longest_side: int) -> np.ndarray:
    """`pixels` (uint8) reduced to at most `longest_side` on its longer side, for showing."""
    image = Image.fromarray(pixels)
    image.thumbnail((longest_side, longest_side), Image.LANCZOS)
    return np.asarray(image)


@dataclass
class Explanation:
    """One image's explanation: the predicted class, its probability and the figure written."""

    path: str
    label: str | None = None
    probability: float | None = None
    figure: str | None = None  # the file written: the image beside its Grad-CAM overlay
    error: str | None = None  # why the image could not be explained (then nothing was written)


class ExplanationStream(ImageStream[Explanation]):
    """Explanations of `paths`, in order, made batch by batch as they are iterated over; the
    figures go to `out`."""

    def __init__(self, paths: list[Path], out: Path, rows: Iterator[Explanation]):
        super().__init__(paths, rows)
        self.out = out


def iter_explanations(
    images: list[str | Path] | str | Path, *, model: str | Path | Run | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR, out: str | Path = DEFAULT_EXPLANATIONS_DIR,
    batch_size: int = ExplainSettings.batch_size, alpha: float = ExplainSettings.alpha,
) -> ExplanationStream:
    """`explain`, one Explanation at a time, each figure written as its row comes.

    The run and the options are checked and the images found before this returns; a path
    that does not exist is a TlearnError then, before anything is computed.
    """
    settings = settings_from(ExplainSettings, locals())
    if isinstance(images, (str, Path)):
        images = [images]
    run = Run.open(model, models_dir)
    paths = collect_images(images)
    if not paths:
        raise TlearnError(f"no images found in {', '.join(map(str, images))}")
    missing = [path for path in paths if not path.exists()]
    if missing:
        raise TlearnError(f"{missing[0]}: no such file or folder (give image files, folders or globs)")
    classifier = run.load_model()
    out = Path(out)
    return ExplanationStream(paths, out, _explained(paths, classifier, run, out, settings))


def _explained(paths: list[Path], classifier, run: Run, out: Path, settings: ExplainSettings) -> Iterator[Explanation]:
    names = _figure_names(paths)
    for start in range(0, len(paths), settings.batch_size):
        chunk = paths[start : start + settings.batch_size]
        results, loaded = [Explanation(str(path)) for path in chunk], {}
        for index, path in enumerate(chunk):
            try:
                loaded[index] = _model_and_display_pixels(path, run.spec.image_size, _DISPLAY_SIDE)
            except UnreadableImage as error:
                results[index].error = str(error)
        if loaded:
            probabilities, heatmaps = gradcam(classifier, np.stack([pixels for pixels, _ in loaded.values()]))
            out.mkdir(parents=True, exist_ok=True)
            for (index, (_, shown)), row, heatmap in zip(loaded.items(), probabilities, heatmaps):
                result, best = results[index], int(row.argmax())
                result.label, result.probability = run.class_names[best], float(row[best])
                figure = out / names[start + index]
                _write_figure(figure, shown, heatmap, f"{result.label}  {result.probability:.3f}",
                              Path(result.path).name, settings.alpha)
                result.figure = str(figure)
        yield from results


def _model_and_display_pixels(path: Path, size: int, longest_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixels the model sees (load_rgb's) and a copy at most `longest_side` to show, from
    one decode; the full-resolution image is not kept."""
    image = decode_rgb(path)
    return resize_for_model(image, size), _shrunk(image, longest_side)


def _figure_names(paths: list[Path]) -> list[str]:
    """`<image name>-gradcam.jpg` for each path; `-2`, `-3`, ... where two images share a name."""
    names, taken = [], set()
    for path in paths:
        name, number = f"{path.stem}-gradcam.jpg", 1
        while name in taken:
            number += 1
            name = f"{path.stem}-{number}-gradcam.jpg"
        taken.add(name)
        names.append(name)
    return names


def _write_figure(path: Path, shown: np.ndarray, heatmap: np.ndarray, title: str, caption: str, alpha: float) -> None:
    """The image beside its overlay, the prediction as the title, as one JPEG."""
    import matplotlib.pyplot as plt

    from .report import fonts_for

    with fonts_for([title, caption]):
        height, width = shown.shape[:2]
        # Two pictures side by side, plus room for the titles: no band of white above landscapes.
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, min(4.5 * height / width, 9) + 1))
        left.imshow(shown)
        left.set_title(caption, fontsize=9)
        right.imshow(overlay(shown, heatmap, alpha))
        right.set_title("Grad-CAM: where the evidence for it lies", fontsize=9)
        for axes in (left, right):
            axes.axis("off")
        figure.suptitle(f"predicted: {title}", fontsize=13)
        figure.tight_layout()
        figure.canvas.draw()
        pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
        plt.close(figure)
    # The title in the file's comment too, for programs that sort or check the figures.
    _write_jpeg(path, pixels, comment=f"{caption}: predicted {title}")


def explain(
    images: list[str | Path] | str | Path, *, model: str | Path | Run | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR, out: str | Path = DEFAULT_EXPLANATIONS_DIR,
    batch_size: int = ExplainSettings.batch_size, alpha: float = ExplainSettings.alpha,
) -> list[Explanation]:
    """Write a Grad-CAM figure for each of `images` (files, folders searched recursively, globs).

    `model` is a run directory (default: the newest run in `models_dir`). Each figure,
    `out/<image name>-gradcam.jpg`, shows the image beside a heatmap of the evidence for the
    predicted class, with that class and its probability as the title. A file that cannot be
    read gets its `error` set and no figure; the others are still explained.
    """
    return list(iter_explanations(images, model=model, models_dir=models_dir, out=out, batch_size=batch_size,
                                  alpha=alpha))


def write_error_gallery(model: keras.Model, wrong_rows: list[dict], report_dir: Path, limit: int = 12) -> list[dict]:
    """A thumbnail and a Grad-CAM overlay (of the predicted class) of each of the first `limit`
    of `wrong_rows` (dicts of path, true, predicted, probability; most confident first) in
    `report_dir/errors/`, and `report_dir/worst_errors.csv` listing them with their pictures'
    paths relative to `report_dir`. An image that can no longer be read is left out.
    Returns the CSV's rows.
    """
    report_dir = Path(report_dir)
    size = int(model.get_layer("resize").height)
    rows = []
    for row in wrong_rows:
        if len(rows) == limit:
            break
        try:
            pixels, shown = _model_and_display_pixels(Path(row["path"]), size, GALLERY_THUMBNAIL)
        except UnreadableImage:
            continue
        number = len(rows) + 1
        thumbnail, heatmap_file = f"{ERRORS_FOLDER}/{number:02d}-thumb.jpg", f"{ERRORS_FOLDER}/{number:02d}-gradcam.jpg"
        _, heatmap = gradcam(model, pixels)
        (report_dir / ERRORS_FOLDER).mkdir(parents=True, exist_ok=True)
        _write_jpeg(report_dir / thumbnail, shown)
        _write_jpeg(report_dir / heatmap_file, overlay(shown, heatmap, ExplainSettings.alpha))
        rows.append({**{key: row[key] for key in ("path", "true", "predicted", "probability")},
                     "thumbnail": thumbnail, "gradcam": heatmap_file})
    _write_gallery_csv(report_dir / WORST_ERRORS_CSV, rows)
    return rows


def _write_jpeg(path: Path, pixels: np.ndarray, comment: str = "") -> None:
    write_atomically(path, lambda handle: Image.fromarray(pixels).save(
        handle, format="JPEG", quality=88, comment=comment.encode("utf-8")))


def _write_gallery_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "true", "predicted", "probability", "thumbnail", "gradcam"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, lambda handle: handle.write(buffer.getvalue().encode("utf-8")))
