"""Batches of cached activations: what the layers above the cut train, validate and predict on."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Iterator

import keras
import numpy as np
import tensorflow as tf

from ..data.dataset import ImageRecord
from .activations import ActivationCache, DamagedEntry


@dataclass(frozen=True)
class ActivationBatches:
    """Endless batches of (activations, class indices[, sample weights]) read from `cache`.

    With `shuffle`, each pass over the records reshuffles them and draws one of the `views`
    of each image, so every view gets used. `labels` and `sample_weights` are per record.
    `owned`, `steps` and `slices` are set by `sharded` for one worker of several. Entries are
    checked as they are read; one found damaged is kept in `failures` (see `reading`).
    """

    cache: ActivationCache
    records: list[ImageRecord]
    labels: np.ndarray
    activation_shape: tuple[int, ...]
    batch_size: int
    sample_weights: np.ndarray | None = None
    views: int = 1
    shuffle: bool = False
    seed: int = 0
    owned: np.ndarray | None = None  # indices of the records this worker reads (default: all)
    steps: int = 0  # batches per pass (default: enough for every owned record)
    slices: int = 1  # each batch is yielded as this many consecutive slices, one per replica
    failures: list[DamagedEntry] = field(default_factory=list, compare=False, repr=False)  # shared by `sharded` copies

    def __post_init__(self):
        if self.owned is None:
            object.__setattr__(self, "owned", np.arange(len(self.records)))
        if not self.steps:
            object.__setattr__(self, "steps", max(1, _ceil_div(len(self.owned), self.batch_size)))

    def sharded(self, worker_index: int, workers: int, replicas: int) -> ActivationBatches:
        """Worker `worker_index`'s records[i::n] in slices of the global batch, one per replica.

        Every worker runs the same number of steps, enough for the largest share; a worker
        with a record fewer gets an empty last slice.
        """
        local_batch = _ceil_div(self.batch_size, workers)
        steps = max(1, _ceil_div(_ceil_div(len(self.records), workers), local_batch))
        owned = np.arange(len(self.records))[worker_index::workers]
        return replace(self, owned=owned, batch_size=local_batch, steps=steps, slices=replicas)

    def dataset(self) -> tf.data.Dataset:
        signature = (tf.TensorSpec((None, *self.activation_shape), tf.float32), tf.TensorSpec((None,), tf.int64))
        if self.sample_weights is not None:
            signature += (tf.TensorSpec((None,), tf.float32),)
        return tf.data.Dataset.from_generator(self._batches, output_signature=signature).prefetch(2)

    def _batches(self):
        rng = np.random.default_rng(self.seed)
        order, view_of = self.owned.copy(), np.zeros(len(self.records), dtype=int)
        while True:
            if self.shuffle:
                rng.shuffle(order)
                view_of[self.owned] = rng.integers(0, self.views, size=len(self.owned))
            for step in range(self.steps):
                batch = order[step * self.batch_size : (step + 1) * self.batch_size]
                for chosen in np.array_split(batch, self.slices):
                    activations = np.zeros((len(chosen), *self.activation_shape), np.float32)
                    for row, index in enumerate(chosen):
                        activations[row] = self._load(self.records[index], view_of[index])
                    labels = self.labels[chosen].astype(np.int64)
                    if self.sample_weights is None:
                        yield activations, labels
                    else:
                        yield activations, labels, self.sample_weights[chosen].astype(np.float32)


    def _load(self, record: ImageRecord, view: int) -> np.ndarray:
        try:
            return self.cache.load(record.sha256, view, self.activation_shape)
        except DamagedEntry as error:
            self.failures.append(error)  # TensorFlow passes on only its own error, with a traceback
            raise


@contextlib.contextmanager
def reading(*batches: ActivationBatches) -> Iterator[None]:
    """Where the datasets of `batches` are consumed: an entry that they found damaged ends the
    block with its one-line DamagedEntry, not the TensorFlow error that wraps it."""
    try:
        yield
    except Exception:
        failure = next((b.failures[0] for b in batches if b.failures), None)
        if failure is None:
            raise
        raise failure from None


def predict_cached(
    top: keras.Model, cache: ActivationCache, records: list[ImageRecord], batch_size: int
) -> np.ndarray:
    """Probabilities of `top` for the plain view of each record, in order; a damaged entry
    raises DamagedEntry.

    Plain calls rather than `top.predict`: under a multi-worker strategy that would be a
    collective step per batch, and each worker predicts only its own records.
    """
    shape = tuple(top.input_shape[1:])
    rows = [
        keras.ops.convert_to_numpy(
            top(_plain_activations(cache, records[start : start + batch_size], shape), training=False)
        )
        for start in range(0, len(records), batch_size)
    ]
    return np.concatenate(rows) if rows else np.zeros((0, top.output_shape[-1]), np.float32)


def _plain_activations(cache: ActivationCache, records: list[ImageRecord], shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([cache.load(record.sha256, 0, shape) for record in records]).astype(np.float32)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)
