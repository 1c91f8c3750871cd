"""Scaling out with tf.distribute: the strategy a stage runs under, and each worker's share.

Design (the same code runs for one process with one device, several local devices, and
several workers):

- Every worker runs the same command on the same data, so the seeded split gives every
  worker the same record lists in the same order. Worker i of n owns `records[i::n]` of
  each subset, for the whole stage.
- Embedding: each worker passes only its own records through the frozen base, into its own
  activation cache, so no image is embedded twice and none is skipped. Within a worker, a
  batch is split across the local replicas (GPUs, or logical CPUs).
- Training: each worker streams batches of its own records only (tf.data from a generator,
  handed to Keras through `distribute_datasets_from_function`), so a worker never reads
  activations another computed and the cache needs no shared filesystem. Every worker runs
  the same number of steps, `ceil(records / global batch)`, each feeding a slice of the
  global batch (`--batch-size`) per replica; a worker with a record fewer gets an empty
  last slice. Validation is sharded the same way; Keras all-reduces its loss, so early
  stopping decides the same on every worker.
- Test predictions and undecodable files are all-gathered, so every worker knows the whole
  result; only the chief writes the run directory (see fitting.py).
- A worker that dies makes its peers' next collective fail at once (connection refused);
  one that hangs makes it fail after the collective timeout; one that never starts is
  caught by a watchdog at start-up, since TensorFlow would wait for it forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from .activations import ActivationCache, CachedActivations
from .config import STRATEGIES, WORKER_TIMEOUT_ENV, default_worker_timeout
from .dataset import ImageRecord
from .errors import TlearnError
from .model import trainable_top

# Errors a collective op raises when a peer died, hung past the timeout or aborted.
_PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                  tf.errors.CancelledError)


@dataclass(frozen=True)
class Cluster:
    """The strategy a stage runs under and this process's place among the workers."""

    strategy: tf.distribute.Strategy
    kind: str  # none | mirrored | multi-worker: what --strategy resolved to
    workers: int = 1
    worker_index: int = 0  # 0 is the chief

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def local_replicas(self) -> int:
        return self.replicas // self.workers

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    def shard(self, records: list) -> list:
        """This worker's share of `records`: every n-th, starting at its index."""
        return records[self.worker_index :: self.workers]

    def record(self) -> dict:
        return {"strategy": self.kind, "replicas": self.replicas, "workers": self.workers}

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The strategy's scope; a peer's failure becomes a one-line TlearnError."""
        try:
            with self.strategy.scope():
                yield
        except _PEER_FAILURES as error:
            if self.workers == 1:
                raise
            first_line = (error.message or str(error)).strip().splitlines()[0]
            raise TlearnError(
                f"--strategy multi-worker: a worker failed or stopped responding ({type(error).__name__}: "
                f"{first_line}): see the other workers' output, then restart all of them"
            ) from None


_multi_worker_cluster: Cluster | None = None  # TensorFlow allows one per process


def make_cluster(strategy: str = "auto") -> Cluster:
    """The strategy for `--strategy` (auto|none|mirrored|multi-worker).

    auto: MirroredStrategy over all GPUs when there are two or more, else the default
    strategy. mirrored: over all GPUs, or over the visible logical CPU devices when there is
    no GPU (one device = one replica). multi-worker: MultiWorkerMirroredStrategy over the
    cluster in $TF_CONFIG; it must be created before TensorFlow runs anything, so call this
    before building models.
    """
    if strategy not in STRATEGIES:
        raise TlearnError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "multi-worker":
        return _make_multi_worker_cluster()
    gpus = tf.config.list_physical_devices("GPU")
    if strategy == "none" or (strategy == "auto" and len(gpus) < 2):
        return Cluster(tf.distribute.get_strategy(), "none")
    devices = None if gpus else [device.name for device in tf.config.list_logical_devices("CPU")]
    return Cluster(tf.distribute.MirroredStrategy(devices), "mirrored")


def _make_multi_worker_cluster() -> Cluster:
    global _multi_worker_cluster
    if _multi_worker_cluster is not None:
        return _multi_worker_cluster
    workers, worker_index = _read_tf_config()
    timeout = default_worker_timeout()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    with _killed_unless_done_within(timeout, f"--strategy multi-worker: not all {workers} workers of TF_CONFIG "
                                           f"joined within {timeout:.0f} s: start every worker with the same command "
                                           f"and its own task index (${WORKER_TIMEOUT_ENV} sets this wait)"):
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except (RuntimeError, ValueError) as error:
            raise TlearnError(
                f"--strategy multi-worker could not start ({str(error).splitlines()[0]}): it must be set up before "
                "TensorFlow runs anything, so use it in a fresh process (the tlearn command does)"
            ) from None
    _multi_worker_cluster = Cluster(strategy, "multi-worker", workers, worker_index)
    return _multi_worker_cluster


def _read_tf_config() -> tuple[int, int]:
    """(number of workers, this worker's index with the chief first) from $TF_CONFIG."""
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise TlearnError(f"--strategy multi-worker needs $TF_CONFIG on every worker, e.g. {example} "
                          "(index 1 on the second): or use --strategy auto")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        chiefs, others = len(cluster.get("chief", [])), len(cluster.get("worker", []))
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise TlearnError(f"$TF_CONFIG is not a cluster and task ({type(error).__name__}: {error}): "
                          f"it should look like {example}") from None
    if kind not in ("chief", "worker") or index >= len(cluster.get(kind, [])):
        raise TlearnError(f"$TF_CONFIG task {kind} {index} is not a chief or worker of its cluster: "
                          f"it should look like {example}")
    return chiefs + others, index if kind == "chief" else chiefs + index


# Sleeps, then reports and kills the process it watches, unless that one kills it first.
_WATCHDOG = (
    "import os, signal, sys, time; time.sleep(float(sys.argv[1])); "
    "sys.stderr.write(sys.argv[2] + '\\n'); sys.stderr.flush(); os.kill(int(sys.argv[3]), signal.SIGKILL)"
)


@contextlib.contextmanager
def _killed_unless_done_within(seconds: float, message: str) -> Iterator[None]:
    """Print `Error: message` and kill this process if the block still runs after `seconds`.

    For waits inside TensorFlow that have no timeout, such as forming the cluster: it holds
    the GIL and ignores SIGTERM there, so no thread of this process could act, and a small
    separate process does.
    """
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(seconds), f"Error: {message}", str(os.getpid())])
    try:
        yield
    finally:
        watchdog.kill()
        watchdog.wait()


