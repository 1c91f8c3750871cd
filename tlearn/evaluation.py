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
from .model import cut_layer_name, feature_extractor, trainable_top
from .report import classification_metrics, format_classification_table, write_evaluation
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
    `show_wrong` of the most confidently wrong images are returned.
    """
    settings = settings_from(EvaluateSettings, locals())
    run = Run.open(run_dir, models_dir)
    records, data_name, ignored, skipped = _records_to_evaluate(run, data, cache_dir)
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
    probabilities = predict_cached(trainable_top(model, cut), cache, records, settings.batch_size)
    metrics = classification_metrics(labels, probabilities, run.class_names)
    wrong = _confidently_wrong(records, labels, probabilities, run.class_names)
    report_dir = _write_report(run, data_name, metrics, wrong)
    table = format_classification_table(metrics, run.class_names)
    return Evaluation(run.path, data_name, report_dir, metrics, table, wrong[: settings.show_wrong], ignored, skipped)


def _records_to_evaluate(
    run: Run, data: str | Path | None, cache_dir: str | Path | None
) -> tuple[list[ImageRecord], str, list[str], list[SkippedFile]]:
    """(records, the data's name, class folders the model does not know, unusable files)."""
    if data is None:
        return run.read_split(subsets=("test",))["test"], "test", [], []
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
    return records, scanned.root.resolve().name, ignored, list(scanned.skipped)


def _write_report(run: Run, data_name: str, metrics: dict, wrong: list[dict]) -> Path:
    """The report folder, written beside and renamed into place, replacing an earlier one."""
    report_dir = run.files.evaluation(data_name)
    with staging_folder(run.files.report) as staging:
        write_evaluation(metrics, run.class_names, staging, f"{data_name}, {run.last_stage.name} model")
        _write_wrong_csv(staging / "confidently_wrong.csv", wrong)
        if report_dir.exists():
            shutil.rmtree(report_dir)
        os.rename(staging, report_dir)
    return report_dir


def _confidently_wrong(records: list[ImageRecord], labels, probabilities, class_names) -> list[dict]:
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
