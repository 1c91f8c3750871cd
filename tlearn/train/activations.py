"""Each image goes through the frozen part of the network once; its activations are cached.

The frozen layers' output for a given input never changes, so fit and finetune train only
the layers above the cut, on activations read back from disk. Entries are keyed by
everything that changes them (file content, image size, weights, preprocessing, cut layer,
augmentation view), so a cache is never mistaken for another configuration's, and deleting
it only costs time.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import keras
import numpy as np
from tqdm.auto import tqdm

from ..atomic import write_atomically, write_text_atomically
from ..data.dataset import ImageRecord, SkippedFile
from ..data.images import PIXELS_VERSION, UnreadableImage, load_batches
from ..errors import TlearnError
from ..run import ModelSpec, Run
from ..settings import default_cache_root


# Part of every cache folder's key: entries of an older format are never read, only recomputed.
# 2: each entry carries a checksum (format 1's plain .npy files had none, so none could be trusted).
CACHE_FORMAT = 2
ENTRY_DTYPE = np.dtype("<f2")  # float16: half the disk and reading time, and the model's error is far larger
_CHECKSUM_TAG = b"TLSHA256"  # then the 32-byte sha256 of the entry's name and array bytes
_TRAILER_BYTES = len(_CHECKSUM_TAG) + 32
MISSING = "missing"


class DamagedEntry(TlearnError):
    """An activation cache entry that went missing or bad after it was checked."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = path, problem
        state = "is missing" if problem == MISSING else f"is damaged ({problem})"
        super().__init__(f"activation cache entry {path} {state}: run the command again to recompute it")