def replica_embedder(
    cluster: Cluster, extractor: keras.Model
) -> Callable[[np.ndarray], np.ndarray | list[np.ndarray]]:
    """A function running `extractor` on a batch of pixels, split across the local replicas.

    It returns what the extractor does: an array, or a list with one array per output.
    """
    count = cluster.local_replicas
    if count == 1 and cluster.workers == 1:
        return extractor.predict_on_batch  # a compiled graph: faster than an eager call
    if count == 1:
        # Under multi-worker, Keras's predict_on_batch would run a distributed step across the
        # workers; this worker must embed only its own batch.
        return lambda pixels: keras.tree.map_structure(keras.ops.convert_to_numpy, extractor(pixels, training=False))
    strategy = cluster.strategy

    @tf.function(reduce_retracing=True)
    def embed_slice(pixels):
        return extractor(pixels, training=False)

    def rows_of_every_replica(per_replica) -> np.ndarray:
        return np.concatenate([keras.ops.convert_to_numpy(o) for o in strategy.experimental_local_results(per_replica)])

    def embed(pixels: np.ndarray) -> np.ndarray | list[np.ndarray]:
        slices = np.array_split(pixels, count)
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda context: slices[context.replica_id_in_sync_group % count]
        )
        # One per-replica value per output of the extractor.
        outputs = strategy.run(embed_slice, args=(per_replica,))
        return keras.tree.map_structure(rows_of_every_replica, outputs)

    return embed


def fittable(cluster: Cluster, model: keras.Model, cut: str) -> keras.Model:
    """The part of `model` above `cut`, in a form Keras 3 can `fit` under `cluster`.

    Two Keras 3 bugs stop `fit` under MultiWorkerMirroredStrategy (keras-team/keras#20585):
    it reduces a first batch to build its state, which fails for a tuple of per-replica
    values, and it averages scalar step logs across workers with `axis=0`. A model made
    outside the strategy's scope builds its state when the train step is traced instead,
    and step logs of shape [1] average fine. The layers are `model`'s: training it trains
    `model`.
    """
    if cluster.workers == 1:
        with cluster.strategy.scope():
            return trainable_top(model, cut)
    top = trainable_top(model, cut)
    return _ShapedLogsModel(top.input, top.output, name=top.name)


class _ShapedLogsModel(keras.Model):
    """A functional model whose train and test steps return logs of shape [1], not scalars."""

    def train_step(self, data):
        return {name: tf.reshape(value, [1]) for name, value in super().train_step(data).items()}

    def test_step(self, data):
        return {name: tf.reshape(value, [1]) for name, value in super().test_step(data).items()}


