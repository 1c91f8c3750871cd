"""How tlearn's costs grow with the number of images: synthetic folders and hashes, side by side.

    PYTHONPATH=. python benchmarks/scale.py                  # every part, the issue's sizes
    PYTHONPATH=. python benchmarks/scale.py --only check     # `tlearn check` on a 30,060-image folder
    PYTHONPATH=. python benchmarks/scale.py --only check --baseline ../main   # ... and main's, side by side
    PYTHONPATH=. python benchmarks/scale.py --only index     # near-duplicate search on 1,000,000 hashes
    PYTHONPATH=. python benchmarks/scale.py --only cache     # the sharded activation cache's files and bytes
    PYTHONPATH=. python benchmarks/scale.py --only predict   # `tlearn predict` on 10,000 JPEGs vs a bare pass
    PYTHONPATH=. python benchmarks/scale.py --only overhead --baseline ../main   # fit's fixed cost at 224 px
    PYTHONPATH=. python benchmarks/scale.py --only workers   # two loopback multi-worker fits vs one process

Parts (each a function `bench_<part>(args) -> list[Row]`; add one to BENCHMARKS to add a part):
- check: `tlearn check` (a fresh process, a fresh cache) on a folder of small synthetic JPEGs
  with planted resized copies, run twice: first (every file inspected) and repeated (file facts
  from the cache); each run's wall time and peak RSS, and whether every planted copy was found.
- index: the near-duplicate index on random 256-bit hashes with planted pairs within the
  threshold, against comparing every pair: today's row-by-row search (main before the index)
  and the tiled comparison the index falls back on. Where comparing every pair would take too
  long it runs on the first --exhaustive-sample hashes and is extrapolated (pairs grow as n^2):
  the table says which.
- cache: benchmarks/cache_scale.py's footprint (files, bytes, write and open time) of 10,000
  entries of fit's shape and 1,000,000 small ones, and the projected file count at 10k-1M images.
- predict: `tlearn predict --format csv` (a fresh process) on a folder of small JPEGs with a
  small random-weights run: its rows per second from the first row to the last, and its peak
  RSS, against the same SavedModel's bare forward pass over as many in-memory images.
- overhead: `tlearn fit` on 160 weather photos at 224 px with the real weights (a fresh process
  and cache) against one bare VGG16 pass (decode + predict_on_batch, after warm-up) over them.
- workers: `tlearn fit --strategy multi-worker` as two loopback workers (TF_CONFIG with two
  localhost ports) against one process on the same small JPEGs.

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
sys.path.insert(0, str(REPO / "benchmarks"))  # cache_scale

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


WEATHER = Path("/work/shared/datasets/weather")
REAL_WEIGHTS = Path("/work/shared/weights/vgg16_imagenet_torchvision_notop.weights.h5")


def bench_overhead(args: argparse.Namespace) -> list[Row]:
    """`tlearn fit`'s whole process against one bare VGG16 pass over the same images, same run
    (with --baseline, that checkout's fit too, side by side)."""
    folder = _small_weather_folder(args.work_dir / "weather-small", args.per_class)
    images = sorted(folder.rglob("*.*"))
    checkouts = [("", REPO)] + ([(f" ({args.baseline.name})", args.baseline)] if args.baseline else [])
    fits = {label: _timed_fit(folder, checkout, args.size) for label, checkout in checkouts}
    bare_seconds = _bare_pass_seconds(images, args.size, 32)
    rows = [Row("overhead", "folder", f"{len(images)} photos", f"weather, {args.per_class} per class, {args.size} px, "
                                                               "real weights"),
            Row("overhead", "bare VGG16 pass", f"{bare_seconds:.1f} s", "decode + predict_on_batch, after warm-up")]
    for label, seconds in fits.items():
        rows.append(Row("overhead", f"`tlearn fit`, whole process{label}", f"{seconds:.1f} s",
                        f"fresh cache; fixed overhead (minus the bare pass) {seconds - bare_seconds:.1f} s"))
    return rows


def _timed_fit(folder: Path, checkout: Path, size: int) -> float:
    """Wall seconds of one `tlearn fit` process from `checkout`, with a fresh cache."""
    with tempfile.TemporaryDirectory(prefix="tlearn-overhead-") as scratch:
        command = [sys.executable, "-m", "tlearn", "fit", str(folder), "--out", f"{scratch}/run",
                   "--weights", str(REAL_WEIGHTS), "--preprocess", "torch", "--image-size", str(size),
                   "--no-progress"]
        environment = {**os.environ, "TLEARN_CACHE_DIR": f"{scratch}/cache", "PYTHONPATH": str(checkout)}
        started = time.perf_counter()
        subprocess.run(command, env=environment, cwd=checkout, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def _small_weather_folder(root: Path, per_class: int) -> Path:
    """The first `per_class` photos of each weather class, copied (reused when complete)."""
    import shutil

    for class_folder in sorted(path for path in WEATHER.iterdir() if path.is_dir()):
        target = root / class_folder.name
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(class_folder.iterdir())[:per_class]:
            if not (target / path.name).exists():
                shutil.copy2(path, target / path.name)
    return root


def _bare_model(size: int, weights: str = str(REAL_WEIGHTS), preprocess: str = "torch"):
    """The frozen VGG16 that fit embeds with (preprocessing, then every block), float32."""
    from tlearn.model import build_classifier, feature_extractor

    model = build_classifier(["a", "b"], size, weights, preprocess)
    return feature_extractor(model, "block5_pool")


def _bare_pass_seconds(paths: list[Path], size: int, batch_size: int, model=None) -> float:
    """Seconds to decode `paths` (threads, next batch meanwhile) and run them through the bare
    model with predict_on_batch at `batch_size`, after one warm-up batch of each shape."""
    from tlearn.data.images import load_batches

    model = model or _bare_model(size)
    shapes = {min(batch_size, len(paths)), len(paths) % batch_size or batch_size}
    for rows in shapes:
        model.predict_on_batch(np.zeros((rows, size, size, 3), np.float32))
    started = time.perf_counter()
    for loaded in load_batches(paths, size, batch_size):
        model.predict_on_batch(np.stack(loaded).astype(np.float32))
    return time.perf_counter() - started


def bench_predict(args: argparse.Namespace) -> list[Row]:
    """`tlearn predict` (a fresh process, CSV to a file) over a folder of small JPEGs, against
    the same exported model's bare forward pass over as many images, in this process."""
    root = args.work_dir / f"predict-{args.predict_images}"
    make_image_folder(root, args.predict_images, classes=2, copies=0)
    paths = sorted(root.rglob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="tlearn-predict-") as scratch:
        run = _tiny_run(args.work_dir / "predict-train", Path(scratch), args.predict_size)
        environment = {**os.environ, "PYTHONPATH": str(REPO), "TLEARN_CACHE_DIR": f"{scratch}/cache"}
        process = subprocess.Popen([sys.executable, "-m", "tlearn", "predict", str(root), "--model", str(run),
                                    "--format", "csv", "--no-progress"], stdout=subprocess.PIPE, env=environment,
                                   cwd=REPO, stderr=subprocess.DEVNULL)
        started = time.perf_counter()
        stamps = [time.perf_counter() for _ in iter(process.stdout.readline, b"")][1:]  # the header aside
        _, _, usage = os.wait4(process.pid, 0)
        whole = time.perf_counter() - started
        streaming = (len(stamps) - 1) / (stamps[-1] - stamps[0])  # first row to last: the start-up aside
        bare = len(paths) / _bare_predict_seconds(run, len(paths), args.predict_size)
    return [Row("predict", "folder", f"{len(paths):,} JPEGs", f"48 px, a run at {args.predict_size} px (random "
                                                              "weights), batch 16"),
            Row("predict", "`tlearn predict`, rows/s", f"{streaming:.0f} img/s",
                f"first row to last; {len(paths) / whole:.0f} img/s over the whole process ({whole:.0f} s); "
                f"peak RSS {usage.ru_maxrss / 2**10:.0f} MiB"),
            Row("predict", "bare forward pass", f"{bare:.0f} img/s", "the same SavedModel on in-memory pixels"),
            Row("predict", "ratio", f"{streaming / bare:.2f}x", "target >= 0.9x")]


def _tiny_run(data: Path, scratch: Path, size: int) -> Path:
    """A run fitted (random weights, one epoch) on a small synthetic folder."""
    make_image_folder(data, 60, classes=2, copies=0)
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TLEARN_CACHE_DIR": str(scratch / "cache")}
    subprocess.run([sys.executable, "-m", "tlearn", "fit", str(data), "--out", str(scratch / "run"), "--weights",
                    "none", "--image-size", str(size), "--epochs", "1", "--no-progress"], env=environment, cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return scratch / "run"


def _bare_predict_seconds(run: Path, images: int, size: int, batch_size: int = 16) -> float:
    from tlearn.runtimes import open_model

    served = open_model(run)
    pixels = np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)
    served.probabilities(pixels)  # warm-up
    started = time.perf_counter()
    for start in range(0, images, batch_size):
        served.probabilities(pixels[: min(batch_size, images - start)])
    return time.perf_counter() - started


def bench_cache(args: argparse.Namespace) -> list[Row]:
    """The sharded activation cache's files and bytes (benchmarks/cache_scale.py)."""
    from cache_scale import FIT_ENTRY, cache_footprint, projected_files

    rows = []
    for count, shape in ((args.cache_entries, FIT_ENTRY), (args.cache_small_entries, (8,))):
        row = cache_footprint(count, shape, args.work_dir)
        rows.append(Row("cache", f"{count:,} entries of {'x'.join(map(str, shape))}",
                        f"{row['files']} files, {row['bytes'] / 1e6:,.0f} MB",
                        f"format 2: {row['format_2_files']:,} files; write {row['write_s']:.1f} s, "
                        f"open {row['open_s']:.2f} s"))
    for count in (10_000, 100_000, 1_000_000):
        rows.append(Row("cache", f"projected, {count:,} images x 3 views", f"{projected_files(count, views=3)} files",
                        f"fit's cut 7x7x512 float16; format 2: {3 * count + 1:,} files"))
    return rows


def bench_workers(args: argparse.Namespace) -> list[Row]:
    """`tlearn fit --strategy multi-worker` with two loopback workers against one process, on
    the same folder of small JPEGs (random weights, fresh caches)."""
    folder = args.work_dir / f"workers-{args.worker_images}"
    make_image_folder(folder, args.worker_images, classes=2, copies=0)
    options = ["--weights", "none", "--image-size", str(args.predict_size), "--epochs", "2", "--no-progress"]
    with tempfile.TemporaryDirectory(prefix="tlearn-workers-") as scratch:
        one = _timed_fits(folder, Path(scratch) / "one", options + ["--strategy", "none"], workers=1)
        two = _timed_fits(folder, Path(scratch) / "two", options + ["--strategy", "multi-worker"], workers=2)
    note = f"48 px, fit at {args.predict_size} px, random weights, 2 epochs; {os.cpu_count()} cores"
    return [Row("workers", "folder", f"{args.worker_images:,} JPEGs", note),
            Row("workers", "one process", f"{one:.1f} s", "`--strategy none`"),
            Row("workers", "two loopback workers", f"{two:.1f} s", "`--strategy multi-worker`, TF_CONFIG with two "
                                                                   "localhost ports, each its own cache")]


def _timed_fits(folder: Path, scratch: Path, options: list[str], workers: int) -> float:
    """Wall seconds until every one of `workers` fit processes (one per TF_CONFIG task) ended."""
    ports = [_free_port() for _ in range(workers)]
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    processes = []
    started = time.perf_counter()
    for index in range(workers):
        environment = {**os.environ, "PYTHONPATH": str(REPO), "TLEARN_CACHE_DIR": str(scratch / f"cache{index}")}
        if workers > 1:
            environment["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen([sys.executable, "-m", "tlearn", "fit", str(folder), "--out",
                                           str(scratch / f"run{index}"), *options], env=environment, cwd=REPO,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if any(process.wait() != 0 for process in processes):
        raise SystemExit("a fit process failed")
    return time.perf_counter() - started


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


BENCHMARKS = {"check": bench_check, "index": bench_index, "overhead": bench_overhead,
              "predict": bench_predict, "cache": bench_cache,
              "workers": bench_workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                        help="Run only this part (repeatable); default: all.")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "tlearn-scale",
                        help="Where the synthetic folders are made (and reused when complete).")
    parser.add_argument("--images", type=int, default=30_000, help="check: distinct images in the folder.")
    parser.add_argument("--copies", type=int, default=60, help="check: planted resized copies.")
    parser.add_argument("--baseline", type=Path,
                        help="check, overhead: also time `tlearn check` / `tlearn fit` from this tlearn checkout "
                             "(e.g. main's), side by side.")
    parser.add_argument("--hashes", type=int, default=1_000_000, help="index: random hashes.")
    parser.add_argument("--pairs", type=int, default=1_000, help="index: planted near-duplicate pairs.")
    parser.add_argument("--threshold", type=int, default=24, help="index: bits a near-duplicate may differ in.")
    parser.add_argument("--exhaustive-sample", type=int, default=20_000,
                        help="index: compare every pair on at most this many hashes (extrapolated beyond).")
    parser.add_argument("--per-class", type=int, default=40, help="overhead: weather photos per class.")
    parser.add_argument("--size", type=int, default=224, help="overhead: image size of the fit.")
    parser.add_argument("--predict-images", type=int, default=10_000, help="predict: JPEGs in the folder.")
    parser.add_argument("--predict-size", type=int, default=64, help="predict: image size of the run.")
    parser.add_argument("--cache-entries", type=int, default=10_000, help="cache: entries of fit's shape.")
    parser.add_argument("--cache-small-entries", type=int, default=1_000_000, help="cache: small entries.")
    parser.add_argument("--worker-images", type=int, default=3_000, help="workers: JPEGs in the folder.")
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
