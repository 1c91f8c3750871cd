"""Reading activation cache entries with and without their checks (format 2), and with np.load
as format 1 read them: 1,000 entries at fit's cut (7x7x512) and at finetune's (14x14x512).

    PYTHONPATH=. python benchmarks/cache_reads.py

Page-cached files, one thread, as ActivationBatches reads an epoch's entries.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from tlearn.train.activations import ActivationCache, _npy_header


def best_and_median(read, repeats: int = 7) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def compare(shape: tuple[int, ...], count: int = 1000) -> None:
    root = Path(tempfile.mkdtemp(prefix="tlearn-cache-reads-"))
    cache = ActivationCache.for_config(root / "format-2", cut=str(shape))
    shas = [hashlib.sha256(str(number).encode()).hexdigest() for number in range(count)]
    plain_files = [root / "format-1" / f"{sha}-plain.npy" for sha in shas]
    plain_files[0].parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for sha, plain in zip(shas, plain_files):
        array = rng.normal(size=shape).astype(np.float16)
        cache.store(sha, 0, array)
        np.save(plain, array, allow_pickle=False)
    offset, values = len(_npy_header(shape)), int(np.prod(shape))

    def unchecked():
        for sha in shas:
            np.frombuffer(cache.path(sha, 0).read_bytes(), np.float16, count=values, offset=offset).reshape(shape)

    readers = {
        "format 2, unchecked": unchecked,
        "format 2, checked": lambda: [cache.load(sha, 0, shape) for sha in shas],
        "format 1, np.load": lambda: [np.load(path, allow_pickle=False) for path in plain_files],
    }
    timings = {name: best_and_median(read) for name, read in readers.items()}
    base = timings["format 2, unchecked"][0]
    print(f"{count} entries of {shape} float16, {values * 2 // 1024} KB each (best / median of 7 passes):")
    for name, (best, median) in timings.items():
        print(f"  {name:20s} {best * 1e3:6.1f} ms / {median * 1e3:6.1f} ms   {best / base:4.2f}x unchecked")


if __name__ == "__main__":
    compare((7, 7, 512))
    compare((14, 14, 512))
