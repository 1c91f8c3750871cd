"""Scaling out with tf.distribute, as an adapter at the edge of the training code.

A stage asks its `Distribution` to prepare what it works with, once per phase (as fastai's
`distrib_ctx` or Accelerate's `prepare` do), and otherwise reads as single-device code:
`prepare_extractor` (embedding), `prepare_batches` (training data), `prepare_trainable` (the
model to fit) and `shard` / `gather` / `map_shards` (each worker's share of a list). With one
device every one of them hands back what it was given.

Design (the same code runs for one device, several local devices and several workers):

- Every worker runs the same command on the same data, so the seeded split gives every
  worker the same record lists in the same order. Worker i of n owns `records[i::n]` of
  each subset, for the whole stage.
- Embedding: each worker passes only its own records through the frozen layers, into its
  own activation cache, so no image is embedded twice and none is skipped. Within a worker,
  a batch is split across the local replicas (GPUs, or logical CPUs).
- Training: each worker streams batches of its own records only, handed to Keras through
  `distribute_datasets_from_function`, so a worker never reads activations another
  computed and the cache needs no shared filesystem. Every worker runs the same number of
  steps, each feeding a slice of the global batch (`--batch-size`) per replica. Validation
  is sharded the same way; Keras all-reduces its loss, so early stopping decides the same on
  every worker.
- Test predictions and undecodable files are all-gathered, so every worker knows the whole
  result; every worker writes its run, only the chief publishes it (run.RunWriter).
- A worker that dies makes its peers' next collective fail at once (connection refused);
  one that hangs makes it fail after the collective timeout; one that never starts is
  caught by a watchdog at start-up, since TensorFlow would wait for it forever.

This module knows tf.distribute and nothing of tlearn's data or model code: what it
prepares, it takes by the small interfaces below.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import keras
import numpy as np
import tensorflow as tf

from .errors import TlearnError
from .settings import WORKER_TIMEOUT_ENV, default_worker_timeout

# Errors a collective op raises when a peer died, hung past the timeout or aborted.
_PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                  tf.errors.CancelledError)


class ShardableBatches(Protocol):
    """Training data that can give one worker's share (train/batches.py)."""

    steps: int  # batches per pass over the data

    def dataset(self) -> tf.data.Dataset: ...

    def sharded(self, worker_index: int, workers: int, replicas: int) -> ShardableBatches:
        """This worker's slices of every global batch, the same number of steps on every worker."""


