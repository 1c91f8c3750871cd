"""Training the layers above the cut on cached activations, with early stopping."""

from __future__ import annotations

import keras
import numpy as np
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm


class EpochProgress(keras.callbacks.Callback):
    """A tqdm bar per epoch over its batches, with loss and accuracy as it goes."""

    def __init__(self, epochs: int, enabled: bool = True):
        super().__init__()
        self.epochs, self.enabled, self.bar = epochs, enabled, None

    def on_epoch_begin(self, epoch, logs=None):
        total = self.params.get("steps") if self.params else None
        self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", disable=not self.enabled)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        self.bar.set_postfix(_rounded(logs), refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix(_rounded(logs))
        self.bar.close()


def _rounded(logs) -> dict[str, str]:
    shown = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}
    return {short: f"{_scalar(logs[key]):.3f}" for key, short in shown.items() if logs and key in logs}


def _scalar(value) -> float:
    """A logged number, whether Keras gives it as a float, a 0-d or a one-element tensor."""
    return float(np.asarray(value).reshape(-1)[0])


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Weights inversely proportional to class frequency, so a small class counts as much."""
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    by_class = dict(zip(present.tolist(), weights.tolist()))
    return {index: by_class.get(index, 1.0) for index in range(num_classes)}


def train_top(
    top: keras.Model, train: tuple, validation: tuple, *, epochs: int, patience: int, lr: float, progress: bool = True
) -> tuple[dict[str, list[float]], int]:
    """Adam on the cross-entropy of `top`'s logits, best validation loss restored at the end;
    call it in the strategy's scope.

    `train` is (dataset, steps per epoch) of (activations, labels, sample weights) and
    `validation` (dataset, steps) of (activations, labels): endless datasets, as
    Distribution.prepare_batches gives them. The class weights are in the sample weights,
    because Keras cannot apply `class_weight` to a distributed dataset. Returns the
    per-epoch history and the (1-based) epoch whose weights were kept.
    """
    top.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),  # `top` ends at the logits
        metrics=["accuracy"],
    )
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
    (train_data, steps), (validation_data, validation_steps) = train, validation
    history = top.fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        steps_per_epoch=steps,
        validation_steps=validation_steps,
        shuffle=False,  # the datasets reshuffle themselves, per worker
        callbacks=[stopper, EpochProgress(epochs, progress)],
        verbose=0,
    )
    result = {key: [_scalar(v) for v in values] for key, values in history.history.items()}
    return result, int(np.argmin(result["val_loss"])) + 1
