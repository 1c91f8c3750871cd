"""`evaluate`: a run's model on its own test split or on another folder of the same classes."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from .activations import CachedActivations, compute_activations
from .config import DEFAULT_MODELS_DIR
from .dataset import ImageRecord, SkippedFile, scan_folder
from .errors import TlearnError
from .model import cut_layer_name, feature_extractor, trainable_top
from .report import classification_metrics, format_classification_table, write_evaluation
from .restore import rebuild_model, run_activation_cache
from .runs import read_metadata, resolve_run, staging_dir
from .split import read_split_csv

REPORT_DIR = "report"


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
    run_dir: str | Path | None = None,
    *,
    data: str | Path | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    show_wrong: int = 10,
    progress: bool = True,
) -> Evaluation:
    """Evaluate a run (default: the newest in `models_dir`) on its test split, or on `data`.

    `data` is a folder of class sub-folders; folders of classes the model does not know are
    ignored and listed in `ignored_classes`. The report goes to
    `RUN/report/evaluate-<test|data folder name>/`, replacing an earlier one of that name.
    """
    run = resolve_run(run_dir, models_dir)
    metadata = read_metadata(run)
    class_names = metadata["class_names"]
    ignored: list[str] = []
    skipped: list[SkippedFile] = []
    if data is None:
        data_name = "test"
        records = read_split_csv(run / "split.csv", Path(metadata["data_dir"]))["test"]
        missing = [r.path for r in records if not r.path.exists()]
        if missing:
            raise TlearnError(f"{len(missing)} test images are missing, e.g. {missing[0]}: pass the data with --data")
    else:
        scanned = scan_folder(data, min_classes=1)
        data_name = scanned.root.resolve().name
        ignored = [name for name in scanned.class_names if name not in class_names]
        records = [r for r in scanned.records if r.label in class_names]
        skipped = scanned.skipped
        if not records:
            raise TlearnError(
                f"none of the class folders in {scanned.root} ({', '.join(scanned.class_names)}) is a class "
                f"of this model ({', '.join(class_names)})"
            )

    last_stage = metadata["stages"][-1]
    policy = last_stage["precision_policy"]  # the one its activations were cached under
    keras.mixed_precision.set_global_policy(policy)
    model = rebuild_model(run, metadata)
    cut = cut_layer_name(model, last_stage["settings"].get("unfreeze", 0))  # fit trained above the base
    cache = run_activation_cache(metadata, cut, policy, cache_dir)
    skipped += compute_activations(
        feature_extractor(model, cut), records, cache, 1, None, batch_size, progress, f"embedding {data_name}"
    )
    failed = {item.path for item in skipped}
    records = [r for r in records if r.path not in failed]
    if not records:
        raise TlearnError(f"no decodable images to evaluate in {data or 'the test split'}")
    batches = CachedActivations(cache, records, class_names, batch_size)
    probabilities = trainable_top(model, cut).predict(batches, verbose=0)
    metrics = classification_metrics(batches.labels, probabilities, class_names)
    wrong = _confidently_wrong(records, batches.labels, probabilities, class_names)

    report_dir = run / REPORT_DIR / f"evaluate-{data_name}"
    with staging_dir(run / REPORT_DIR) as staging:
        write_evaluation(metrics, class_names, staging, f"{data_name}, {last_stage['name']} model")
        _write_wrong_csv(staging / "confidently_wrong.csv", wrong)
        if report_dir.exists():
            shutil.rmtree(report_dir)
        os.rename(staging, report_dir)
    table = format_classification_table(metrics, class_names)
    return Evaluation(run, data_name, report_dir, metrics, table, wrong[:show_wrong], ignored, skipped)


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