@dataclass(frozen=True)
class Distribution:
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

    def shard(self, items: list) -> list:
        """This worker's share of `items`: every n-th, starting at its index."""
        return items[self.worker_index :: self.workers]

    def prepare_extractor(self, extractor: keras.Model):
        """`extractor` with `predict_on_batch` running this worker's batch split across its replicas."""
        if self.local_replicas == 1 and self.workers == 1:
            return extractor
        return _ReplicaExtractor(extractor, self._embedder(extractor))

    def _embedder(self, extractor: keras.Model) -> Callable[[np.ndarray], np.ndarray | list[np.ndarray]]:
        count = self.local_replicas
        if count == 1:
            # Under multi-worker, Keras's predict_on_batch would run a distributed step across
            # the workers; this worker must embed only its own batch.
            return lambda pixels: keras.tree.map_structure(keras.ops.convert_to_numpy, extractor(pixels, training=False))
        strategy = self.strategy

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
            outputs = strategy.run(embed_slice, args=(per_replica,))  # one per-replica value per output
            return keras.tree.map_structure(rows_of_every_replica, outputs)

        return embed

    def prepare_batches(self, batches: ShardableBatches):
        """(dataset, steps per pass) for `fit`: with several replicas, each gets its slice of every batch."""
        if self.replicas == 1:
            return batches.dataset(), batches.steps
        local = batches.sharded(self.worker_index, self.workers, self.local_replicas)
        return self.strategy.distribute_datasets_from_function(lambda _context: local.dataset()), local.steps

    def prepare_trainable(self, build: Callable[[], keras.Model]) -> keras.Model:
        """The model `build` makes, in a form Keras 3 can `fit` under this strategy.

        Two Keras 3 bugs stop `fit` under MultiWorkerMirroredStrategy (keras-team/keras#20585):
        it reduces a first batch to build its state, which fails for a tuple of per-replica
        values, and it averages scalar step logs across workers with `axis=0`. A model made
        outside the strategy's scope builds its state when the train step is traced instead,
        and step logs of shape [1] average fine. The layers are the built model's.
        """
        if self.workers == 1:
            with self.strategy.scope():
                return build()
        model = build()
        return _ShapedLogsModel(model.input, model.output, name=model.name)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Every worker's `rows` concatenated in worker order, on every worker (a collective)."""
        if self.workers == 1:
            return rows
        rows = np.asarray(rows)
        # All-gathering empty tensors crashes TensorFlow 2.21 (a segfault), so every replica
        # sends as many rows as the longest (at least one), padded, after their true counts.
        counts = self._gather_from_first_replicas(np.array([len(rows)]), np.array([0]))
        longest = max(1, int(counts.max()))
        padded = np.zeros((longest, *rows.shape[1:]), rows.dtype)
        padded[: len(rows)] = rows
        gathered = self._gather_from_first_replicas(padded, np.zeros_like(padded))
        return np.concatenate([gathered[i * longest : i * longest + count] for i, count in enumerate(counts)])

    def _gather_from_first_replicas(self, value: np.ndarray, other_replicas: np.ndarray) -> np.ndarray:
        """All-gather one value per replica: `value` on each worker's first, `other_replicas` on the rest."""
        per_replica = self.strategy.experimental_distribute_values_from_function(
            lambda context: value if context.replica_id_in_sync_group % self.local_replicas == 0 else other_replicas
        )
        return self.strategy.gather(per_replica, axis=0).numpy()

    def map_shards(self, count: int, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Rows for items 0..count-1 in order: each worker computes `compute(its indices)`, all gather."""
        owned = np.arange(count)[self.worker_index :: self.workers]
        local = compute(owned)
        if self.workers == 1:
            return local
        rows = self.gather(np.column_stack([owned, local]).astype(np.float64))  # float64 holds any index
        result = np.zeros((count, local.shape[1]), local.dtype)
        result[rows[:, 0].astype(int)] = rows[:, 1:]
        return result


class _ReplicaExtractor:
    """What compute_activations uses of an extractor, with the embedding step replaced."""

    def __init__(self, extractor: keras.Model, embed: Callable):
        self.input_shape, self.outputs, self.predict_on_batch = extractor.input_shape, extractor.outputs, embed


class _ShapedLogsModel(keras.Model):
    """A functional model whose train and test steps return logs of shape [1], not scalars."""

    def train_step(self, data):
        return {name: tf.reshape(value, [1]) for name, value in super().train_step(data).items()}

    def test_step(self, data):
        return {name: tf.reshape(value, [1]) for name, value in super().test_step(data).items()}


_multi_worker: Distribution | None = None  # TensorFlow allows one per process


def make_distribution(strategy: str = "auto") -> Distribution:
    """The strategy for `--strategy` (auto|none|mirrored|multi-worker).

    auto: MirroredStrategy over all GPUs when there are two or more, else the default
    strategy. mirrored: over all GPUs, or over the visible logical CPU devices when there is
    no GPU (one device = one replica). multi-worker: MultiWorkerMirroredStrategy over the
    cluster in $TF_CONFIG; it must be created before TensorFlow runs anything, so call this
    before building models.
    """
    if strategy == "multi-worker":
        return _make_multi_worker()
    gpus = tf.config.list_physical_devices("GPU")
    if strategy == "none" or (strategy == "auto" and len(gpus) < 2):
        return Distribution(tf.distribute.get_strategy(), "none")
    devices = None if gpus else [device.name for device in tf.config.list_logical_devices("CPU")]
    return Distribution(tf.distribute.MirroredStrategy(devices), "mirrored")


def _make_multi_worker() -> Distribution:
    global _multi_worker
    if _multi_worker is not None:
        return _multi_worker
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
    _multi_worker = Distribution(strategy, "multi-worker", workers, worker_index)
    return _multi_worker


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


