"""`fit` and `finetune`: the two training stages of a run.

Both train only what lies above a cut in the network, on activations that the frozen part
computed once per image and view (see activations.py): fit cuts at the top of VGG16 and
trains the head; finetune cuts lower and trains the top blocks with the head. fit's pass
also stores the activations at finetune's default cut, so that cut is not computed twice.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import sklearn
import tensorflow as tf

from . import __version__
from .activations import ActivationCache, compute_activations
from .augment import build_augmenter, write_augmentation_preview
from .config import DEFAULT_MODELS_DIR, FinetuneConfig, FitConfig
from .dataset import ImageRecord, SkippedFile, scan_folder
from .check import format_check
from .distribute import (
    Cluster, failed_anywhere, fittable, make_cluster, predict_sharded, replica_embedder, sharded_batches,
)
from .errors import TlearnError
from .images import UnreadableImage, load_rgb
from .export import MODEL_FILE, SAVED_MODEL, export_classifier
from .model import build_classifier, cut_layer_name, feature_extractor, set_trainable_top
from .precision import apply_precision_policy
from .restore import activation_cache, augment_key, rebuild_model, run_activation_cache
from .report import classification_metrics, write_evaluation, write_history
from .runs import (
    METADATA, publish_new_run, read_metadata, replace_stage_artifacts, resolve_run, staging_dir, write_json,
)
from .training import balanced_class_weights, train_top
from .split import SUBSETS, check_fractions, read_split_csv, split_records, write_split_csv
from .weights import resolve_weights, weights_identity

REPORT_DIR = "report"
SPLIT_FILE = "split.csv"
DATA_CHECK_JSON, DATA_CHECK_TEXT = "data_check.json", "data_check.txt"  # what `tlearn check` would say
STAGE_ARTIFACTS = [SAVED_MODEL, MODEL_FILE, REPORT_DIR]


@dataclass
class RunResult:
    """What a training command produced: where the run is and how well the model does.

    `run_dir` is None on a multi-worker worker other than the chief: only the chief writes.
    """

    run_dir: Path | None
    stage: str
    test_accuracy: float
    metrics: dict
    images: dict[str, int]
    skipped: list[SkippedFile] = field(default_factory=list)
    wall_seconds: float = 0.0
    data_summary: str = ""  # fit: one line on the data ("1121 images, 4 classes, ...")


@dataclass
class _StageOutcome:
    history: dict[str, list[float]]
    best_epoch: int
    metrics: dict
    subsets: dict[str, list[ImageRecord]]
    skipped: list[SkippedFile]


def fit(
    data_dir: str | Path,
    *,
    out: str | Path | None = None,
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    weights: str | None = None,
    preprocess: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    **settings,
) -> RunResult:
    """Train a classifier on `data_dir` (one sub-folder per class) and write a run directory.

    `weights`: `imagenet` (Keras's download), `none` (random, for tests) or a weights file;
    default $TLEARN_WEIGHTS or `imagenet`. `preprocess`: `caffe` or `torch`, the input
    convention of those weights; default $TLEARN_PREPROCESS or `caffe`. The run goes to
    `out`, or to `models_dir/<data folder name>` (`-2`, `-3`, ... if taken). Every field of
    `FitConfig` (image_size, epochs, seed, ...) is a keyword here with the same default.
    """
    started = time.monotonic()
    config = _make_config(FitConfig, settings)
    check_fractions(config.val_split, config.test_split)
    _check_positive(config, ("image_size", "epochs", "batch_size", "views", "dense_units"))
    if config.image_size < 32:
        raise TlearnError(f"--image-size must be at least 32 (VGG16 pools 5 times), got {config.image_size}")
    if not 0 <= config.dropout < 1:
        raise TlearnError(f"--dropout must be in [0, 1), got {config.dropout}")
    if out is not None and Path(out).exists() and any(Path(out).iterdir()):
        raise TlearnError(f"--out {out} already exists and is not empty: choose another --out or remove it")
    weights, preprocess = resolve_weights(weights, preprocess)
    cluster = make_cluster(config.strategy)  # before anything runs TensorFlow: multi-worker needs that
    augmenter = build_augmenter(config.augment, config.seed) if config.views > 1 or config.preview_augment else None
    policy = apply_precision_policy(config.mixed_precision)

    scanned = scan_folder(
        data_dir, image_size=config.image_size, near_threshold=config.near_threshold,
        keep_cross_class_duplicates=config.keep_cross_class_duplicates, cache_dir=cache_dir,
    )
    subsets = split_records(scanned.records, config.val_split, config.test_split, config.seed)
    keras.utils.set_random_seed(config.seed)
    with cluster.scope():  # variables must be created under the strategy that trains them
        model = build_classifier(
            scanned.class_names, config.image_size, weights, preprocess, config.dense_units, config.dropout
        )
    identity = weights_identity(weights, config.seed)
    cut = cut_layer_name(model, 0)
    views_key = augment_key(config.augment, config.seed)
    cache = activation_cache(identity, preprocess, config.image_size, cut, policy, views_key, cache_dir)
    side_caches: dict[str, ActivationCache] = {}
    if config.finetune_cache:
        # finetune's default cut lies on the way to fit's: storing its activations too spares
        # finetune its own pass through blocks 1-4, VGG16's most expensive part.
        finetune_cut = cut_layer_name(model, FinetuneConfig().unfreeze)
        side_caches[finetune_cut] = activation_cache(
            identity, preprocess, config.image_size, finetune_cut, policy, views_key, cache_dir
        )
    outcome = _train_stage(
        model, cut, cache, subsets, scanned.class_names, cluster, views=config.views, augmenter=augmenter,
        epochs=config.epochs, patience=config.patience, batch_size=config.batch_size, lr=config.lr,
        seed=config.seed, progress=progress, side_caches=side_caches,
    )
    skipped = scanned.skipped + outcome.skipped
    wall = time.monotonic() - started
    if not cluster.is_chief:
        return _leave_writing_to_chief(model, scanned.class_names, "fit", outcome, skipped, wall)
    stage = _stage_record("fit", {**asdict(config), "cut_layer": cut}, outcome, wall, policy, cluster)
    metadata = {
        "tlearn_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data_dir": str(scanned.root.resolve()),
        "class_names": scanned.class_names,
        "image_size": config.image_size,
        "weights": weights,
        "weights_identity": identity,
        "preprocess": preprocess,
        "dense_units": config.dense_units,
        "dropout": config.dropout,
        "views": config.views,
        "augment": config.augment,
        "split": {
            "seed": config.seed, "val_split": config.val_split, "test_split": config.test_split,
            "sizes": {name: len(outcome.subsets[name]) for name in SUBSETS},
            "duplicate_groups": len(scanned.check.split_groups()),
        },
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in skipped],
        "stages": [stage],
        "versions": _versions(),
    }

    models_root = Path(models_dir)
    target = Path(out) if out is not None else None
    with staging_dir(target.parent if target is not None else models_root) as staging:
        export_classifier(model, scanned.class_names, staging)
        _write_report(staging / REPORT_DIR, outcome.metrics, scanned.class_names, [stage])
        write_split_csv(staging / SPLIT_FILE, scanned.root, outcome.subsets, skipped)
        write_json(staging / DATA_CHECK_JSON, scanned.check.to_dict())
        (staging / DATA_CHECK_TEXT).write_text(format_check(scanned.check), encoding="utf-8")
        if config.preview_augment and augmenter is not None:
            _write_augmentation_preview(outcome.subsets["train"], scanned.class_names, augmenter,
                                        config.image_size, staging / REPORT_DIR / "augmentation.png")
        write_json(staging / METADATA, metadata)
        run_dir = publish_new_run(staging, target, models_root, scanned.root.resolve().name)
    return RunResult(run_dir, "fit", outcome.metrics["accuracy"], outcome.metrics,
                     metadata["split"]["sizes"], skipped, wall, scanned.check.summary())


def finetune(
    run_dir: str | Path | None = None,
    *,
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    **settings,
) -> RunResult:
    """Unfreeze the top `unfreeze` layers of the base and train on, on the run's own split.

    `run_dir` defaults to the newest run in `models_dir`; `data_dir` overrides where the
    run's images are now, if the dataset folder moved. The new model, export and report
    replace the run's current ones, which move to `stages/<their stage>/`; tlearn.json
    records every stage. Every field of `FinetuneConfig` is a keyword with the same default.
    """
    started = time.monotonic()
    config = _make_config(FinetuneConfig, settings)
    _check_positive(config, ("unfreeze", "epochs", "batch_size", "views"))
    cluster = make_cluster(config.strategy)  # before anything runs TensorFlow: multi-worker needs that
    run = resolve_run(run_dir, models_dir)
    metadata = read_metadata(run)
    class_names = metadata["class_names"]
    root = Path(data_dir) if data_dir is not None else Path(metadata["data_dir"])
    subsets = read_split_csv(run / SPLIT_FILE, root)
    missing = [r.path for name in SUBSETS for r in subsets[name] if not r.path.exists()]
    if missing:
        raise TlearnError(
            f"{len(missing)} images of the run's split are missing, e.g. {missing[0]}: "
            "if the dataset moved, pass its new place with --data"
        )
    policy = apply_precision_policy(config.mixed_precision)
    seed = metadata["split"]["seed"]
    keras.utils.set_random_seed(seed)
    with cluster.scope():  # variables must be created under the strategy that trains them
        model = rebuild_model(run, metadata)
    cut = cut_layer_name(model, config.unfreeze)
    set_trainable_top(model, config.unfreeze)
    outcome = _train_stage(
        model, cut, run_activation_cache(metadata, cut, policy, cache_dir), subsets, class_names, cluster,
        views=config.views, augmenter=build_augmenter(metadata["augment"], seed) if config.views > 1 else None,
        epochs=config.epochs, patience=config.patience, batch_size=config.batch_size, lr=config.lr,
        seed=seed, progress=progress,
    )
    stage_names = [stage["name"] for stage in metadata["stages"]]
    name = "finetune" if "finetune" not in stage_names else f"finetune-{len(stage_names)}"
    wall = time.monotonic() - started
    if not cluster.is_chief:
        return _leave_writing_to_chief(model, class_names, name, outcome, outcome.skipped, wall)
    stage = _stage_record(name, {**asdict(config), "cut_layer": cut}, outcome, wall, policy, cluster)

    with staging_dir(run) as staging:
        export_classifier(model, class_names, staging)
        _write_report(staging / REPORT_DIR, outcome.metrics, class_names, [*metadata["stages"], stage])
        previous = metadata["stages"][-1]
        replace_stage_artifacts(run, staging, previous["name"], STAGE_ARTIFACTS)
    previous["artifacts"] = f"stages/{previous['name']}"
    metadata["stages"].append(stage)
    metadata["skipped"] += [{"path": str(s.path), "reason": s.reason} for s in outcome.skipped]
    write_json(run / METADATA, metadata)
    sizes = {name: len(outcome.subsets[name]) for name in SUBSETS}
    return RunResult(run, name, outcome.metrics["accuracy"], outcome.metrics, sizes, outcome.skipped, wall)


def _train_stage(
    model, cut, cache, subsets, class_names, cluster: Cluster, *, views, augmenter, epochs, patience, batch_size, lr,
    seed, progress, side_caches: dict[str, ActivationCache] | None = None,
) -> _StageOutcome:
    """Cache activations at `cut` for the split images, then train everything above it.

    `side_caches` (cut layer -> cache) are filled in the same pass, for a later stage that
    cuts lower. Under several workers each embeds, trains on and predicts its own share of
    every subset (see distribute.py); failures and test predictions are gathered, so all end
    the same.
    """
    side_caches = side_caches or {}
    caches = [cache, *side_caches.values()]
    with cluster.scope():
        extractor = feature_extractor(model, [cut, *side_caches])
        embed = replica_embedder(cluster, extractor)
        skipped = compute_activations(
            extractor, cluster.shard(subsets["train"]), caches, views, augmenter, batch_size, progress,
            "embedding train", embed,
        )
        skipped += compute_activations(
            extractor, cluster.shard(subsets["validation"]) + cluster.shard(subsets["test"]), caches, 1, None,
            batch_size, progress, "embedding validation+test", embed,
        )
        everything = [record for name in SUBSETS for record in subsets[name]]
        failed = failed_anywhere(cluster, everything, {item.path for item in skipped})
        if failed:
            # Decoding the files that failed on other workers once more gives their reasons here.
            elsewhere = failed - {item.path for item in skipped}
            others = list({r.path: r for r in everything if r.path in elsewhere}.values())
            skipped += compute_activations(extractor, others, caches, 1, None, batch_size, False, embed=embed)
            subsets = {name: [r for r in records if r.path not in failed] for name, records in subsets.items()}
            for name in SUBSETS:
                if not subsets[name]:
                    raise TlearnError(f"no decodable images left in the {name} split: see the skipped files")

    top = fittable(cluster, model, cut)
    with cluster.scope():
        labels = {name: np.array([class_names.index(r.label) for r in subsets[name]]) for name in SUBSETS}
        class_weights = balanced_class_weights(labels["train"], len(class_names))
        shape = tuple(top.input_shape[1:])
        train, steps = sharded_batches(
            cluster, cache, subsets["train"], labels["train"], shape, batch_size,
            sample_weights=np.array([class_weights[label] for label in labels["train"]]),
            views=views, shuffle=True, seed=seed,
        )
        validation, validation_steps = sharded_batches(
            cluster, cache, subsets["validation"], labels["validation"], shape, batch_size
        )
        history, best_epoch = train_top(
            top, train, validation, epochs, patience, lr, progress,
            steps_per_epoch=steps, validation_steps=validation_steps,
        )
        probabilities = predict_sharded(cluster, top, cache, subsets["test"], class_names, batch_size)
    metrics = classification_metrics(labels["test"], probabilities, class_names)
    skipped = sorted(skipped, key=lambda item: str(item.path))
    return _StageOutcome(history, best_epoch, metrics, subsets, skipped)


def _leave_writing_to_chief(model, class_names, stage, outcome: _StageOutcome, skipped, wall: float) -> RunResult:
    """A worker other than the chief exports into a temporary folder it removes at once.

    TensorFlow asks every worker to save, since saving may involve collective ops.
    """
    with tempfile.TemporaryDirectory(prefix="tlearn-worker-") as scratch:
        export_classifier(model, class_names, Path(scratch))
    sizes = {name: len(outcome.subsets[name]) for name in SUBSETS}
    return RunResult(None, stage, outcome.metrics["accuracy"], outcome.metrics, sizes, skipped, wall)


def _stage_record(name: str, settings: dict, outcome: _StageOutcome, wall: float, policy: str, cluster) -> dict:
    return {
        "name": name,
        "settings": settings,
        "precision_policy": policy,
        "distribution": cluster.record(),  # what --strategy resolved to: strategy, replicas, workers
        "epochs_run": len(outcome.history["loss"]),
        "best_epoch": outcome.best_epoch,
        "history": outcome.history,
        "test_accuracy": outcome.metrics["accuracy"],
        "test_macro_f1": outcome.metrics["macro_avg"]["f1-score"],
        "wall_seconds": round(wall, 1),
        "artifacts": ".",
    }


def _write_augmentation_preview(train, class_names, augmenter, image_size, path: Path) -> None:
    """One training image per class (up to 6 rows), each beside augmented samples of it."""
    firsts = [next(r for r in train if r.label == name) for name in class_names if any(r.label == name for r in train)]
    images = []
    for record in firsts[:6]:
        try:
            images.append(load_rgb(record.path, image_size))
        except UnreadableImage:
            continue
    if images:
        write_augmentation_preview(images, augmenter, path)


def _write_report(report_dir: Path, metrics: dict, class_names: list[str], stages: list[dict]) -> None:
    write_evaluation(metrics, class_names, report_dir, f"test split, after {stages[-1]['name']}")
    write_history(stages, report_dir)


def _make_config(config_class, settings: dict):
    known = set(config_class.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return config_class(**{key: value for key, value in settings.items() if value is not None})


def _check_positive(config, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise TlearnError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "scikit-learn": sklearn.__version__, "numpy": np.__version__,
    }