@dataclass(frozen=True)
class ActivationCache:
    """A folder of entries, one per (image content, view), for one configuration.

    View 0 (the plain image) is shared by every augmentation setting; augmented views are
    keyed by `augment_key` as well. An entry is a float16 .npy file (np.load reads it)
    followed by a sha256 of the entry's name and array bytes: a truncated, garbled,
    wrong-shaped or misplaced entry is told from a sound one, never trusted. `damaged`
    collects the entries this object found damaged and dropped, to be reported once.
    """

    folder: Path
    augment_key: str = "none"
    damaged: list[Path] = field(default_factory=list, compare=False, repr=False)

    def with_augment_key(self, augment_key: str) -> "ActivationCache":
        return ActivationCache(self.folder, augment_key, self.damaged)

    @classmethod
    def for_config(cls, root: Path, **config) -> "ActivationCache":
        text = json.dumps({**config, "format": CACHE_FORMAT}, sort_keys=True)
        folder = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:20]
        folder.mkdir(parents=True, exist_ok=True)
        key_file = folder / "config.json"
        if not key_file.exists():
            write_text_atomically(key_file, text + "\n")
        return cls(folder)

    def path(self, sha256: str, view: int) -> Path:
        tag = "plain" if view == 0 else f"{self.augment_key}-v{view}"
        return self.folder / sha256[:2] / f"{sha256}-{tag}.npy"

    def problem(self, sha256: str, view: int, shape: tuple[int, ...] | None = None) -> str | None:
        """None for a sound entry (of `shape`, if given); else MISSING or what is wrong with it."""
        try:
            self.load(sha256, view, shape)
        except DamagedEntry as error:
            return error.problem
        return None

    def has(self, sha256: str, view: int, shape: tuple[int, ...] | None = None) -> bool:
        """Whether a sound entry (of `shape`, if given) is there."""
        return self.problem(sha256, view, shape) is None

    def load(self, sha256: str, view: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The entry's float16 array, checked; a DamagedEntry names the file if it is missing or bad."""
        path = self.path(sha256, view)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise DamagedEntry(path, MISSING) from None
        except OSError as error:
            raise DamagedEntry(path, error.strerror or type(error).__name__) from None
        return _checked_array(content, path, shape, self._checksum)

    def store(self, sha256: str, view: int, activations: np.ndarray) -> None:
        # Atomically, so an interrupted run never leaves a truncated entry.
        path = self.path(sha256, view)
        array = np.ascontiguousarray(activations, dtype=ENTRY_DTYPE)
        body = array.tobytes()
        content = _npy_header(array.shape) + body + _CHECKSUM_TAG + self._checksum(path, body)
        write_atomically(path, lambda handle: handle.write(content))

    def drop(self, sha256: str, view: int) -> None:
        self.path(sha256, view).unlink(missing_ok=True)

    def _checksum(self, path: Path, body: bytes) -> bytes:
        # The entry's name is hashed too: an entry copied or renamed to another image's name fails.
        digest = hashlib.sha256(f"{self.folder.name}/{path.name}".encode())
        digest.update(body)
        return digest.digest()


@lru_cache(maxsize=None)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a C-ordered float16 array of `shape`, as np.save writes it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": ENTRY_DTYPE.str, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _checked_array(content: bytes, path: Path, shape: tuple[int, ...] | None, checksum) -> np.ndarray:
    """The array in an entry's bytes, after its header, size and checksum are checked."""
    expected = _npy_header(tuple(shape)) if shape is not None else None
    if expected is not None and content.startswith(expected):
        offset, found = len(expected), tuple(shape)
    else:  # another shape, dtype or numpy's header layout: read the header to say which
        offset, found = _read_header(content, path, shape)
    body_bytes = int(np.prod(found, dtype=np.int64)) * ENTRY_DTYPE.itemsize
    size, expected_size = len(content), offset + body_bytes + _TRAILER_BYTES
    if size == offset + body_bytes:
        raise DamagedEntry(path, "no checksum")
    if size != expected_size:
        raise DamagedEntry(path, f"{'truncated: ' if size < expected_size else ''}{size} bytes, expected {expected_size}")
    body = memoryview(content)[offset : offset + body_bytes]
    if content[offset + body_bytes : -32] != _CHECKSUM_TAG or content[-32:] != checksum(path, body):
        raise DamagedEntry(path, "checksum mismatch")
    return np.frombuffer(content, ENTRY_DTYPE, count=body_bytes // ENTRY_DTYPE.itemsize, offset=offset).reshape(found)


def _read_header(content: bytes, path: Path, shape: tuple[int, ...] | None) -> tuple[int, tuple[int, ...]]:
    """(where the array starts, its shape), from an entry's .npy header; DamagedEntry if it is not ours."""
    stream = io.BytesIO(content)
    try:
        if np.lib.format.read_magic(stream) != (1, 0):  # the version np.save writes for any entry's shape
            raise ValueError("not .npy format 1.0")
        found, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    except (ValueError, SyntaxError, TypeError):
        raise DamagedEntry(path, "not an activation entry") from None
    if dtype != ENTRY_DTYPE or fortran_order:
        raise DamagedEntry(path, f"dtype {dtype}{', Fortran order' if fortran_order else ''}, expected float16")
    if shape is not None and tuple(found) != tuple(shape):
        raise DamagedEntry(path, f"shape {tuple(found)}, expected {tuple(shape)}")
    return stream.tell(), tuple(found)


def activation_cache(
    spec: ModelSpec, cut: str, policy: str, augment: str, seed: int, cache_dir: str | Path | None = None
) -> ActivationCache:
    """The cache of a model's activations at `cut` under a dtype `policy`, in `cache_dir`
    (default $TLEARN_CACHE_DIR or ~/.cache/tlearn). Augmented views are named by the run's
    augmentation and seed, so fit and finetune share them."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    cache = ActivationCache.for_config(
        root, weights=spec.weights_identity, preprocess=spec.preprocess, image_size=spec.image_size, cut=cut,
        policy=policy, pixels=PIXELS_VERSION,
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
    # predict_on_batch runs a compiled graph, where TensorFlow fuses each convolution with its
    # bias and ReLU: 10-20% faster on a CPU than calling the model eagerly.
    embed = extractor.predict_on_batch
    missing = _missing_entries(records, views, caches, [tuple(output.shape[1:]) for output in extractor.outputs])
    pending_images = sorted(missing, key=lambda r: (r.sha256, str(r.path)))
    passes = sum(len(lacking_by_view) for lacking_by_view in missing.values())
    skipped: dict[Path, SkippedFile] = {}
    # One bar counting passes through the extractor (image and view), however many caches each fills.
    bar = tqdm(total=passes, desc=description, unit="img", disable=not progress or not passes, leave=False)
    for batch, decoded in _decoded_batches(pending_images, extractor.input_shape[1], batch_size):
        good = [(r, a) for r, a in zip(batch, decoded) if not isinstance(a, SkippedFile)]
        for result in decoded:
            if isinstance(result, SkippedFile):
                skipped[result.path] = result
        if not good:
            continue
        pixels = np.stack([a for _, a in good]).astype(np.float32)
        for view in sorted({v for r, _ in good for v in missing[r]}):
            inputs = pixels if view == 0 else keras.ops.convert_to_numpy(augmenter(pixels, training=True))
            outputs = keras.tree.flatten(embed(inputs))  # one array per cache, rows in batch order
            for row, (record, _) in enumerate(good):
                if view in missing[record]:
                    for index in missing[record][view]:
                        caches[index].store(record.sha256, view, outputs[index][row])
                    bar.update(1)
    bar.close()
    return [skipped[path] for path in sorted(skipped)]


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
    problem = cache.problem(sha256, view, shape)
    if problem is not None and problem != MISSING:
        cache.drop(sha256, view)
        cache.damaged.append(cache.path(sha256, view))
    return problem is None


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
