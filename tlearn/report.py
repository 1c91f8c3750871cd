"""Metrics, tables and pictures a person reads to decide whether to trust a model."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import warnings
from pathlib import Path
from typing import Iterator

import matplotlib

matplotlib.use("Agg")  # files only: works on servers and in CI without a display
import matplotlib.pyplot as plt
from matplotlib import font_manager, ft2font, transforms
import numpy as np
from scipy.stats import binomtest, bootstrap
from sklearn.metrics import classification_report, confusion_matrix

from .calibration import ScoredImages, plot_reliability


# Resamples of the macro-F1 bootstrap: the interval's ends move by under 0.005 between seeds
# at this count, and 200 images take a few tens of milliseconds.
BOOTSTRAP_RESAMPLES = 2000
# A fixed seed: the same predictions give the same interval in every report.
BOOTSTRAP_SEED = 0


def classification_metrics(true_labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy and macro-F1 with 95% intervals, per-class precision/recall/F1/support and
    the confusion matrix.

    `accuracy_ci95` is the Wilson score interval; `macro_f1_ci95` a bootstrap (BCa) interval
    over the images, resampling (true, predicted) pairs together.
    """
    predicted = probabilities.argmax(axis=1)
    indices = list(range(len(class_names)))
    per_class = classification_report(
        true_labels, predicted, labels=indices, target_names=class_names, output_dict=True, zero_division=0
    )
    correct = int(np.sum(predicted == true_labels))
    return {
        "accuracy": correct / len(true_labels) if len(true_labels) else 0.0,
        "accuracy_ci95": wilson_interval(correct, len(true_labels)),
        "macro_f1_ci95": macro_f1_interval(np.asarray(true_labels), predicted, len(class_names)),
        "images": int(len(true_labels)),
        "per_class": {name: {k: float(v) for k, v in per_class[name].items()} for name in class_names},
        "macro_avg": {k: float(v) for k, v in per_class["macro avg"].items()},
        "confusion_matrix": confusion_matrix(true_labels, predicted, labels=indices).tolist(),
    }


def wilson_interval(successes: int, trials: int) -> list[float]:
    """The Wilson score 95% interval of a proportion; [0, 1] (no evidence) for no trials."""
    if trials == 0:
        return [0.0, 1.0]
    interval = binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    return [float(interval.low), float(interval.high)]


