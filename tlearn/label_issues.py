"""Suspected label errors: images whose folder disagrees with what the rest of the data says.

Out-of-sample class probabilities come cheaply from the frozen features the activation
cache already holds (the base's output, global-average-pooled like the head's input): a
logistic regression, cross-validated in K folds that keep duplicates together (a duplicate
in another fold would vouch for its own label). Confident learning (cleanlab) then flags
the images whose given label the out-of-sample probabilities do not support, most suspect
first.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .atomic import write_text_atomically
from .settings import DEFAULT_CHECK_CSV, CheckSettings, FitSettings, settings_from

if TYPE_CHECKING:
    from .data.check import DataCheck
    from .data.dataset import ImageRecord, ScannedFolder, SkippedFile
    from .train.activations import ActivationCache

# Five folds train each model on 80 % of the images, close to what fit's head sees; fewer
# when a class has fewer duplicate groups than that, so each fold holds out part of every class.
MAX_FOLDS = 5
# scikit-learn's default strength. Stronger (C=0.1, 0.3) made the probabilities so cautious
# that cleanlab flagged fewer images: on the weather set with 12 planted errors, 2-3 of them
# went unflagged in most plantings; at C=1, 10-12 were among the top 30 in each of 10.
REGULARISATION_C = 1.0
# The ranking needs probabilities, not the optimum's last digits: 1e-3 instead of 1e-4
# takes about a third of the time and ranks the same images on top.
TOLERANCE = 1e-3
CSV_COLUMNS = ("path", "given", "suggested", "score")


@dataclass(frozen=True)
class LabelIssue:
    """One flagged image: `given` its folder's class, `suggested` the most probable class
    out of sample, `score` cleanlab's label quality in [0, 1] (lower = more suspect)."""

    index: int
    given: str
    suggested: str
    score: float


@dataclass
class LabelIssues:
    """What the search found: `issues` most suspect first, over `images` images in `folds`
    folds; `reason` says why no search ran (then `folds` is 0), else it is empty."""

    issues: list[LabelIssue]
    images: int
    folds: int
    reason: str = ""
    paths: list[Path] = field(default_factory=list, repr=False)  # image of each index, when known

    def rows(self) -> list[dict[str, str]]:
        """The CSV's rows: path (as the scan found it, like evaluate's CSVs), given, suggested, score."""
        return [
            {"path": str(self.paths[issue.index]), "given": issue.given, "suggested": issue.suggested,
             "score": f"{issue.score:.4f}"}
            for issue in self.issues
        ]


