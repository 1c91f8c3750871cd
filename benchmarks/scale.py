"""How tlearn's costs grow with the number of images: synthetic folders and hashes, side by side.

    PYTHONPATH=. python benchmarks/scale.py                  # every part, the issue's sizes
    PYTHONPATH=. python benchmarks/scale.py --only check     # `tlearn check` on a 30,060-image folder
    PYTHONPATH=. python benchmarks/scale.py --only check --baseline ../main   # ... and main's, side by side
    PYTHONPATH=. python benchmarks/scale.py --only index     # near-duplicate search on 1,000,000 hashes

Parts (each a function `bench_<part>(args) -> list[Row]`; add one to BENCHMARKS to add a part):
- check: `tlearn check` (a fresh process, a fresh cache) on a folder of small synthetic JPEGs
  with planted resized copies, run twice: first (every file inspected) and repeated (file facts
  from the cache); each run's wall time and peak RSS, and whether every planted copy was found.
- index: the near-duplicate index on random 256-bit hashes with planted pairs within the
  threshold, against comparing every pair: today's row-by-row search (main before the index)
  and the tiled comparison the index falls back on. Where comparing every pair would take too
  long it runs on the first --exhaustive-sample hashes and is extrapolated (pairs grow as n^2):
  the table says which.

Prints a Markdown table (part, measure, value, note) for BENCHMARKS.md, with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure the checkout's tlearn, installed or not

from tlearn.data.near_duplicates import exhaustive_hamming_pairs, hamming_pairs  # noqa: E402

HASH_BITS = 256


@dataclass(frozen=True)
class Row:
    part: str
    measure: str
    value: str
    note: str = ""


# --- synthetic data -------------------------------------------------------------------------

def make_image_folder(root: Path, images: int = 30_000, classes: int = 3, copies: int = 60, size: int = 48,
                      seed: int = 0) -> list[tuple[Path, Path]]:
    """Write `images` distinct synthetic JPEGs of `size` px into `classes` class folders under
    `root`, plus `copies` resized, re-encoded copies of some of them (each beside its original);
    returns the planted (original, copy) pairs. Reuses a complete folder made with the same
    arguments (a marker file records them)."""
    marker = root / ".made-by-scale"
    settings = json.dumps({"images": images, "classes": classes, "copies": copies, "size": size, "seed": seed})
    originals = [root / f"class{i % classes}" / f"img{i:06d}.jpg" for i in range(images)]
    rng = np.random.default_rng(seed)
    copied = sorted(rng.choice(images, copies, replace=False).tolist())
    planted = [(originals[i], originals[i].with_name(f"{originals[i].stem}_resized.jpg")) for i in copied]
    if marker.exists() and marker.read_text() == settings:
        return planted
    for folder in {path.parent for path in originals}:
        folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(originals):
        _synthetic_picture(np.random.default_rng([seed, index]), size).save(path, quality=90)
    for original, copy in planted:
        with Image.open(original) as image:
            image.resize((size * 3 // 2, size * 3 // 2), Image.Resampling.BICUBIC).save(copy, quality=75)
    marker.write_text(settings)
    return planted


def _synthetic_picture(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth random colours over a 12 x 12 grid: a picture whose perceptual hash is its own."""
    grid = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC)


