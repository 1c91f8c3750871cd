"""How calibrated fit's head is, over many seeded splits: test ECE, log-loss and accuracy.

One 168-image test split says little about calibration: a perfectly calibrated model with
97 % accuracy shows an ECE of about 0.024 on it by chance alone. This trains fit's head
(tlearn's own layers, loss, early stopping and temperature choice) on the activations a fit
already cached, for each seed and each --head-l2 value, and prints the mean and spread
over seeds, beside that noise floor. Heads on cached activations take seconds each.

    TLEARN_CACHE_DIR=/work/weather-cache python benchmarks/calibration.py DATA \\
        --weights vgg16_notop.weights.h5 --preprocess torch --seeds 1-20,1337

Run `tlearn fit` (or `tlearn check --labels`) on DATA first, with the same weights, image
size and preprocessing: this reads the cache and embeds nothing. `--classes` and
`--per-class` take a subset, to see how the choice holds for other data shapes.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.special import log_softmax  # noqa: E402

from tlearn.calibration import choose_temperature, expected_calibration_error, softmax  # noqa: E402
from tlearn.data.dataset import scan_folder  # noqa: E402
from tlearn.data.split import split_records  # noqa: E402
from tlearn.label_issues import pooled_features  # noqa: E402
from tlearn.model import build_classifier, cut_layer_name, trainable_top, weights_identity  # noqa: E402
from tlearn.precision import apply_precision_policy  # noqa: E402
from tlearn.settings import FitSettings, default_cache_root  # noqa: E402
from tlearn.train.activations import activation_cache  # noqa: E402
from tlearn.metadata import ModelSpec  # noqa: E402
from tlearn.train.loop import balanced_class_weights, train_top  # noqa: E402

# At 32 px VGG16's last pool is 1x1x512: pooled features go into tlearn's own top unchanged.
FEATURE_SIZE = 32


@dataclass
class Scores:
    ece: float
    ece_uncalibrated: float
    log_loss: float
    accuracy: float
    temperature: float
    noise_floor: float


def main() -> None:
    arguments = _arguments()
    settings = FitSettings(weights=arguments.weights, preprocess=arguments.preprocess, image_size=arguments.image_size)
    features, records, class_names = _cached_features(arguments, settings)
    if arguments.classes:
        class_names = arguments.classes.split(",")
    penalties = [float(value) for value in arguments.head_l2.split(",")]
    results = {penalty: [] for penalty in penalties}
    for seed in _seeds(arguments.seeds):
        chosen = _subset(records, class_names, arguments.per_class, seed)
        for penalty in penalties:
            scores = _score_head(chosen, features, class_names, settings, penalty, seed)
            results[penalty].append(scores)
            print(f"seed {seed:>5} head_l2 {penalty:<7g} test ECE {scores.ece:.4f} (T {scores.temperature:.2f}), "
                  f"log-loss {scores.log_loss:.4f}, accuracy {scores.accuracy:.4f}", flush=True)
    _print_table(results)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--preprocess", default=None)
    parser.add_argument("--image-size", type=int, default=FitSettings.image_size)
    parser.add_argument("--seeds", default="1-20,1337", help="e.g. 1-20,1337")
    parser.add_argument("--head-l2", default=f"0,{FitSettings.head_l2:g}", help="values to compare, comma-separated")
    parser.add_argument("--classes", default="", help="only these classes, comma-separated")
    parser.add_argument("--per-class", type=int, default=0, help="draw this many images per class (per seed)")
    return parser.parse_args()


def _seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += list(range(int(low), int(high or low) + 1))
    return seeds


def _cached_features(arguments, settings: FitSettings):
    """Pooled plain-view activations at fit's cut, read from the cache fit filled."""
    scanned = scan_folder(arguments.data, image_size=settings.image_size, cache_dir=os.environ.get("TLEARN_CACHE_DIR"))
    policy = apply_precision_policy(settings.mixed_precision)
    spec = ModelSpec(scanned.class_names, settings.image_size, settings.weights,
                     weights_identity(settings.weights, settings.seed), settings.preprocess, 1, 0.0)
    probe = build_classifier(scanned.class_names, FEATURE_SIZE, "none", settings.preprocess, 1)
    cache = activation_cache(spec, cut_layer_name(probe, 0), policy, settings.augment, settings.seed,
                             os.environ.get("TLEARN_CACHE_DIR") or default_cache_root())
    features, found = pooled_features(cache, scanned.records)
    if len(found) < len(scanned.records):
        raise SystemExit(f"{len(scanned.records) - len(found)} images are not in the cache: run tlearn fit on the data first")
    return {record.path: row for record, row in zip(scanned.records, features)}, scanned.records, scanned.class_names


