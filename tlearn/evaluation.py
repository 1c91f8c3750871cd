"""`evaluate`: a run's model on its own test split or on another folder of the same classes."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from .atomic import staging_folder
from .data.dataset import ImageRecord, SkippedFile, scan_folder
from .errors import TlearnError
from .calibration import ScoredImages
from .explanation import write_error_gallery
from .html_report import write_html_report
from .model import cut_layer_name, feature_extractor, temperature_of, trainable_top
from .report import classification_metrics, format_classification_table, write_calibration_report, write_evaluation
from .run import Run
from .settings import DEFAULT_MODELS_DIR, EvaluateSettings, settings_from
from .train.activations import compute_activations, run_activation_cache
from .train.batches import predict_cached


@dataclass
class Evaluation:
    """Metrics of one evaluation and where its report went."""

    run_dir: Path
    data_name: str
    report_dir: Path
    metrics: dict
    table: str
    confidently_wrong: list[dict]  # [{"path", "true", "predicted", "probability"}], most confident first
    ignored_classes: list[str] = field(default_factory=list)  # folders in --data the model does not know
    skipped: list[SkippedFile] = field(default_factory=list)
    changed: list[Path] = field(default_factory=list)  # test images changed since fit: evaluated as they are now
    damaged_cache_entries: list[Path] = field(default_factory=list)  # found damaged, dropped and recomputed

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]


def evaluate(
    run_dir: str | Path | Run | None = None, *, data: str | Path | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR, cache_dir: str | Path | None = None, progress: bool = True,
    batch_size: int = EvaluateSettings.batch_size, show_wrong: int = EvaluateSettings.show_wrong,
) -> Evaluation:
    """Evaluate a run (default: the newest in `models_dir`) on its test split, or on `data`.

    `data` is a folder of class sub-folders; folders of classes the model does not know are
    ignored and listed in `ignored_classes`. The report goes to
    `RUN/report/evaluate-<test|data folder name>/`, replacing an earlier one of that name;
    `show_wrong` of the most confidently wrong images are returned. Test images changed since
    fit are evaluated as they are now and listed in `changed` (and in the report's
    changed_since_fit.csv); those gone or now undecodable are left out and listed in `skipped`.
    """
    settings = settings_from(EvaluateSettings, locals())
    run = Run.open(run_dir, models_dir)
    records, data_name, ignored, skipped, changed = _records_to_evaluate(run, data, cache_dir)
    policy = run.last_stage.precision_policy  # the one its activations were cached under
    keras.mixed_precision.set_global_policy(policy)
    model = run.load_model()
    cut = cut_layer_name(model, run.last_stage.unfreeze)  # fit trained above the whole base
    cache = run_activation_cache(run, cut, policy, cache_dir)
    skipped += compute_activations(feature_extractor(model, cut), records, cache, 1, None, settings.batch_size,
                                   progress, f"embedding {data_name}")
    failed = {item.path for item in skipped}
    records = [r for r in records if r.path not in failed]
    if not records:
        raise TlearnError(f"no decodable images to evaluate in {data or 'the test split'}")
    labels = np.array([run.class_names.index(record.label) for record in records])
    logits = predict_cached(trainable_top(model, cut), cache, records, settings.batch_size)
    scored = ScoredImages([str(record.path) for record in records], labels, logits, temperature_of(model))
    probabilities = scored.probabilities  # what the exported model serves
    metrics = classification_metrics(labels, probabilities, run.class_names)
    metrics["calibration"] = scored.calibration()
    wrong = confidently_wrong(records, labels, probabilities, run.class_names)
    report_dir = _write_report(run, model, data_name, metrics, wrong, None if data else (changed, skipped), scored)
    table = format_classification_table(metrics, run.class_names)
    return Evaluation(run.path, data_name, report_dir, metrics, table, wrong[: settings.show_wrong], ignored, skipped,
                      changed, cache.damaged)


def _records_to_evaluate(
    run: Run, data: str | Path | None, cache_dir: str | Path | None
) -> tuple[list[ImageRecord], str, list[str], list[SkippedFile], list[Path]]:
    """(records, the data's name, class folders the model does not know, unusable files,
    files changed since fit)."""
    if data is None:
        split = run.read_split(subsets=("test",))
        return split["test"], "test", [], list(split.skipped), list(split.changed)
    scanned = scan_folder(data, min_classes=1, cache_dir=cache_dir)
    records = [r for r in scanned.records if r.label in run.class_names]
    layout = scanned.check.layout
    if layout.pre_split:  # its train and validation folders are no test of a model
        if "test" not in layout.subset_folders:
            raise TlearnError(f"{scanned.root} is pre-split without a test folder: pass the folder to evaluate on")
        records = [r for r in records if r.given == "test"]
    if not records:
        raise TlearnError(
            f"none of the class folders in {scanned.root} ({', '.join(scanned.class_names)}) is a class "
            f"of this model ({', '.join(run.class_names)})"
        )
    ignored = [name for name in scanned.class_names if name not in run.class_names]
    return records, scanned.root.resolve().name, ignored, list(scanned.skipped), []


def _write_report(run: Run, model: keras.Model, data_name: str, metrics: dict, wrong: list[dict],
                  split_changes: tuple[list[Path], list[SkippedFile]] | None, scored: ScoredImages) -> Path:
    """The report folder, written beside and renamed into place, replacing an earlier one.

    `split_changes` (on the test split): its files changed since fit, and those skipped."""
    report_dir = run.files.evaluation(data_name)
    with staging_folder(run.files.report) as staging:
        title = f"{data_name}, {run.last_stage.name} model"
        write_evaluation(metrics, run.class_names, staging, title)
        write_calibration_report(scored, run.class_names, staging, title)
        _write_wrong_csv(staging / "confidently_wrong.csv", wrong)
        write_error_gallery(model, wrong, staging)
        if split_changes is not None:
            _write_changes_csv(staging / "changed_since_fit.csv", *split_changes)
        write_html_report(staging, run.files, run.metadata, evaluated=data_name,  # last: it shows all the above
                          title=f"{run.data_dir.name}: evaluated on {data_name} ({run.last_stage.name} model)")
        if report_dir.exists():
            shutil.rmtree(report_dir)
        os.rename(staging, report_dir)
    return report_dir


def confidently_wrong(records: list[ImageRecord], labels, probabilities, class_names) -> list[dict]:
    """Rows (path, true, predicted, probability) of the wrongly classified records, most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = [i for i in np.argsort(-probabilities.max(axis=1)) if predicted[i] != labels[i]]
    return [
        {
            "path": str(records[i].path),
            "true": class_names[labels[i]],
            "predicted": class_names[predicted[i]],
            "probability": float(probabilities[i, predicted[i]]),
        }
        for i in wrong
    ]


def _write_wrong_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "true", "predicted", "probability"])
        writer.writeheader()
        writer.writerows(rows)


def _write_changes_csv(path: Path, changed: list[Path], skipped: list[SkippedFile]) -> None:
    """The split's files that are not as fit recorded them, and what evaluate made of each."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "now"])
        writer.writerows([str(changed_path), "evaluated as it is now"] for changed_path in changed)
        writer.writerows([str(item.path), f"skipped: {item.reason}"] for item in skipped)