def make_hashes(count: int = 1_000_000, pairs: int = 1_000, threshold: int = 24, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """`count` random 256-bit hashes ((count, 32) uint8) in which `pairs` disjoint pairs differ
    in 0 to `threshold` bits; returns the hashes and the planted pairs ((pairs, 2), low index first)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 256, (count, HASH_BITS // 8), dtype=np.uint8)
    planted = np.sort(rng.permutation(count)[: 2 * pairs].reshape(pairs, 2), axis=1)
    for (first, second), differing in zip(planted, rng.integers(0, threshold + 1, pairs)):
        bits = np.zeros(HASH_BITS, np.uint8)
        bits[rng.choice(HASH_BITS, differing, replace=False)] = 1
        hashes[second] = hashes[first] ^ np.packbits(bits)
    return hashes, planted


# --- parts ----------------------------------------------------------------------------------

def bench_check(args: argparse.Namespace) -> list[Row]:
    """`tlearn check` on a synthetic folder, first and repeated, in fresh processes and a fresh cache."""
    root = args.work_dir / f"folder-{args.images}"
    started = time.perf_counter()
    planted = make_image_folder(root, args.images, copies=args.copies)
    made = time.perf_counter() - started
    total = args.images + args.copies
    rows = [Row("check", "folder", f"{total:,} JPEGs", f"{args.images:,} of 48 px in 3 classes + {args.copies} "
                                                        f"resized copies (made or reused in {made:.0f} s)")]
    checkouts = [("", REPO)] + ([(f" ({args.baseline.name})", args.baseline)] if args.baseline else [])
    for label, checkout in checkouts:
        with tempfile.TemporaryDirectory(prefix="tlearn-scale-cache-") as cache:
            for run in ("first", "repeated"):
                seconds, peak, report = _timed_check(root, Path(cache), checkout)
                groups = {frozenset(Path(root, p) for p in group) for group in report["near_duplicates"]}
                found = sum(any({a, b} <= group for group in groups) for a, b in planted)
                rows.append(Row("check", f"check, {run}{label}", f"{seconds:.1f} s",
                                f"peak RSS {peak / 2**20:.0f} MiB; planted copies found {found}/{len(planted)}; "
                                f"near-duplicate groups {len(groups)}"))
    return rows


def _timed_check(root: Path, cache: Path, checkout: Path) -> tuple[float, int, dict]:
    """(wall seconds, peak RSS in bytes of the largest process, the JSON report) of one
    `tlearn check`, run from the tlearn in `checkout`."""
    environment = {**os.environ, "TLEARN_CACHE_DIR": str(cache), "PYTHONPATH": str(checkout)}
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "tlearn", "check", str(root), "--format", "json",
                                    "--no-progress"], stdout=output, env=environment,
                                   cwd=checkout)  # python -m puts the working folder first on the path
        _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage, its pool included
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode not in (0, 1):
            raise SystemExit(f"tlearn check exited {process.returncode}")
        output.seek(0)
        return seconds, usage.ru_maxrss * 1024, json.loads(output.read())


def bench_index(args: argparse.Namespace) -> list[Row]:
    """The near-duplicate index on random hashes against comparing every pair."""
    hashes, planted = make_hashes(args.hashes, args.pairs, args.threshold)
    count = len(hashes)
    started = time.perf_counter()
    found = hamming_pairs(hashes, args.threshold)
    seconds = time.perf_counter() - started
    hits = len({tuple(p) for p in planted.tolist()} & {tuple(p) for p in found.tolist()})
    rows = [Row("index", "hashes", f"{count:,}", f"random 256-bit, {args.pairs:,} planted pairs within "
                                                   f"{args.threshold} bits"),
            Row("index", "index search", f"{seconds:.1f} s", f"planted pairs found {hits}/{len(planted)}; "
                                                             f"{len(found):,} pairs in all; peak RSS of this "
                                                             f"process {_peak_rss() / 2**20:.0f} MiB")]
    for name, search in (("row by row (main before the index)", _row_by_row_pairs),
                         ("every pair, tiled", exhaustive_hamming_pairs)):
        sample = min(count, args.exhaustive_sample)
        started = time.perf_counter()
        search(hashes[:sample], args.threshold)
        measured = time.perf_counter() - started
        if sample == count:
            rows.append(Row("index", name, f"{measured:.1f} s", "measured"))
        else:
            estimate = measured * (count * (count - 1)) / (sample * (sample - 1))
            rows.append(Row("index", name, f"~{_duration(estimate)}", f"extrapolated (x n^2) from {measured:.1f} s "
                                                                        f"measured on the first {sample:,} hashes"))
    return rows


def _row_by_row_pairs(hashes: np.ndarray, threshold: int) -> list[tuple[int, int]]:
    """The near-duplicate search of data/check.py before the index: each hash against all later ones."""
    pairs = []
    for i in range(len(hashes) - 1):
        distances = np.bitwise_count(hashes[i + 1 :] ^ hashes[i]).sum(axis=1)
        pairs.extend((i, i + 1 + int(offset)) for offset in np.nonzero(distances <= threshold)[0])
    return pairs


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


BENCHMARKS = {"check": bench_check, "index": bench_index}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                        help="Run only this part (repeatable); default: all.")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "tlearn-scale",
                        help="Where the synthetic folders are made (and reused when complete).")
    parser.add_argument("--images", type=int, default=30_000, help="check: distinct images in the folder.")
    parser.add_argument("--copies", type=int, default=60, help="check: planted resized copies.")
    parser.add_argument("--baseline", type=Path,
                        help="check: also time `tlearn check` from this tlearn checkout (e.g. main's), side by side.")
    parser.add_argument("--hashes", type=int, default=1_000_000, help="index: random hashes.")
    parser.add_argument("--pairs", type=int, default=1_000, help="index: planted near-duplicate pairs.")
    parser.add_argument("--threshold", type=int, default=24, help="index: bits a near-duplicate may differ in.")
    parser.add_argument("--exhaustive-sample", type=int, default=20_000,
                        help="index: compare every pair on at most this many hashes (extrapolated beyond).")
    args = parser.parse_args()
    rows = []
    for name in args.only or list(BENCHMARKS):
        rows.extend(BENCHMARKS[name](args))
    load = os.getloadavg()
    print(f"{platform.node()}: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"at the end\n")
    print("| part | measure | value | note |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row.part} | {row.measure} | {row.value} | {row.note} |")


if __name__ == "__main__":
    main()
