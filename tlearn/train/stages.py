"""`fit` and `finetune`: the two training stages of a run.

Both train only what lies above a cut in the network, on activations that the frozen part
computed once per image and view (see activations.py): fit cuts at the top of VGG16 and
trains the head; finetune cuts lower and trains the top blocks with the head. fit's pass
also stores the activations at finetune's default cut, so that cut is not computed twice.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import sklearn
import tensorflow as tf

from .. import __version__
from ..atomic import write_json_atomically, write_text_atomically
from ..augment import build_augmenter, write_augmentation_preview
from ..calibration import ScoredImages, choose_temperature
from ..data.check import format_check
from ..data.dataset import ImageRecord, ScannedFolder, SkippedFile, check_for_training, scan_folder
from ..data.images import UnreadableImage, load_rgb
from ..data.split import SUBSETS, classes_missing_from_subsets, split_records, write_split_csv
from ..distribute import Distribution, make_distribution
from ..errors import TlearnError
from ..evaluation import confidently_wrong
from ..explanation import write_error_gallery
from ..export import export_classifier
from ..html_report import write_html_report
from ..label_issues import LabelIssues, suspected_label_errors, write_label_issues_csv
from ..model import (
    cut_layer_name, feature_extractor, set_temperature, set_trainable_top, trainable_top, weights_identity,
)
from ..precision import apply_precision_policy
from ..report import classification_metrics, write_calibration_report, write_evaluation, write_history
from ..metadata import ModelSpec, RunMetadata, SplitRecord, StageRecord
from ..run import Run, RunFiles, RunWriter, check_out_is_free
from ..settings import DEFAULT_MODELS_DIR, FinetuneSettings, FitSettings, TrainingSettings, settings_from
from .activations import ActivationCache, activation_cache, compute_activations, run_activation_cache
from .batches import ActivationBatches, predict_cached, reading
from .engine import choose_engine
from .loop import balanced_class_weights, train_top

FIT, FINETUNE = FitSettings, FinetuneSettings  # the defaults of the keywords below


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
    warnings: list[str] = field(default_factory=list)  # fit: one line each (classes with few images, ...)
    changed: list[Path] = field(default_factory=list)  # finetune: split images changed since fit, used as they are now
    damaged_cache_entries: list[Path] = field(default_factory=list)  # found damaged, dropped and recomputed
    label_issues: LabelIssues | None = None  # fit: suspected label errors, in run_dir/label_issues.csv


@dataclass
class _StageOutcome:
    history: dict[str, list[float]]
    best_epoch: int
    metrics: dict
    subsets: dict[str, list[ImageRecord]]
    skipped: list[SkippedFile]
    damaged_cache_entries: list[Path]
    scored: ScoredImages  # the test split's logits and the fitted temperature

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(self.subsets[name]) for name in SUBSETS}


def fit(
    data_dir: str | Path, *, out: str | Path | None = None, models_dir: str | Path = DEFAULT_MODELS_DIR,
    cache_dir: str | Path | None = None, progress: bool = True,
    weights: str | None = FIT.weights, preprocess: str | None = FIT.preprocess, image_size: int = FIT.image_size,
    val_split: float = FIT.val_split, test_split: float = FIT.test_split, seed: int = FIT.seed,
    epochs: int = FIT.epochs, patience: int = FIT.patience, batch_size: int = FIT.batch_size, lr: float = FIT.lr,
    views: int = FIT.views, augment: str = FIT.augment, preview_augment: bool = FIT.preview_augment,
    finetune_cache: bool = FIT.finetune_cache, near_threshold: int = FIT.near_threshold,
    keep_cross_class_duplicates: bool = FIT.keep_cross_class_duplicates,
    min_images_per_class: int = FIT.min_images_per_class, dense_units: int = FIT.dense_units,
    dropout: float = FIT.dropout, head_l2: float = FIT.head_l2, mixed_precision: str = FIT.mixed_precision,
    strategy: str = FIT.strategy, engine: str = FIT.engine,
) -> RunResult:
    """Train a classifier on `data_dir` (one sub-folder per class, or pre-split into train/,
    val/, test/ folders of class sub-folders) and write a new run.

    The run goes to `out`, or to `models_dir/<data folder name>` (`-2`, `-3`, ... if taken);
    activations are cached in `cache_dir` (default $TLEARN_CACHE_DIR or ~/.cache/tlearn).
    `weights` is imagenet, none or a weights file (default $TLEARN_WEIGHTS or imagenet) and
    `preprocess` its input convention, caffe or torch (default $TLEARN_PREPROCESS or caffe).
    The other settings are FitSettings's: see `tlearn fit --help` for each.
    """
    started = time.monotonic()
    settings = settings_from(FitSettings, locals())
    check_out_is_free(out)
    distribution = make_distribution(settings.strategy)  # before anything runs TensorFlow: multi-worker needs that
    policy = apply_precision_policy(settings.mixed_precision)
    scanned = scan_folder(
        data_dir, image_size=settings.image_size, near_threshold=settings.near_threshold,
        keep_cross_class_duplicates=settings.keep_cross_class_duplicates, cache_dir=cache_dir,
    )
    warnings = check_for_training(scanned, settings.min_images_per_class)
    subsets = split_records(scanned.records, settings.val_split, settings.test_split, settings.seed)
    warnings += classes_missing_from_subsets(subsets, scanned.class_names)
    keras.utils.set_random_seed(settings.seed)
    spec = ModelSpec(
        scanned.class_names, settings.image_size, settings.weights, weights_identity(settings.weights, settings.seed),
        settings.preprocess, settings.dense_units, settings.dropout, settings.head_l2,
    )
    with distribution.scope():  # variables must be created under the strategy that trains them
        model = spec.build(settings.weights)
    engine = choose_engine(settings.engine, model, spec, fit_cuts(model, settings), subsets, settings.seed, cache_dir,
                           distribution.replicas == 1 and distribution.workers == 1)
    if engine.note:
        warnings.append(engine.note)
    caches = fit_caches(model, spec, settings, policy, cache_dir, engine.cache_key)
    augmenter = build_augmenter(settings.augment, settings.seed) if settings.views > 1 or settings.preview_augment else None
    outcome = _train_stage(model, caches, subsets, spec.class_names, distribution, settings, augmenter, settings.seed,
                           progress, engine.extractor)
    # From the activations just cached, read back, not recomputed: seconds, beside minutes of embedding.
    split_images = [record for name in SUBSETS for record in outcome.subsets[name]]
    label_issues = suspected_label_errors(split_images, next(iter(caches.values())), spec.class_names,
                                          seed=settings.seed, gather=distribution.gather)
    stage = _stage_record("fit", settings, next(iter(caches)), outcome, started, policy, distribution, engine.record())
    run_dir = _publish_fit(out, models_dir, scanned, spec, settings, model, outcome, stage, augmenter, label_issues,
                           publish=distribution.is_chief)
    return RunResult(run_dir, "fit", outcome.metrics["accuracy"], outcome.metrics, outcome.sizes,
                     scanned.skipped + outcome.skipped, stage.wall_seconds, scanned.check.summary(), warnings,
                     damaged_cache_entries=outcome.damaged_cache_entries, label_issues=label_issues)


def finetune(
    run_dir: str | Path | Run | None = None, *, models_dir: str | Path = DEFAULT_MODELS_DIR,
    data_dir: str | Path | None = None, cache_dir: str | Path | None = None, progress: bool = True,
    unfreeze: int = FINETUNE.unfreeze, epochs: int = FINETUNE.epochs, patience: int = FINETUNE.patience,
    batch_size: int = FINETUNE.batch_size, lr: float = FINETUNE.lr, views: int = FINETUNE.views,
    mixed_precision: str = FINETUNE.mixed_precision, strategy: str = FINETUNE.strategy,
) -> RunResult:
    """Unfreeze the top `unfreeze` layers of the base and train on, on the run's own split.

    `run_dir` defaults to the newest run in `models_dir`; `data_dir` overrides where the
    run's images are now, if the dataset folder moved. The new model, export and report
    replace the run's current ones, which move to `stages/<their stage>/`; tlearn.json
    records every stage. Split images changed since fit are used as they are now (under the
    label of their folder) and listed in `changed`; those gone or now undecodable are skipped.
    The other settings are FinetuneSettings's: see `tlearn finetune --help`.
    """
    started = time.monotonic()
    settings = settings_from(FinetuneSettings, locals())
    distribution = make_distribution(settings.strategy)  # before anything runs TensorFlow: multi-worker needs that
    run = Run.open(run_dir, models_dir)
    split = run.read_split(data_dir)
    policy = apply_precision_policy(settings.mixed_precision)
    seed = run.metadata.split.seed
    keras.utils.set_random_seed(seed)
    with distribution.scope():  # variables must be created under the strategy that trains them
        model = run.load_model()
    cut = cut_layer_name(model, settings.unfreeze)
    set_trainable_top(model, settings.unfreeze)
    caches = {cut: run_activation_cache(run, cut, policy, cache_dir)}
    augmenter = build_augmenter(run.metadata.augment, seed) if settings.views > 1 else None
    outcome = _train_stage(model, caches, split.subsets, run.class_names, distribution, settings, augmenter, seed,
                           progress)
    skipped = sorted(split.skipped + outcome.skipped, key=lambda item: str(item.path))
    names = [stage.name for stage in run.metadata.stages]
    name = "finetune" if "finetune" not in names else f"finetune-{len(names)}"
    stage = _stage_record(name, settings, cut, outcome, started, policy, distribution)
    with RunWriter(run.path, publish=distribution.is_chief) as writer:
        _write_stage(writer.files, model, [*run.metadata.stages, stage], outcome, run.class_names)
        staged = replace(run.metadata, stages=[*run.metadata.stages, stage])
        write_html_report(writer.files.report, run.files, staged, title=_report_title(staged))  # last: it shows all the above
        published = writer.publish_stage(run, stage, _as_json(skipped))
    return RunResult(published, name, outcome.metrics["accuracy"], outcome.metrics, outcome.sizes, skipped,
                     stage.wall_seconds, changed=split.changed, damaged_cache_entries=outcome.damaged_cache_entries)


def _publish_fit(out, models_dir, scanned: ScannedFolder, spec: ModelSpec, settings: FitSettings, model,
                 outcome: _StageOutcome, stage: StageRecord, augmenter, label_issues: LabelIssues, *,
                 publish: bool) -> Path | None:
    """Write the new run in a staging folder and rename it into place; returns where it went."""
    skipped = scanned.skipped + outcome.skipped
    layout = scanned.check.layout
    given = {name: folder.name for name, folder in layout.subset_folders.items()} if layout is not None else {}
    split = SplitRecord(settings.seed, settings.val_split, settings.test_split, outcome.sizes,
                        len(scanned.check.split_groups()), given)
    metadata = RunMetadata(
        str(scanned.root.resolve()), spec, settings.views, settings.augment, split, [stage], _as_json(skipped),
        _versions(), __version__, time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    with RunWriter(Path(out).parent if out is not None else models_dir, publish=publish) as writer:
        _write_stage(writer.files, model, metadata.stages, outcome, spec.class_names)
        write_split_csv(writer.files.split, scanned.root, outcome.subsets, skipped)
        write_json_atomically(writer.files.data_check_json, scanned.check.to_dict())
        write_text_atomically(writer.files.data_check_text, format_check(scanned.check))
        write_label_issues_csv(writer.files.label_issues, label_issues)
        if settings.preview_augment and augmenter is not None:
            _write_augmentation_preview(outcome.subsets["train"], spec.class_names, augmenter, spec.image_size,
                                        writer.files.report / "augmentation.png")
        write_json_atomically(writer.files.metadata, metadata.to_json())
        write_html_report(writer.files.report, writer.files, metadata, title=_report_title(metadata))  # last: it shows all the above
        return writer.publish_new(out, models_dir, scanned.root.resolve().name)


def fit_cuts(model, settings: FitSettings) -> list[str]:
    """fit's own cut first and, with `finetune_cache`, finetune's default cut.

    finetune's cut lies on the way to fit's: storing its activations from the same pass spares
    finetune its own pass through blocks 1-4, VGG16's most expensive part.
    """
    cuts = [cut_layer_name(model, 0)]
    if settings.finetune_cache:
        cuts.append(cut_layer_name(model, FinetuneSettings.unfreeze))
    return cuts


def fit_caches(model, spec: ModelSpec, settings: FitSettings, policy: str, cache_dir,
               engine_key: dict | None = None) -> dict[str, ActivationCache]:
    """cut layer -> cache, for fit_cuts; `engine_key` (the int8 engine's) keeps other engines' activations apart."""
    return {cut: activation_cache(spec, cut, policy, settings.augment, settings.seed, cache_dir, engine_key)
            for cut in fit_cuts(model, settings)}


def _train_stage(
    model: keras.Model, caches: dict[str, ActivationCache], subsets: dict[str, list[ImageRecord]],
    class_names: list[str], distribution: Distribution, settings: TrainingSettings, augmenter, seed: int,
    progress: bool, extractor=None,
) -> _StageOutcome:
    """Cache activations for the split images, then train everything above the first cut.

    `caches` maps cut layers to caches; the first is the cut trained above, the others are
    filled in the same pass for a later stage that cuts lower. `extractor`: the frozen part's
    engine (engine.py's int8 one); None = Keras's, in float32.
    """
    cut, cache = next(iter(caches.items()))
    with distribution.scope():
        if extractor is None:
            extractor = distribution.prepare_extractor(feature_extractor(model, list(caches)))
        subsets, skipped = _embed_split(extractor, list(caches.values()), subsets, settings, augmenter, progress,
                                        distribution)
    top = distribution.prepare_trainable(lambda: trainable_top(model, cut))
    with distribution.scope():
        labels = {name: np.array([class_names.index(r.label) for r in subsets[name]]) for name in SUBSETS}
        class_weights = balanced_class_weights(labels["train"], len(class_names))
        shape = tuple(top.input_shape[1:])
        train = ActivationBatches(cache, subsets["train"], labels["train"], shape, settings.batch_size,
                                  sample_weights=np.array([class_weights[label] for label in labels["train"]]),
                                  views=settings.views, shuffle=True, seed=seed)
        validation = ActivationBatches(cache, subsets["validation"], labels["validation"], shape, settings.batch_size)
        with reading(train, validation):
            history, best_epoch = train_top(
                top, distribution.prepare_batches(train), distribution.prepare_batches(validation),
                epochs=settings.epochs, patience=settings.patience, lr=settings.lr, progress=progress,
            )
        scored = _calibrate(model, top, cache, subsets, labels, settings.batch_size, distribution)
    metrics = classification_metrics(labels["test"], scored.probabilities, class_names)
    metrics["calibration"] = scored.calibration()
    damaged = [path for each in caches.values() for path in each.damaged]
    return _StageOutcome(history, best_epoch, metrics, subsets, sorted(skipped, key=lambda item: str(item.path)),
                         damaged, scored)


def _calibrate(model: keras.Model, top: keras.Model, cache: ActivationCache, subsets: dict[str, list[ImageRecord]],
               labels: dict[str, np.ndarray], batch_size: int, distribution: Distribution) -> ScoredImages:
    """Choose the temperature from the validation split's logits and build it into `model`;
    returns the test split's logits with it. Call it in the strategy's scope."""

    def logits_of(records: list[ImageRecord]) -> np.ndarray:
        return distribution.map_shards(
            len(records), lambda owned: predict_cached(top, cache, [records[i] for i in owned], batch_size)
        )

    choice = choose_temperature(logits_of(subsets["validation"]), labels["validation"])
    set_temperature(model, choice.temperature)
    test = subsets["test"]
    return ScoredImages([str(record.path) for record in test], labels["test"], logits_of(test), choice.temperature,
                        choice)


def _embed_split(extractor, caches, subsets, settings: TrainingSettings, augmenter, progress: bool,
                 distribution: Distribution) -> tuple[dict[str, list[ImageRecord]], list[SkippedFile]]:
    """Fill the caches for every split image (and training view); leave out those that fail to
    decode, on this worker or any other, so that every worker trains on the same records."""
    batch = settings.batch_size
    skipped = compute_activations(extractor, distribution.shard(subsets["train"]), caches, settings.views, augmenter,
                                  batch, progress, "embedding train")
    held_out = distribution.shard(subsets["validation"]) + distribution.shard(subsets["test"])
    skipped += compute_activations(extractor, held_out, caches, 1, None, batch, progress, "embedding validation+test")
    everything = [record for name in SUBSETS for record in subsets[name]]
    failed_here = {item.path for item in skipped}
    failed_indices = distribution.gather(np.array([i for i, r in enumerate(everything) if r.path in failed_here], np.int64))
    failed = {everything[i].path for i in failed_indices}
    if failed - failed_here:  # decoding once more the files that failed elsewhere gives their reasons here
        skipped += compute_activations(extractor, [r for r in everything if r.path in failed - failed_here],
                                       caches, 1, None, batch, False)
    subsets = {name: [r for r in records if r.path not in failed] for name, records in subsets.items()}
    for name in SUBSETS:
        if not subsets[name]:
            raise TlearnError(f"no decodable images left in the {name} split: see the skipped files")
    return subsets, skipped


def _stage_record(name: str, settings: TrainingSettings, cut: str, outcome: _StageOutcome, started: float,
                  policy: str, distribution: Distribution, engine: dict | None = None) -> StageRecord:
    return StageRecord(
        name=name, settings={**settings.record(), "cut_layer": cut, **(engine or {})}, precision_policy=policy,
        distribution=distribution.record(), epochs_run=len(outcome.history["loss"]), best_epoch=outcome.best_epoch,
        history=outcome.history, test_accuracy=outcome.metrics["accuracy"],
        test_macro_f1=outcome.metrics["macro_avg"]["f1-score"], wall_seconds=round(time.monotonic() - started, 1),
    )


def _write_stage(files: RunFiles, model, stages: list[StageRecord], outcome: _StageOutcome,
                 class_names: list[str]) -> None:
    """What every stage writes: the export, its test report (with calibration and the gallery
    of its worst errors) and the curves of all stages so far."""
    export_classifier(model, class_names, files)
    title = f"test split, after {stages[-1].name}"
    write_evaluation(outcome.metrics, class_names, files.report, title)
    write_calibration_report(outcome.scored, class_names, files.report, title)
    write_history(stages, files.report)
    scored = outcome.scored  # in the order of the test split
    wrong = confidently_wrong(outcome.subsets["test"], scored.labels, scored.probabilities, class_names)
    write_error_gallery(model, wrong, files.report)


def _report_title(metadata: RunMetadata) -> str:
    return f"{Path(metadata.data_dir).name}: test split after {metadata.stages[-1].name}"


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


def _as_json(skipped: list[SkippedFile]) -> list[dict[str, str]]:
    return [{"path": str(item.path), "reason": item.reason} for item in skipped]


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "scikit-learn": sklearn.__version__, "numpy": np.__version__,
    }