def _subset(records, class_names: list[str], per_class: int, seed: int):
    kept = [record for record in records if record.label in class_names]
    if not per_class:
        return kept
    random = np.random.default_rng(seed)
    chosen = []
    for name in class_names:
        of_class = [record for record in kept if record.label == name]
        chosen += [of_class[i] for i in sorted(random.choice(len(of_class), min(per_class, len(of_class)), replace=False))]
    return chosen


def _score_head(records, features, class_names: list[str], settings: FitSettings, penalty: float, seed: int) -> Scores:
    """Split as fit does, train fit's head as fit does, choose its temperature as fit does."""
    subsets = split_records(records, settings.val_split, settings.test_split, seed)
    data = {name: (np.stack([features[r.path] for r in rows])[:, None, None, :].astype(np.float32),
                   np.array([class_names.index(r.label) for r in rows])) for name, rows in subsets.items()}
    keras.utils.set_random_seed(seed)
    model = build_classifier(class_names, FEATURE_SIZE, "none", settings.preprocess, settings.dense_units,
                             settings.dropout, penalty)
    top = trainable_top(model, cut_layer_name(model, 0))
    (train_x, train_y), (validation_x, validation_y) = data["train"], data["validation"]
    class_weights = balanced_class_weights(train_y, len(class_names))
    weights = np.array([class_weights[label] for label in train_y], np.float32)
    train_top(top, _endless((train_x, train_y, weights), settings.batch_size, seed),
              _endless((validation_x, validation_y), settings.batch_size), epochs=settings.epochs,
              patience=settings.patience, lr=settings.lr, progress=False)
    logits = {name: np.asarray(top(x, training=False), np.float64) for name, (x, _) in data.items()}
    temperature = choose_temperature(logits["validation"], validation_y).temperature
    test_logits, test_labels = logits["test"], data["test"][1]
    return Scores(
        expected_calibration_error(softmax(test_logits, temperature), test_labels),
        expected_calibration_error(softmax(test_logits), test_labels),
        -float(np.mean(log_softmax(test_logits / temperature, axis=1)[np.arange(len(test_labels)), test_labels])),
        float(np.mean(test_logits.argmax(axis=1) == test_labels)), temperature,
        _noise_floor(softmax(test_logits, temperature), seed),
    )


def _endless(arrays: tuple, batch_size: int, seed: int | None = None) -> tuple:
    """(dataset, steps per epoch), as Distribution.prepare_batches gives train_top its data."""
    data = tf.data.Dataset.from_tensor_slices(arrays)
    if seed is not None:
        data = data.shuffle(len(arrays[0]), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).repeat(), -(-len(arrays[0]) // batch_size)


def _noise_floor(probabilities: np.ndarray, seed: int, draws: int = 300) -> float:
    """The mean ECE of a perfectly calibrated model with these probabilities: labels drawn from them."""
    random = np.random.default_rng(seed)
    cumulative = probabilities.cumsum(axis=1)
    eces = []
    for _ in range(draws):
        labels = (random.random((len(probabilities), 1)) > cumulative).sum(axis=1).clip(0, probabilities.shape[1] - 1)
        eces.append(expected_calibration_error(probabilities, labels))
    return float(np.mean(eces))


def _print_table(results: dict[float, list[Scores]]) -> None:
    baseline = list(results.values())[0]
    print(f"\n{len(baseline)} splits; difference = paired mean against head_l2 {list(results)[0]:g} (+- standard error)")
    print("| head_l2 | test ECE mean (sd) | max | splits <= 0.03 | ECE difference | log-loss | log-loss difference "
          "| accuracy | noise floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for penalty, scores in results.items():
        ece, loss = np.array([s.ece for s in scores]), np.array([s.log_loss for s in scores])
        ece_change, loss_change = ece - [s.ece for s in baseline], loss - [s.log_loss for s in baseline]
        error = np.sqrt(len(scores))
        print(f"| {penalty:g} | {ece.mean():.4f} ({ece.std(ddof=1):.4f}) | {ece.max():.4f} | {np.mean(ece <= 0.03):.0%} "
              f"| {ece_change.mean():+.4f} +- {ece_change.std(ddof=1) / error:.4f} | {loss.mean():.4f} "
              f"| {loss_change.mean():+.4f} +- {loss_change.std(ddof=1) / error:.4f} "
              f"| {np.mean([s.accuracy for s in scores]):.4f} | {np.mean([s.noise_floor for s in scores]):.4f} |")


if __name__ == "__main__":
    main()