def find_suspected_label_errors(
    features: np.ndarray, labels: np.ndarray, groups: list | np.ndarray, class_names: list[str], *,
    max_folds: int = MAX_FOLDS, seed: int = 0,
) -> LabelIssues:
    """Rank the images whose given label looks wrong.

    `features` holds one row per image, `labels` its class index into `class_names`, `groups`
    its duplicate group (images of one group share a fold). Out-of-sample probabilities come
    from a standardised logistic regression in up to `max_folds` grouped, stratified folds
    (seeded by `seed`); cleanlab flags the issues, ranked by self-confidence. A class with
    fewer than two groups cannot be held out and kept in training at once: then no search
    runs and `reason` says why.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    features, labels = np.asarray(features, np.float32), np.asarray(labels, int)
    groups = np.asarray([str(group) for group in groups])
    if not len(features) == len(labels) == len(groups):
        raise ValueError(f"features, labels and groups differ in length: {len(features)}, {len(labels)}, {len(groups)}")
    folds, reason = _fold_count(labels, groups, class_names, max_folds)
    if reason:
        return LabelIssues([], len(labels), 0, reason)
    probabilities = _out_of_sample_probabilities(features, labels, groups, folds, seed)
    # n_jobs=1: cleanlab's default forks worker processes, unsafe inside a TensorFlow process.
    ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
    scores = get_label_quality_scores(labels, probabilities)
    issues = [
        LabelIssue(int(i), class_names[labels[i]], class_names[int(np.argmax(probabilities[i]))], float(scores[i]))
        for i in ranked
    ]
    return LabelIssues(issues, len(labels), folds)


def _fold_count(labels: np.ndarray, groups: np.ndarray, class_names: list[str], max_folds: int) -> tuple[int, str]:
    """(K, "") or (0, why no K works): K is at most the fewest duplicate groups of any class."""
    if len(class_names) < 2:
        return 0, "one class: there is no other label to suggest"
    group_counts = {name: len(set(groups[labels == index])) for index, name in enumerate(class_names)}
    smallest = min(group_counts, key=group_counts.get)
    folds = min(max_folds, group_counts[smallest])
    if folds < 2:
        count = group_counts[smallest]
        pictures = "no images" if count == 0 else "one picture (and its duplicates)"
        return 0, (f"class {smallest} has {pictures}: cross-validation needs at least 2 distinct pictures "
                   "per class to hold one out")
    return folds, ""


def fold_of_each(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) each image is held out in: stratified by class, and every
    duplicate group in one fold, so no copy of an image vouches for its own label."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.empty(len(labels), int)
    for index, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold[held_out] = index
    return fold


def _out_of_sample_probabilities(features, labels, groups, folds: int, seed: int) -> np.ndarray:
    """Each image's class probabilities from a model that never saw it nor its duplicates."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from threadpoolctl import threadpool_limits

    model = make_pipeline(StandardScaler(), LogisticRegression(C=REGULARISATION_C, tol=TOLERANCE, max_iter=2000))
    splitter = PredefinedSplit(fold_of_each(labels, groups, folds, seed))
    # One BLAS thread: matrices of a few hundred columns gain nothing from more, and on a busy
    # machine the threads' contention made it 3-4x slower (2 s against 8 s on the weather set).
    with threadpool_limits(limits=1):
        return cross_val_predict(model, features, labels, cv=splitter, method="predict_proba")


def pooled_features(cache: ActivationCache, records: list[ImageRecord]) -> tuple[np.ndarray, list[int]]:
    """(features, indices): the spatial mean of each record's plain-view activations in
    `cache`, as the head's pooling layer sees them, for the records whose entry is there and
    sound (their indices into `records`). Reads the cache only; embeds nothing."""
    from .train.activations import DamagedEntry

    rows, found = [], []
    for index, record in enumerate(records):
        try:
            activations = cache.load(record.sha256, 0)
        except DamagedEntry:
            continue
        rows.append(activations.astype(np.float32).mean(axis=tuple(range(activations.ndim - 1))))
        found.append(index)
    width = rows[0].shape[0] if rows else 0
    return (np.stack(rows) if rows else np.zeros((0, width), np.float32)), found


def suspected_label_errors(
    records: list[ImageRecord], cache: ActivationCache, class_names: list[str], *, seed: int = 0,
    gather: Callable[[np.ndarray], np.ndarray] | None = None,
) -> LabelIssues:
    """`find_suspected_label_errors` on `records`, from their cached plain-view activations.

    Under several workers, each holds the entries it embedded: `gather` (Distribution.gather,
    a collective every worker calls) pools them, so every worker sees every image's features.
    """
    features, found = pooled_features(cache, records)
    if gather is not None:
        rows = gather(np.column_stack([np.asarray(found, np.float64), features.astype(np.float64)])
                      if found else np.zeros((0, 1 + features.shape[1]), np.float64))
        unique = {int(row[0]): row[1:] for row in rows}
        found = sorted(unique)
        features = np.stack([unique[i] for i in found]).astype(np.float32) if found else features[:0]
    kept = [records[i] for i in found]
    labels = np.array([class_names.index(record.label) for record in kept], int)
    result = find_suspected_label_errors(features, labels, [r.split_group for r in kept], class_names, seed=seed)
    result.paths = [record.path for record in kept]
    return result


