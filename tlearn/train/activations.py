"""Each image goes through the frozen part of the network once; its activations are cached.

The frozen layers' output for a given input never changes, so fit and finetune train only
the layers above the cut, on activations read back from disk. Entries are keyed by
everything that changes them (file content, image size, weights, preprocessing, cut layer,
augmentation view), so a cache is never mistaken for another configuration's, and deleting
it only costs time.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from ..atomic import write_text_atomically
from ..data.dataset import ImageRecord, SkippedFile
from ..data.images import PIXELS_VERSION, UnreadableImage, load_batches
from ..errors import TlearnError
from ..run import ModelSpec, Run
from ..settings import default_cache_root
from .shards import ARRAY_DTYPE, MISSING, DamagedArray, Location, ShardStore


# Part of every cache folder's key: entries of an older format are never read, only recomputed.
# 2: each entry carries a checksum (format 1's plain .npy files had none, so none could be trusted).
# 3: entries appended into shard files (format 2 kept one .npy file per image and view).
CACHE_FORMAT = 3
ENTRY_DTYPE = ARRAY_DTYPE  # float16: half the disk and reading time, and the model's error is far larger


class DamagedEntry(TlearnError):
    """An activation cache entry that went missing or bad after it was checked."""

    def __init__(self, name: str, where: Path, problem: str):
        self.name, self.where, self.problem = name, where, problem
        state = f"is missing from {where}" if problem == MISSING else f"in {where} is damaged ({problem})"
        super().__init__(f"activation cache entry {name} {state}: run the command again to recompute it")


@dataclass(frozen=True)
class ActivationCache:
    """The entries, one per (image content, view), of one configuration, in the shard files
    of `folder`/shards (see tlearn.train.shards).

    View 0 (the plain image) is shared by every augmentation setting; augmented views are
    keyed by `augment_key` as well. An entry is a float16 array with a sha256 of the cache
    folder's name, the entry's name and its bytes, checked on every read: a truncated,
    garbled, wrong-shaped or misplaced entry is told from a sound one, never trusted.
    `damaged` collects the shard file of each entry this object found damaged and dropped,
    to be reported once.
    """

    folder: Path
    augment_key: str = "none"
    damaged: list[Path] = field(default_factory=list, compare=False, repr=False)
    shards: ShardStore | None = field(default=None, compare=False, repr=False)  # shared by with_augment_key copies

    def __post_init__(self):
        if self.shards is None:
            object.__setattr__(self, "shards", ShardStore(Path(self.folder) / "shards", Path(self.folder).name))

    def with_augment_key(self, augment_key: str) -> "ActivationCache":
        return ActivationCache(self.folder, augment_key, self.damaged, self.shards)

    @classmethod
    def for_config(cls, root: Path, **config) -> "ActivationCache":
        text = json.dumps({**config, "format": CACHE_FORMAT}, sort_keys=True)
        folder = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:20]
        folder.mkdir(parents=True, exist_ok=True)
        key_file = folder / "config.json"
        if not key_file.exists():
            write_text_atomically(key_file, text + "\n")
        return cls(folder)

    def tag(self, view: int) -> str:
        """The part of an entry's name after the image's sha256."""
        return "plain" if view == 0 else f"{self.augment_key}-v{view}"

    def entry_name(self, sha256: str, view: int) -> str:
        return f"{sha256}-{self.tag(view)}"

    def check(self, sha256: str, view: int, shape: tuple[int, ...] | None = None) -> DamagedEntry | None:
        """None for a sound entry (of `shape`, if given); else the DamagedEntry saying what is wrong."""
        try:
            self._read(sha256, view, shape, refresh=False)
        except DamagedEntry as error:
            return error
        return None

    def problem(self, sha256: str, view: int, shape: tuple[int, ...] | None = None) -> str | None:
        """None for a sound entry (of `shape`, if given); else MISSING or what is wrong with it."""
        damage = self.check(sha256, view, shape)
        return None if damage is None else damage.problem

    def has(self, sha256: str, view: int, shape: tuple[int, ...] | None = None) -> bool:
        """Whether a sound entry (of `shape`, if given) is there."""
        return self.problem(sha256, view, shape) is None

    def load(self, sha256: str, view: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The entry's float16 array, checked; a DamagedEntry names it if it is missing or bad.
        An entry not seen yet is looked for in what other processes wrote since."""
        return self._read(sha256, view, shape, refresh=True)

    def store(self, sha256: str, view: int, activations: np.ndarray) -> None:
        """Append the entry; it replaces any earlier entry of that name."""
        self.shards.append(sha256, self.tag(view), activations)

    def drop(self, sha256: str, view: int) -> None:
        self.shards.drop(sha256, self.tag(view))

    def refresh(self) -> None:
        """See the entries that other processes added since this object last looked."""
        self.shards.refresh()

    def finish_writing(self) -> None:
        """Flush the entries written so far to disk and let other writers append to their shard."""
        self.shards.finish_writing()

    def entries(self) -> dict[str, Location]:
        """Entry name -> where it is stored (its shard and row), for every sound or damaged entry."""
        return self.shards.locations()

    def _read(self, sha256: str, view: int, shape: tuple[int, ...] | None, refresh: bool) -> np.ndarray:
        try:
            return self.shards.read(sha256, self.tag(view), shape, refresh)
        except DamagedArray as error:
            raise DamagedEntry(self.entry_name(sha256, view), error.where, error.problem) from None


