"""The measured jobs. Each runs in a fresh child process of run.py, so its peak RSS is its own.

Every job takes the shared `spec` (settings and paths, see run.py) and returns a dict of
figures; times are wall-clock seconds around the work itself, after TensorFlow is imported.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tlearn
from tlearn.data.dataset import ImageRecord
from tlearn.data.images import load_rgb
from tlearn.data.split import SUBSETS
from tlearn.model import ImagePreprocessing, build_classifier, cut_layer_name, feature_extractor, set_trainable_top
from tlearn.run import Run
from tlearn.settings import FinetuneSettings
from tlearn.train.activations import ActivationCache, compute_activations
from tlearn.train.loop import balanced_class_weights

FIT_RUN = "fit-run"
FIT_CACHE = "cache-fit"  # the activation cache fit fills and finetune reads, as in a user's
FINETUNE_RUN = "finetune-run"
TIMED_PASSES = 2  # rates are the best of two passes over the sample, the same for both rates
TF_SPLIT = "tf-split"  # class folders of symlinks per subset, for image_dataset_from_directory


def bare_forward(spec: dict) -> dict:
    """Keras VGG16 without its top on arrays decoded and preprocessed beforehand: the ceiling."""
    size, batch_size = spec["image_size"], spec["batch_size"]
    pixels = np.stack([load_rgb(Path(path), size) for path in spec["rate_sample"]]).astype("float32")
    inputs = keras.ops.convert_to_numpy(ImagePreprocessing(spec["preprocess"])(pixels))
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
    base.load_weights(spec["weights"])
    base.predict(inputs[:batch_size], batch_size=batch_size, verbose=0)  # warm-up: tracing, allocation
    seconds = _fastest(lambda: base.predict(inputs, batch_size=batch_size, verbose=0))
    return _rate(len(inputs), seconds)


def tlearn_embedding(spec: dict) -> dict:
    """tlearn's frozen-base pass on the same files, decoding included, into a fresh cache."""
    size, batch_size = spec["image_size"], spec["batch_size"]
    model = build_classifier(["a", "b"], size, spec["weights"], spec["preprocess"])
    extractor = feature_extractor(model, cut_layer_name(model, 0))
    records = [ImageRecord(Path(path), "", sha) for path, sha in zip(spec["rate_sample"], spec["rate_sample_sha256"])]
    work, pass_numbers, skipped = Path(spec["work_dir"]), itertools.count(), set()

    def embed(sample: list[ImageRecord]) -> None:
        # An empty cache each time, so every image is decoded and computed in every pass.
        cache = ActivationCache.for_config(work / "embedding", pass_number=next(pass_numbers))
        skipped.update(compute_activations(extractor, sample, cache, batch_size=batch_size, progress=False))

    embed(records[:batch_size])  # warm-up, as for the bare rate
    seconds = _fastest(lambda: embed(records))
    return {**_rate(len(records) - len(skipped), seconds), "skipped": len(skipped)}


def tlearn_fit(spec: dict) -> dict:
    """`tlearn.fit` with a fresh cache; patience = epochs, so it runs exactly `epochs` epochs."""
    started = time.perf_counter()
    run = tlearn.fit(
        spec["data_dir"], out=Path(spec["work_dir"]) / FIT_RUN, weights=spec["weights"],
        preprocess=spec["preprocess"], image_size=spec["image_size"], epochs=spec["epochs"],
        patience=spec["epochs"], batch_size=spec["batch_size"], seed=spec["seed"],
        cache_dir=Path(spec["work_dir"]) / FIT_CACHE, progress=False,
    )
    return _run_figures(run, time.perf_counter() - started)


def tlearn_finetune(spec: dict) -> dict:
    """`tlearn.finetune --unfreeze 4` on a copy of the fit run, with the cache fit left, as a user's."""
    work = Path(spec["work_dir"])
    shutil.copytree(work / FIT_RUN, work / FINETUNE_RUN)  # the naive fine-tune starts from the same weights
    started = time.perf_counter()
    run = tlearn.finetune(
        work / FINETUNE_RUN, unfreeze=4, epochs=spec["finetune_epochs"], patience=spec["finetune_epochs"],
        batch_size=spec["batch_size"], cache_dir=work / FIT_CACHE, progress=False,
    )
    return _run_figures(run, time.perf_counter() - started)