def write_label_issues_csv(path: Path, issues: LabelIssues) -> None:
    """`path,given,suggested,score`, one row per flagged image, most suspect first (atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(issues.rows())
    write_text_atomically(Path(path), buffer.getvalue())


@dataclass
class CheckReport:
    """What `check` found: the data check and, with `labels`, the suspected label errors
    (written to `label_issues_csv`) and the files that failed to decode when embedded (those
    the data check lists as unreadable are left out before)."""

    data: DataCheck
    label_issues: LabelIssues | None = None
    label_issues_csv: Path | None = None
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def needs_attention(self) -> bool:
        return self.data.needs_attention or bool(self.label_issues and self.label_issues.issues)


def check(
    data_dir: str | Path, *, image_size: int = CheckSettings.image_size,
    near_threshold: int = CheckSettings.near_threshold, max_aspect_ratio: float = CheckSettings.max_aspect_ratio,
    max_megapixels: float = CheckSettings.max_megapixels, labels: bool = CheckSettings.labels,
    weights: str | None = CheckSettings.weights, preprocess: str | None = CheckSettings.preprocess,
    out: str | Path = DEFAULT_CHECK_CSV, cache_dir: str | Path | None = None, progress: bool = True,
) -> CheckReport:
    """`check_folder` on `data_dir` and, with `labels`, its suspected label errors, written to `out`.

    Label errors need every usable image embedded by the frozen base, as fit embeds it (same
    weights, preprocessing, size and seed, so the same activation cache in `cache_dir`): a
    later fit reuses those activations, and a check after a fit embeds nothing. `weights` and
    `preprocess` default to $TLEARN_WEIGHTS and $TLEARN_PREPROCESS, as for fit.
    """
    from .data.check import check_folder

    settings = settings_from(CheckSettings, locals())
    data = check_folder(data_dir, image_size=image_size, near_threshold=near_threshold,
                        max_aspect_ratio=max_aspect_ratio, max_megapixels=max_megapixels, cache_dir=cache_dir,
                        progress=progress)
    if not settings.labels:
        return CheckReport(data)
    issues, skipped = _folder_label_issues(data_dir, settings, cache_dir, progress)
    write_label_issues_csv(Path(out), issues)
    return CheckReport(data, issues, Path(out), skipped)


def _folder_label_issues(data_dir, settings: CheckSettings, cache_dir, progress: bool
                         ) -> tuple[LabelIssues, list[SkippedFile]]:
    """Embed the usable images of `data_dir` as fit would, then rank their labels; also the
    files that failed to decode on the way."""
    import keras

    from .data.dataset import scan_folder
    from .metadata import ModelSpec
    from .model import feature_extractor, weights_identity
    from .precision import apply_precision_policy
    from .train.activations import compute_activations
    from .train.stages import fit_caches

    scanned: ScannedFolder = scan_folder(data_dir, image_size=settings.image_size,
                                         near_threshold=settings.near_threshold, cache_dir=cache_dir)
    # fit's defaults for everything else that keys the cache (seed, precision, finetune's cut).
    fit = FitSettings(weights=settings.weights, preprocess=settings.preprocess, image_size=settings.image_size)
    policy = apply_precision_policy(fit.mixed_precision)
    keras.utils.set_random_seed(fit.seed)  # as fit does before building: --weights none gives fit's numbers
    spec = ModelSpec(scanned.class_names, fit.image_size, fit.weights, weights_identity(fit.weights, fit.seed),
                     fit.preprocess, fit.dense_units, fit.dropout)
    model = spec.build(fit.weights)
    caches = fit_caches(model, spec, fit, policy, cache_dir)  # both of fit's cuts: a later fit embeds nothing
    extractor = feature_extractor(model, list(caches))
    skipped = compute_activations(extractor, scanned.records, list(caches.values()), 1, None, fit.batch_size,
                                  progress, "embedding")
    failed = {item.path for item in skipped}
    records = [record for record in scanned.records if record.path not in failed]
    issues = suspected_label_errors(records, next(iter(caches.values())), scanned.class_names, seed=fit.seed)
    return issues, skipped