def activation_cache(
    spec: ModelSpec, cut: str, policy: str, augment: str, seed: int, cache_dir: str | Path | None = None,
    engine_key: dict | None = None,
) -> ActivationCache:
    """The cache of a model's activations at `cut` under a dtype `policy`, in `cache_dir`
    (default $TLEARN_CACHE_DIR or ~/.cache/tlearn). Augmented views are named by the run's
    augmentation and seed, so fit and finetune share them. `engine_key`: the int8 engine's
    (train/engine.py), whose activations differ from float32's; float32 adds nothing, so its
    keys stay those of every earlier cache."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    cache = ActivationCache.for_config(
        root, weights=spec.weights_identity, preprocess=spec.preprocess, image_size=spec.image_size, cut=cut,
        policy=policy, pixels=PIXELS_VERSION, **(engine_key or {}),
    )
    return cache.with_augment_key(f"{augment}-seed{seed}")


def run_activation_cache(run: Run, cut: str, policy: str, cache_dir: str | Path | None = None) -> ActivationCache:
    """Where a run's activations at `cut` are cached: the cache its fit filled."""
    return activation_cache(run.spec, cut, policy, run.metadata.augment, run.metadata.split.seed, cache_dir)


def compute_activations(
    extractor: keras.Model,
    records: list[ImageRecord],
    caches: ActivationCache | list[ActivationCache],
    views: int = 1,
    augmenter: keras.Model | None = None,
    batch_size: int = 32,
    progress: bool = True,
    description: str = "embedding",
) -> list[SkippedFile]:
    """Fill the caches for every record and view 0..views-1; return the files that failed to decode.

    `caches` holds one cache per output of `extractor`, in its order; a one-output extractor
    takes a single cache. An image and view is embedded once if any cache lacks it, and goes
    to each cache that lacks it: entries already there are neither recomputed nor rewritten,
    unless damaged (then they are dropped, recomputed and listed in their cache's `damaged`).
    View 0 is the plain image; views 1.. pass it through `augmenter` first. Decoding of the
    next batch runs in threads while the model works on the current one. Under several
    devices, `extractor` is the one Distribution.prepare_extractor made.
    """
    caches = [caches] if isinstance(caches, ActivationCache) else list(caches)
    if len(caches) != len(extractor.outputs):
        raise ValueError(
            f"caches must hold one cache per output of the extractor ({len(extractor.outputs)}), got {len(caches)}"
        )
    embed = embedding_step(extractor)
    skipped: dict[Path, SkippedFile] = {}
    try:
        for cache in caches:
            cache.refresh()  # once: what other processes stored meanwhile is then a hit, not a recomputation
        missing = _missing_entries(records, views, caches, [tuple(output.shape[1:]) for output in extractor.outputs])
        passes = sum(len(lacking_by_view) for lacking_by_view in missing.values())
        # One bar counting passes through the extractor (image and view), however many caches each fills.
        with tqdm(total=passes, desc=description, unit="img", disable=not progress or not passes, leave=False) as bar:
            _embed_missing(embed, augmenter, missing, caches, extractor.input_shape[1], batch_size, bar, skipped)
    finally:
        for cache in caches:
            cache.finish_writing()  # flushed, and the shard free for the next writer
    return [skipped[path] for path in sorted(skipped)]