def gather_rows(cluster: Cluster, rows: np.ndarray) -> np.ndarray:
    """Every worker's `rows` concatenated in worker order, on every worker (a collective)."""
    if cluster.workers == 1:
        return rows
    rows = np.asarray(rows)
    # All-gathering empty tensors crashes TensorFlow 2.21 (a segfault), so every replica
    # sends as many rows as the longest (at least one), padded, after their true counts.
    counts = _gather_from_first_replicas(cluster, np.array([len(rows)]), np.array([0]))
    longest = max(1, int(counts.max()))
    padded = np.zeros((longest, *rows.shape[1:]), rows.dtype)
    padded[: len(rows)] = rows
    gathered = _gather_from_first_replicas(cluster, padded, np.zeros_like(padded))
    return np.concatenate([gathered[i * longest : i * longest + count] for i, count in enumerate(counts)])


def _gather_from_first_replicas(cluster: Cluster, value: np.ndarray, other_replicas: np.ndarray) -> np.ndarray:
    """All-gather one value per replica: `value` on each worker's first, `other_replicas` on the rest."""
    per_replica = cluster.strategy.experimental_distribute_values_from_function(
        lambda context: value if context.replica_id_in_sync_group % cluster.local_replicas == 0 else other_replicas
    )
    return cluster.strategy.gather(per_replica, axis=0).numpy()


def failed_anywhere(cluster: Cluster, records: list[ImageRecord], failed_here: set[Path]) -> set[Path]:
    """The paths of `records` that failed to decode on any worker (a collective)."""
    indices = np.array([i for i, record in enumerate(records) if record.path in failed_here], np.int64)
    return {records[i].path for i in gather_rows(cluster, indices)}


def predict_sharded(
    cluster: Cluster, top: keras.Model, cache: ActivationCache, records: list[ImageRecord],
    class_names: list[str], batch_size: int,
) -> np.ndarray:
    """Probabilities for every record, in order: each worker predicts its shard, then all gather."""
    owned = np.arange(len(records))[cluster.worker_index :: cluster.workers]
    batches = CachedActivations(cache, [records[i] for i in owned], class_names, batch_size)
    # A plain call, not top.predict: under multi-worker that would be a collective per batch.
    local = [keras.ops.convert_to_numpy(top(batches[i][0], training=False)) for i in range(len(batches))]
    local = np.concatenate(local) if local else np.zeros((0, top.output_shape[-1]), np.float32)
    # One gather of [index, probabilities...] rows (float64 holds any index exactly).
    rows = gather_rows(cluster, np.column_stack([owned, local]).astype(np.float64))
    probabilities = np.zeros((len(records), top.output_shape[-1]), np.float32)
    probabilities[rows[:, 0].astype(int)] = rows[:, 1:]
    return probabilities


def sharded_batches(
    cluster: Cluster,
    cache: ActivationCache,
    records: list[ImageRecord],
    labels: np.ndarray,
    activation_shape: tuple[int, ...],
    batch_size: int,
    *,
    sample_weights: np.ndarray | None = None,
    views: int = 1,
    shuffle: bool = False,
    seed: int = 0,
):
    """(dataset, steps per pass): this worker's slices of every global batch, forever.

    `records`, `labels` (class indices) and `sample_weights` are the whole subset, the same
    on every worker; the dataset reads only this worker's shard. With `shuffle`, each pass
    reshuffles the shard and draws one view per image, so every view gets used. Each
    element is one replica's slice; with one replica it is a plain tf.data.Dataset.
    """
    owned = np.arange(len(records))[cluster.worker_index :: cluster.workers]
    local_batch = _ceil_div(batch_size, cluster.workers)
    # The same on every worker: enough for the largest shard.
    steps = max(1, _ceil_div(_ceil_div(len(records), cluster.workers), local_batch))
    replicas = cluster.local_replicas

    def slices():
        rng = np.random.default_rng(seed)
        order, view_of = owned.copy(), np.zeros(len(records), dtype=int)
        while True:
            if shuffle:
                rng.shuffle(order)
                view_of[owned] = rng.integers(0, views, size=len(owned))
            for step in range(steps):
                for chosen in np.array_split(order[step * local_batch : (step + 1) * local_batch], replicas):
                    activations = np.zeros((len(chosen), *activation_shape), np.float32)
                    for row, index in enumerate(chosen):
                        activations[row] = cache.load(records[index].sha256, view_of[index])
                    if sample_weights is None:
                        yield activations, labels[chosen].astype(np.int64)
                    else:
                        yield activations, labels[chosen].astype(np.int64), sample_weights[chosen].astype(np.float32)

    signature = (tf.TensorSpec((None, *activation_shape), tf.float32), tf.TensorSpec((None,), tf.int64))
    if sample_weights is not None:
        signature += (tf.TensorSpec((None,), tf.float32),)

    def dataset(_context=None) -> tf.data.Dataset:
        return tf.data.Dataset.from_generator(slices, output_signature=signature).prefetch(2)

    if cluster.replicas == 1:
        return dataset(), steps
    return cluster.strategy.distribute_datasets_from_function(dataset), steps


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)
