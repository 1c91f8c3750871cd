"""Benchmark tlearn against the bare network and the Keras-guide recipe, side by side in one run.

    python benchmarks/run.py ../shared/datasets/weather \\
        --weights ../shared/weights/vgg16_imagenet_torchvision_notop.weights.h5 --preprocess torch
    python benchmarks/run.py ../shared/datasets/weather --weights ... --preprocess torch --quick

Six jobs, each in its own child process (this script with --job), on the same data, split, image
size and epochs: the bare VGG16 forward rate, tlearn's embedding rate, `tlearn fit`, the Keras
transfer-learning guide's recipe, `tlearn finetune --unfreeze 4` and a naive end-to-end
fine-tune. Writes BENCHMARKS.md: the README's speed targets as ratios, then the absolute
figures and the machine. The full mode (160 px, 7 fit and 10 fine-tune epochs) takes about an
hour on a 2-core CPU; --quick (16 images per class, 96 px, 3 + 2 epochs) takes about two
minutes and is a smoke check, not the record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmark the checkout's tlearn, installed or not

from tlearn.data.dataset import ImageRecord, scan_folder  # noqa: E402  (needs the path above)

import report  # noqa: E402

JOB_ORDER = ["bare_forward", "tlearn_embedding", "tlearn_fit", "keras_guide", "tlearn_finetune", "naive_finetune"]
# Full mode. The Keras recipes pay a VGG16 forward pass per image every epoch and tlearn one
# in all, so the ratios are set by the epochs, not the image size: 160 px keeps the record to
# about an hour on a 2-core CPU (224 px, tlearn's default, takes about 2.5 hours). 10
# fine-tune epochs: where tlearn's early stopping ended on the weather set. Rates on 96
# images = 3 whole batches of 32.
FULL = {"image_size": 160, "epochs": 7, "finetune_epochs": 10, "rate_images": 96}
# Quick mode: 16 images per class at 96 px finish in minutes; 64 rate images = 2 whole batches.
QUICK = {"image_size": 96, "epochs": 3, "finetune_epochs": 2, "rate_images": 64, "per_class": 16}
BATCH_SIZE = 32
SEED = 1337


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.job:
        return _run_job(args.job, Path(args.spec), Path(args.result))
    settings = _settings(args, argv if argv is not None else sys.argv[1:])
    started, load_before = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tlearn-bench-") as work:
        work_dir = Path(work)
        data_dir = _stratified_sample(Path(args.data_dir), work_dir / "sample", settings["per_class"]) \
            if args.quick else Path(args.data_dir)
        spec = _spec(settings, data_dir, work_dir)
        results = {}
        for index, job in enumerate(JOB_ORDER, 1):
            results[job] = _run_child(job, spec, work_dir)
            _say(f"[{index}/{len(JOB_ORDER)}] {job}: {_summary(results[job])}")
    machine = _machine(load_before, os.getloadavg()[0], (time.monotonic() - started) / 60)
    markdown = report.render(results, settings, machine)
    Path(args.out).write_text(markdown, encoding="utf-8")
    print(markdown)
    _say(f"written to {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", nargs="?", help="folder with one sub-folder of images per class")
    parser.add_argument("--weights", help="VGG16 (no top) weights file, as for tlearn fit")
    parser.add_argument("--preprocess", choices=("caffe", "torch"), help="the weights' input convention")
    parser.add_argument("--image-size", type=int, help=f"default {FULL['image_size']} ({QUICK['image_size']} with --quick)")
    parser.add_argument("--epochs", type=int, help=f"fit and Keras-guide epochs; default {FULL['epochs']} "
                        f"({QUICK['epochs']} with --quick)")
    parser.add_argument("--finetune-epochs", type=int, help="tlearn and naive fine-tune epochs; default "
                        f"{FULL['finetune_epochs']} ({QUICK['finetune_epochs']} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke check: {QUICK['per_class']} images per class, smaller and fewer defaults")
    parser.add_argument("--out", default="BENCHMARKS.md", help="markdown file to write (default BENCHMARKS.md)")
    parser.add_argument("--job", choices=JOB_ORDER, help=argparse.SUPPRESS)  # internal: run one job
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser


def _settings(args, argv: list[str]) -> dict:
    if not args.data_dir or not args.weights or not args.preprocess:
        sys.exit("Error: give DATA_DIR, --weights and --preprocess (a weights file keeps the run offline)")
    for path in (args.data_dir, args.weights):
        if not Path(path).exists():
            sys.exit(f"Error: {path} does not exist")
    defaults = QUICK if args.quick else {**FULL, "per_class": None}
    chosen = {"image_size": args.image_size, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs}
    return {
        **defaults,
        **{key: value for key, value in chosen.items() if value is not None},
        "quick": args.quick, "weights": str(Path(args.weights).resolve()), "preprocess": args.preprocess,
        "data_name": Path(args.data_dir).resolve().name, "batch_size": BATCH_SIZE, "seed": SEED,
        "command": "python benchmarks/run.py " + shlex.join(argv),
    }


def _stratified_sample(data_dir: Path, sample_dir: Path, per_class: int) -> Path:
    """Symlinks to `per_class` files of each class, spread over its sorted listing."""
    for class_dir in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        (sample_dir / class_dir.name).mkdir(parents=True)
        for path in files[:: max(1, len(files) // per_class)][:per_class]:
            os.symlink(path.resolve(), sample_dir / class_dir.name / path.name)
    return sample_dir


def _spec(settings: dict, data_dir: Path, work_dir: Path) -> dict:
    """What every job reads: the settings, the data, and the images the rates are measured on."""
    records = scan_folder(data_dir).records
    rate_sample = _spread(records, settings["rate_images"])
    settings["rate_images"] = len(rate_sample)
    return {
        **settings, "data_dir": str(data_dir), "work_dir": str(work_dir),
        "rate_sample": [str(r.path) for r in rate_sample], "rate_sample_sha256": [r.sha256 for r in rate_sample],
    }


def _spread(records: list[ImageRecord], count: int) -> list[ImageRecord]:
    """`count` records evenly spaced over the list (sorted by class), so every class is in it."""
    if len(records) <= count:
        return list(records)
    return [records[index * len(records) // count] for index in range(count)]


def _run_child(job: str, spec: dict, work_dir: Path) -> dict:
    spec_file, result_file, log_file = (work_dir / f"{job}.{suffix}" for suffix in ("spec.json", "json", "log"))
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    command = [sys.executable, __file__, "--job", job, "--spec", str(spec_file), "--result", str(result_file)]
    with open(log_file, "w", encoding="utf-8") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if finished.returncode != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-4000:]
        sys.exit(f"{tail}\nError: benchmark job {job} failed (exit {finished.returncode}); its log ends above")
    return json.loads(result_file.read_text(encoding="utf-8"))


def _run_job(job: str, spec_file: Path, result_file: Path) -> int:
    """In the child: run one job and write its figures with this process's peak RSS."""
    from jobs import JOBS  # imports TensorFlow, which the parent never does

    result = JOBS[job](json.loads(spec_file.read_text(encoding="utf-8")))
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result_file.write_text(json.dumps(result), encoding="utf-8")
    return 0


def _summary(result: dict) -> str:
    parts = [f"{result['seconds']:.1f} s"]
    if "rate" in result:
        parts.append(f"{result['rate']:.2f} img/s")
    if "test_accuracy" in result:
        parts.append(f"test accuracy {result['test_accuracy']:.3f}")
    parts.append(f"peak RSS {result['peak_rss'] / report.GIB:.2f} GiB")
    return ", ".join(parts)


def _machine(load_before: float, load_after: float, total_minutes: float) -> dict:
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "tensorflow": version("tensorflow"),
        "keras": version("keras"), "python": platform.python_version(), "load_before": load_before,
        "load_after": load_after, "date": time.strftime("%Y-%m-%d"), "total_minutes": total_minutes,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