def macro_f1_interval(true_labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> list[float]:
    """A bootstrap 95% interval of the macro-F1 of `predicted`, resampling images.

    Degenerate cases give a point or no evidence rather than a warning: fewer than two
    images give [0, 1]; resamples that all score the same give that score at both ends.
    """
    if len(true_labels) < 2:
        return [0.0, 1.0]

    def statistic(true_rows, predicted_rows, axis=-1):
        return macro_f1(true_rows, predicted_rows, num_classes)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on a degenerate distribution warns, then gives NaN
        result = bootstrap(
            (true_labels, predicted), statistic, paired=True, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
            confidence_level=0.95, method="BCa", rng=np.random.default_rng(BOOTSTRAP_SEED),
        )
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # every resample scored alike
        scores = result.bootstrap_distribution
        low, high = np.percentile(scores, [2.5, 97.5])
    return [float(low), float(high)]


def macro_f1(true_labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 over `num_classes` classes along the last axis, as scikit-learn computes it
    (zero_division=0: a class never true nor predicted scores 0); any leading axes are kept."""
    true_labels, predicted = np.asarray(true_labels), np.asarray(predicted)
    leading, n = true_labels.shape[:-1], true_labels.shape[-1]
    rows = int(np.prod(leading))
    # One confusion matrix per row of the leading axes, from one bincount.
    codes = (np.arange(rows)[:, None] * num_classes + true_labels.reshape(rows, n)) * num_classes
    codes = codes + predicted.reshape(rows, n)
    matrices = np.bincount(codes.ravel(), minlength=rows * num_classes**2).reshape(rows, num_classes, num_classes)
    hits = np.diagonal(matrices, axis1=1, axis2=2)
    denominator = matrices.sum(axis=1) + matrices.sum(axis=2)  # predicted + true per class
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * hits / denominator, 0.0)
    return f1.mean(axis=1).reshape(leading)


def format_classification_table(metrics: dict, class_names: list[str]) -> str:
    width = max(12, *(len(name) for name in class_names))
    lines = [f"{'':>{width}}  precision  recall  f1-score  support"]
    for name in class_names:
        row = metrics["per_class"][name]
        lines.append(
            f"{name:>{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1-score']:8.3f}  {int(row['support']):7d}"
        )
    macro = metrics["macro_avg"]
    lines.append(
        f"{'macro avg':>{width}}  {macro['precision']:9.3f}  {macro['recall']:6.3f}  {macro['f1-score']:8.3f}  {metrics['images']:7d}"
    )
    lines.append(f"{'accuracy':>{width}}  {metrics['accuracy']:.3f} on {metrics['images']} images"
                 f"{_interval(metrics.get('accuracy_ci95'))}")
    lines.append(f"{'macro F1':>{width}}  {macro['f1-score']:.3f}{_interval(metrics.get('macro_f1_ci95'))}")
    if "calibration" in metrics:
        lines.append(f"{'calibration':>{width}}  {format_calibration(metrics['calibration'])}")
    return "\n".join(lines) + "\n"


def format_calibration(calibration: dict) -> str:
    """One line: the temperature and the ECE without and with it."""
    return (f"temperature {calibration['temperature']:.2f}, expected calibration error "
            f"{calibration['ece_uncalibrated']:.3f} before, {calibration['ece']:.3f} after ({calibration['bins']} bins)")


def _interval(bounds: list[float] | None) -> str:
    return f" (95% CI {bounds[0]:.3f}-{bounds[1]:.3f})" if bounds else ""


@contextlib.contextmanager
def fonts_for(texts: list[str]) -> Iterator[None]:
    """Draw `texts` (class names in any script) with installed fonts that have their glyphs.

    Matplotlib's default font lacks Korean, Chinese, Arabic, ...; listing fonts that have
    them after it makes matplotlib fall back glyph by glyph. Where no installed font has a
    glyph it still draws a box, without a warning per missing glyph.
    """
    fallbacks = _fonts_with_glyphs(frozenset("".join(texts)))
    with plt.rc_context({"font.family": [*plt.rcParams["font.family"], *fallbacks]}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        yield


@functools.lru_cache(maxsize=64)
def _fonts_with_glyphs(characters: frozenset[str]) -> tuple[str, ...]:
    """Names of installed fonts that together have the glyphs the default font lacks."""
    missing = set(characters) - _glyphs(font_manager.findfont(font_manager.FontProperties()))
    fonts: list[str] = []
    for entry in font_manager.fontManager.ttflist:
        if not missing:
            break
        if entry.name.startswith("Last Resort"):  # matplotlib's font of placeholder boxes
            continue
        covered = missing & _glyphs(entry.fname)
        if covered and entry.name not in fonts:
            fonts.append(entry.name)
            missing -= covered
    return tuple(fonts)


@functools.lru_cache(maxsize=None)
def _glyphs(font_file: str) -> frozenset[str]:
    try:
        return frozenset(chr(code) for code in ft2font.FT2Font(font_file).get_charmap())
    except (OSError, RuntimeError, ValueError):  # a font file FreeType cannot read
        return frozenset()


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path, title: str) -> None:
    with fonts_for([*class_names, title]):
        _plot_confusion_matrix(matrix, class_names, path, title)


def _plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path, title: str) -> None:
    counts = np.array(matrix)
    size = max(4.5, 0.7 * len(class_names) + 2.5)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(counts, cmap="Blues")
    axes.set(
        xticks=range(len(class_names)), yticks=range(len(class_names)),
        xticklabels=class_names, yticklabels=class_names,
        xlabel="predicted", ylabel="true", title=title,
    )
    plt.setp(axes.get_xticklabels(), rotation=45, ha="right")
    threshold = counts.max() / 2 if counts.size else 0
    for (row, column), count in np.ndenumerate(counts):
        axes.text(column, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_history(stages: list, report_dir: Path) -> None:
    """history.csv and curves.png: loss and accuracy per epoch, every stage on one time axis.

    `stages` are run.StageRecord's (name, history, best_epoch), oldest first."""
    rows, boundaries, best, epoch = [], [], [], 0
    for stage in stages:
        history = stage.history
        best.append(epoch + stage.best_epoch)  # the epoch whose weights the stage kept
        for index in range(len(history["loss"])):
            epoch += 1
            rows.append({"epoch": epoch, "stage": stage.name, **{k: history[k][index] for k in _CURVES if k in history}})
        boundaries.append((epoch, stage.name))
    with open(report_dir / "history.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "stage", *_CURVES])
        writer.writeheader()
        writer.writerows(rows)

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in rows]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            axes.plot(epochs, [row.get(prefix + metric, np.nan) for row in rows], marker=".", label=label)
        kept = [row for row in rows if row["epoch"] in best and "val_" + metric in row]
        axes.plot([row["epoch"] for row in kept], [row["val_" + metric] for row in kept], "k*", markersize=11,
                  label="kept (best validation loss)")
        labels_at = transforms.blended_transform_factory(axes.transData, axes.transAxes)
        start = 0
        for end, name in boundaries:
            if len(boundaries) > 1:
                axes.text((start + end + 1) / 2, 0.5, name, transform=labels_at, ha="center", color="grey", alpha=0.6)
            if end != boundaries[-1][0]:
                axes.axvline(end + 0.5, color="grey", linestyle="--")
            start = end
        axes.set(xlabel="epoch", ylabel=metric, title=metric)
        axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(report_dir / "curves.png", dpi=120)
    plt.close(figure)


_CURVES = ("loss", "accuracy", "val_loss", "val_accuracy")


def prediction_rows(scored: ScoredImages, class_names: list[str]) -> list[dict]:
    """One row per image (path, true, predicted, probability of the predicted class): the
    wrong ones first, most confident first; then the right ones, least confident first."""
    probabilities = scored.probabilities
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    wrong = predicted != scored.labels
    order = sorted(range(len(predicted)), key=lambda i: (not wrong[i], -confidence[i] if wrong[i] else confidence[i]))
    return [
        {"path": scored.paths[i], "true": class_names[scored.labels[i]], "predicted": class_names[predicted[i]],
         "probability": float(confidence[i])}
        for i in order
    ]


def write_calibration_report(scored: ScoredImages, class_names: list[str], report_dir: Path, title: str) -> None:
    """reliability.png (before and after temperature scaling) and predictions.csv in `report_dir`."""
    plot_reliability(scored.logits, scored.labels, scored.temperature, report_dir / "reliability.png", title)
    with open(report_dir / "predictions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "true", "predicted", "probability"])
        writer.writeheader()
        writer.writerows(prediction_rows(scored, class_names))


def write_evaluation(metrics: dict, class_names: list[str], report_dir: Path, title: str) -> None:
    """metrics.json, classification_report.txt and confusion_matrix.png in `report_dir`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (report_dir / "classification_report.txt").write_text(
        format_classification_table(metrics, class_names), encoding="utf-8"
    )
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, report_dir / "confusion_matrix.png", title)