def keras_guide(spec: dict) -> dict:
    """The Keras transfer-learning guide's recipe on tlearn's split: a full forward every epoch."""
    folders, left_out = _tf_split_folders(spec)
    keras.utils.set_random_seed(spec["seed"])
    started = time.perf_counter()
    datasets, class_names = _guide_datasets(folders, spec)
    size = spec["image_size"]
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
    base.load_weights(spec["weights"])
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    x = _guide_augmentation(spec["seed"])(inputs)
    x = ImagePreprocessing(spec["preprocess"])(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(256, activation="relu")(x)  # the same head as tlearn's
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(len(class_names), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    accuracy = _train_and_test(model, datasets, spec["epochs"], lr=1e-3, class_weight=None)
    return {**_timed(time.perf_counter() - started, accuracy, datasets), "left_out": left_out}


def naive_finetune(spec: dict) -> dict:
    """Block5 + head trainable from the fit weights, augmentation and a full forward every step."""
    folders, left_out = _tf_split_folders(spec)
    keras.utils.set_random_seed(spec["seed"])
    started = time.perf_counter()
    datasets, class_names = _guide_datasets(folders, spec)
    fit_run = Path(spec["work_dir"]) / FIT_RUN
    classifier = Run.open(fit_run).load_model()
    set_trainable_top(classifier, 4)
    size = spec["image_size"]
    inputs = keras.Input((size, size, 3))
    model = keras.Model(inputs, classifier(_guide_augmentation(spec["seed"])(inputs)))
    labels = np.concatenate([y for _, y in datasets["train"]])
    # Class weights as tlearn's finetune uses them, so only the pipeline differs.
    weights = balanced_class_weights(labels, len(class_names))
    accuracy = _train_and_test(
        model, datasets, spec["finetune_epochs"], lr=FinetuneSettings.lr, class_weight=weights
    )
    return {**_timed(time.perf_counter() - started, accuracy, datasets), "left_out": left_out}


JOBS = {
    "bare_forward": bare_forward,
    "tlearn_embedding": tlearn_embedding,
    "tlearn_fit": tlearn_fit,
    "keras_guide": keras_guide,
    "tlearn_finetune": tlearn_finetune,
    "naive_finetune": naive_finetune,
}


def _fastest(timed_pass, passes: int = TIMED_PASSES) -> float:
    """Seconds of the fastest of `passes` calls: the least disturbed by other jobs on the machine."""
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        timed_pass()
        seconds.append(time.perf_counter() - started)
    return min(seconds)


def _rate(images: int, seconds: float) -> dict:
    return {"images": images, "seconds": seconds, "rate": images / seconds}


def _run_figures(run, seconds: float) -> dict:
    return {
        "seconds": seconds, "test_accuracy": run.test_accuracy, "test_images": run.images["test"],
        "images": run.images, "skipped": len(run.skipped),
    }


def _timed(seconds: float, accuracy: float, datasets: dict) -> dict:
    return {
        "seconds": seconds, "test_accuracy": accuracy,
        "test_images": sum(int(y.shape[0]) for _, y in datasets["test"]),
    }


def _guide_augmentation(seed: int) -> keras.Sequential:
    """The guide's augmentation: random horizontal flip and a small rotation."""
    return keras.Sequential(
        [keras.layers.RandomFlip("horizontal", seed=seed), keras.layers.RandomRotation(0.1, seed=seed + 1)],
        name="guide_augmentation",
    )


def _guide_datasets(folders: Path, spec: dict) -> tuple[dict, list[str]]:
    """`image_dataset_from_directory` per subset, cached in memory and prefetched, as in the guide."""
    class_names = sorted(path.name for path in (folders / "train").iterdir())
    datasets = {}
    for subset in SUBSETS:
        dataset = keras.utils.image_dataset_from_directory(
            folders / subset, class_names=class_names, image_size=(spec["image_size"],) * 2,
            batch_size=spec["batch_size"], shuffle=subset == "train", seed=spec["seed"], verbose=False,
        )
        datasets[subset] = dataset.cache().prefetch(tf.data.AUTOTUNE)
    return datasets, class_names


def _train_and_test(model, datasets: dict, epochs: int, lr: float, class_weight) -> float:
    """Adam and the same early stopping as tlearn's (patience = epochs: every epoch runs)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr), loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs, restore_best_weights=True)
    model.fit(
        datasets["train"], validation_data=datasets["validation"], epochs=epochs, class_weight=class_weight,
        callbacks=[stopper], verbose=0,
    )
    return float(model.evaluate(datasets["test"], verbose=0, return_dict=True)["accuracy"])


def _tf_split_folders(spec: dict) -> tuple[Path, list[str]]:
    """Symlink class folders per subset from the fit run's split.csv, made once and shared.

    A user of the guide must leave out files that TensorFlow cannot decode, or
    `image_dataset_from_directory` fails mid-epoch: each file is checked with the guide
    loader's own decode call (not timed) and those that fail are listed.
    """
    work = Path(spec["work_dir"])
    folders = work / TF_SPLIT
    left_out_file = folders / "left_out.txt"
    if left_out_file.exists():
        return folders, left_out_file.read_text(encoding="utf-8").splitlines()
    run = Run.open(work / FIT_RUN)
    subsets = run.read_split()
    left_out = []
    for subset in SUBSETS:
        for name in run.class_names:
            (folders / subset / name).mkdir(parents=True, exist_ok=True)
        for record in subsets[subset]:
            if not _tf_decodes(record.path):
                left_out.append(str(record.path))
                continue
            os.symlink(record.path.resolve(), folders / subset / record.label / record.path.name)
    left_out_file.write_text("".join(f"{path}\n" for path in left_out), encoding="utf-8")
    return folders, left_out


def _tf_decodes(path: Path) -> bool:
    try:
        tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
        return True
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        return False
