"""The activation cache at scale: files, bytes and open cost for N entries, against one file per
entry (format 2). `cache_footprint` is meant to be merged into benchmarks/scale.py's table
(its "cache file count and bytes" columns); run alone it prints its own table.

    PYTHONPATH=. python benchmarks/cache_scale.py                      # 10,000 real-size entries + 1M small ones
    PYTHONPATH=. python benchmarks/cache_scale.py --entries 2000 --shape 7,7,512

Entries are synthetic float16 arrays written through ActivationCache.store, as an embedding
pass writes them (one process, page cache, no model). "open" is what the next command pays
before its first read: reading every index row into the lookup (in a fresh ActivationCache).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from tlearn.train import shards
from tlearn.train.activations import ActivationCache

FORMAT_2_OVERHEAD = 128 + 40  # .npy header and checksum trailer per file
FIT_ENTRY = (7, 7, 512)  # block5_pool at 224 px: what fit trains on


def cache_footprint(entries: int, shape: tuple[int, ...] = FIT_ENTRY, work_dir: Path | None = None) -> dict:
    """Write `entries` entries of `shape` into a fresh cache; its file count, bytes and costs.

    Returns a row: entries, files (the cache folder's, config.json included), bytes (their
    sizes), disk_bytes (allocated blocks), write_s, open_s (a new cache object's first lookup,
    which reads every index row), lookup_mib (Python memory the lookup holds), and format 2's
    files and bytes for the same entries (one .npy file per entry, and config.json).
    """
    root = Path(tempfile.mkdtemp(prefix="tlearn-cache-scale-", dir=work_dir))
    try:
        cache = ActivationCache.for_config(root, cut=str(shape))
        shas = [hashlib.sha256(str(number).encode()).hexdigest() for number in range(entries)]
        array = np.random.default_rng(0).normal(size=shape).astype(np.float16)  # the bytes do not matter here
        start = time.perf_counter()
        for sha in shas:
            cache.store(sha, 0, array)
        cache.finish_writing()
        write_s = time.perf_counter() - start
        files = [path for path in cache.folder.rglob("*") if path.is_file()]
        open_s, lookup_bytes = _open_cost(cache.folder, shas[-1], shape)
        return {
            "entries": entries, "files": len(files), "bytes": sum(path.stat().st_size for path in files),
            "disk_bytes": sum(path.stat().st_blocks * 512 for path in files), "write_s": write_s, "open_s": open_s,
            "lookup_mib": lookup_bytes / 2**20, "format_2_files": entries + 1,
            "format_2_bytes": entries * (array.nbytes + FORMAT_2_OVERHEAD),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _open_cost(folder: Path, sha: str, shape: tuple[int, ...]) -> tuple[float, int]:
    """Seconds for a new cache object's first checked read, and the Python memory it then
    holds (measured in a second, traced run: tracing slows the first)."""
    start = time.perf_counter()
    ActivationCache(folder).load(sha, 0, shape)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    reader = ActivationCache(folder)
    reader.load(sha, 0, shape)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del reader
    return seconds, held


def projected_files(entries: int, shape: tuple[int, ...] = FIT_ENTRY, views: int = 1) -> int:
    """Files of one cache folder holding `entries` images at `views` views, written by one
    process at a time: full shards of SHARD_BYTES, their index files, config.json."""
    data_bytes = entries * views * math.prod(shape) * 2
    return 2 * max(1, math.ceil(data_bytes / shards.SHARD_BYTES)) + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, nargs="*", default=None)
    parser.add_argument("--shape", default=None, help="entry shape, e.g. 7,7,512")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    runs = ([(count, tuple(int(n) for n in args.shape.split(","))) for count in args.entries]
            if args.entries else [(10_000, FIT_ENTRY), (1_000_000, (8,))])
    print("| entries | entry shape | files | MB | format 2 files | format 2 MB | write s | open s | lookup MiB |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for count, shape in runs:
        row = cache_footprint(count, shape, args.work_dir)
        print(f"| {count:,} | {'x'.join(map(str, shape))} | {row['files']} | {row['bytes'] / 1e6:,.1f} | "
              f"{row['format_2_files']:,} | {row['format_2_bytes'] / 1e6:,.1f} | {row['write_s']:.1f} | "
              f"{row['open_s']:.2f} | {row['lookup_mib']:.0f} |")
    print("\nProjected files per cache folder at 7x7x512 (fit's cut), 3 views, one writer at a time:")
    for count in (10_000, 100_000, 1_000_000):
        print(f"  {count:>9,} images: {projected_files(count, views=3):>4} files (format 2: {3 * count + 1:,})")


if __name__ == "__main__":
    main()
