"""Reading activation cache entries: the shard store (format 3) against one file per entry
(format 2, checked as tlearn 0.x did before shards; format 1, np.load without checks): 1,000
entries at fit's cut (7x7x512) and at finetune's (14x14x512).

    PYTHONPATH=. python benchmarks/cache_reads.py

Page-cached files, one thread, as ActivationBatches reads an epoch's entries. Passes of the
formats are interleaved, so a busy machine slows them alike; best and median of 7 passes.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from tlearn.train.activations import ActivationCache

TRAILER_TAG = b"TLSHA256"  # format 2: .npy header, float16 bytes, this tag, sha256 of name and bytes


def format_2_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f2", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def write_format_2(path: Path, array: np.ndarray) -> None:
    body = array.tobytes()
    checksum = hashlib.sha256(f"format-2/{path.name}".encode() + body).digest()
    path.write_bytes(format_2_header(array.shape) + body + TRAILER_TAG + checksum)


def read_format_2(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Format 2's checked read, as ActivationCache.load did it: the whole file, header, size and sha256."""
    content, header = path.read_bytes(), format_2_header(shape)
    body_bytes = int(np.prod(shape)) * 2
    if not content.startswith(header) or len(content) != len(header) + body_bytes + 40:
        raise ValueError(f"{path} is damaged")
    body = memoryview(content)[len(header) : len(header) + body_bytes]
    digest = hashlib.sha256(f"format-2/{path.name}".encode())
    digest.update(body)
    if content[-40:-32] != TRAILER_TAG or content[-32:] != digest.digest():
        raise ValueError(f"{path} is damaged")
    return np.frombuffer(content, np.float16, count=body_bytes // 2, offset=len(header)).reshape(shape)


def interleaved_timings(readers: dict, repeats: int = 7) -> dict[str, tuple[float, float]]:
    times = {name: [] for name in readers}
    for _ in range(repeats):
        for name, read in readers.items():
            start = time.perf_counter()
            read()
            times[name].append(time.perf_counter() - start)
    return {name: (min(values), float(np.median(values))) for name, values in times.items()}


def compare(shape: tuple[int, ...], count: int = 1000) -> None:
    root = Path(tempfile.mkdtemp(prefix="tlearn-cache-reads-"))
    cache = ActivationCache.for_config(root / "format-3", cut=str(shape))
    shas = [hashlib.sha256(str(number).encode()).hexdigest() for number in range(count)]
    old_checked = [root / "format-2" / f"{sha}-plain.npy" for sha in shas]
    old_plain = [root / "format-1" / f"{sha}-plain.npy" for sha in shas]
    for folder in ("format-2", "format-1"):
        (root / folder).mkdir()
    rng = np.random.default_rng(0)
    for sha, checked, plain in zip(shas, old_checked, old_plain):
        array = rng.normal(size=shape).astype(np.float16)
        cache.store(sha, 0, array)
        write_format_2(checked, array)
        np.save(plain, array, allow_pickle=False)
    cache.finish_writing()
    reader = ActivationCache(cache.folder)  # as a training command opens it
    where = reader.entries()
    maps = {path: np.memmap(path, np.uint8, mode="r") for path in {w.data_path for w in where.values()}}
    names = [reader.entry_name(sha, 0) for sha in shas]

    def shards_unchecked():
        for name in names:
            w = where[name]
            np.frombuffer(maps[w.data_path][w.offset : w.offset + w.size].tobytes(), np.float16).reshape(shape)

    readers = {
        "format 3 (shards), checked": lambda: [reader.load(sha, 0, shape) for sha in shas],
        "format 3, unchecked": shards_unchecked,
        "format 2 (files), checked": lambda: [read_format_2(path, shape) for path in old_checked],
        "format 1, np.load": lambda: [np.load(path, allow_pickle=False) for path in old_plain],
    }
    timings = interleaved_timings(readers)
    base = timings["format 2 (files), checked"][0]
    print(f"{count} entries of {shape} float16, {int(np.prod(shape)) * 2 // 1024} KB each (best / median of 7 passes):")
    for name, (best, median) in timings.items():
        print(f"  {name:28s} {best * 1e3:6.1f} ms / {median * 1e3:6.1f} ms   {best / base:4.2f}x format 2 checked")


if __name__ == "__main__":
    compare((7, 7, 512))
    compare((14, 14, 512))