_EMBEDDING_STEPS: "weakref.WeakKeyDictionary[keras.Model, Callable]" = weakref.WeakKeyDictionary()


def embedding_step(extractor) -> Callable[[np.ndarray], list[np.ndarray]]:
    """pixels -> the extractor's outputs (numpy, one per output), in a compiled graph traced
    once per extractor for any number of rows.

    A graph fuses each convolution with its bias and ReLU: 10-20% faster on a CPU than calling
    the model eagerly. Keras's predict_on_batch traces again for the first batch of another
    size (a split's last batch, or validation+test after train), which costs seconds at 224 px;
    a signature with any batch size makes one trace serve every batch and every call. An
    extractor prepared for several devices (distribute.py) brings its own step.
    """
    if not isinstance(extractor, keras.Model):
        return lambda pixels: keras.tree.flatten(extractor.predict_on_batch(pixels))
    if extractor not in _EMBEDDING_STEPS:
        signature = tf.TensorSpec((None, *extractor.input_shape[1:]), tf.float32)

        @tf.function(input_signature=[signature])
        def step(pixels):
            return keras.tree.flatten(extractor(pixels, training=False))

        _EMBEDDING_STEPS[extractor] = step
    step = _EMBEDDING_STEPS[extractor]
    return lambda pixels: [output.numpy() for output in step(pixels)]


def _embed_missing(embed, augmenter, missing, caches, image_size, batch_size, bar, skipped) -> None:
    """Embed each image's missing views and store them in the caches lacking them; files that
    fail to decode go to `skipped`."""
    pending_images = sorted(missing, key=lambda r: (r.sha256, str(r.path)))
    for batch, decoded in _decoded_batches(pending_images, image_size, batch_size):
        good = [(r, a) for r, a in zip(batch, decoded) if not isinstance(a, SkippedFile)]
        for result in decoded:
            if isinstance(result, SkippedFile):
                skipped[result.path] = result
        if not good:
            continue
        pixels = np.stack([a for _, a in good]).astype(np.float32)
        for view in sorted({v for r, _ in good for v in missing[r]}):
            inputs = pixels if view == 0 else keras.ops.convert_to_numpy(augmenter(pixels, training=True))
            outputs = embed(inputs)  # one array per cache, rows in batch order
            for row, (record, _) in enumerate(good):
                if view in missing[record]:
                    for index in missing[record][view]:
                        caches[index].store(record.sha256, view, outputs[index][row])
                    bar.update(1)


def _missing_entries(
    records: list[ImageRecord], views: int, caches: list[ActivationCache], shapes: list[tuple[int, ...]]
) -> dict[ImageRecord, dict[int, list[int]]]:
    """record -> view -> the indices of the caches lacking it, for what any cache lacks.

    Every entry is read and checked (shape, size, checksum): a damaged one is dropped, noted
    in its cache's `damaged` and counted as lacking, so it is recomputed, never trusted.
    """
    missing: dict[ImageRecord, dict[int, list[int]]] = {}
    for record in records:
        for view in range(views):
            lacking = [
                index for index, cache in enumerate(caches) if not _sound_entry(cache, record.sha256, view, shapes[index])
            ]
            if lacking:
                missing.setdefault(record, {})[view] = lacking
    return missing


def _sound_entry(cache: ActivationCache, sha256: str, view: int, shape: tuple[int, ...]) -> bool:
    damage = cache.check(sha256, view, shape)
    if damage is not None and damage.problem != MISSING:
        cache.drop(sha256, view)
        cache.damaged.append(damage.where)
    return damage is None


def _decoded_batches(
    records: list[ImageRecord], size: int, batch_size: int
) -> Iterator[tuple[list[ImageRecord], list[np.ndarray | SkippedFile]]]:
    """(records, their pixels or why they failed) per batch; the next batch decodes meanwhile."""
    loaded = load_batches([record.path for record in records], size, batch_size)
    for start, pixels in zip(range(0, len(records), batch_size), loaded):
        batch = records[start : start + batch_size]
        yield batch, [
            SkippedFile(record.path, str(item)) if isinstance(item, UnreadableImage) else item
            for record, item in zip(batch, pixels)
        ]
