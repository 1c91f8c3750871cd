"""The int8 engine of the frozen part against Keras float32, side by side in one run.

    python benchmarks/int8_engine.py DATA_DIR WEIGHTS_FILE [--per-class 25] [--fit-per-class 40]
        [--image-size 224] [--preprocess torch] [--work /tmp/int8-bench]

1. The same --per-class images per class (sorted, first N): images/s of VGG16 up to block5_pool
   in Keras float32 and as tlearn's int8 ONNX Runtime graph (train/engine.py), both warmed up
   first, at batch 32; feature cosine of int8 to float32 (mean, minimum).
2. `tlearn fit` on a copy of --fit-per-class images per class with --engine float32 and with
   --engine int8, each with a fresh cache: wall time (the int8 one includes building and
   calibrating its graph) and test accuracy; then int8 again with the quantised graph cached
   but a fresh activation cache.
Timings on a shared machine are noisy: compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure the checkout's tlearn, installed or not

from tlearn.data.dataset import scan_folder  # noqa: E402
from tlearn.data.images import load_batches  # noqa: E402
from tlearn.metadata import ModelSpec  # noqa: E402
from tlearn.model import feature_extractor, weights_identity  # noqa: E402
from tlearn.train.engine import (  # noqa: E402
    CALIBRATION_IMAGES, OnnxExtractor, quantised_frozen_part, representative_records,
)

_BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("weights", type=Path)
    parser.add_argument("--per-class", type=int, default=25)
    parser.add_argument("--fit-per-class", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--preprocess", default="torch")
    parser.add_argument("--work", type=Path, default=Path("/tmp/int8-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    print(f"load: {os.getloadavg()}")
    throughput(args)
    print(f"load: {os.getloadavg()}")
    fits(args)
    print(f"load: {os.getloadavg()}")


def _sample(data_dir: Path, per_class: int, target: Path) -> Path:
    """A copy of the first `per_class` images of each class folder."""
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(p for p in folder.iterdir() if p.is_file())[:per_class]:
            shutil.copy2(path, target / folder.name / path.name)
    return target


def throughput(args) -> None:
    sample = _sample(args.data_dir, args.per_class, args.work / "throughput" / "weather")
    scanned = scan_folder(sample, image_size=args.image_size, cache_dir=args.work / "cache-throughput")
    records = scanned.records
    spec = ModelSpec(scanned.class_names, args.image_size, str(args.weights), weights_identity(str(args.weights), 0),
                     args.preprocess, 256, 0.5)
    model = spec.build(str(args.weights))
    keras_extractor = feature_extractor(model, ["block5_pool"])
    started = time.monotonic()
    path, _ = quantised_frozen_part(model, spec, ["block5_pool"],
                                    representative_records(records, 1337, CALIBRATION_IMAGES), args.work / "cache-q")
    print(f"int8 graph built and calibrated on {CALIBRATION_IMAGES} images in {time.monotonic() - started:.0f} s")
    onnx = OnnxExtractor(path, args.image_size, [tuple(keras_extractor.outputs[0].shape[1:])])
    pixels = np.stack([item for batch in load_batches([r.path for r in records], args.image_size, _BATCH)
                       for item in batch]).astype(np.float32)
    results = {}
    for name, embed in (("keras float32", keras_extractor.predict_on_batch), ("onnx int8", onnx.predict_on_batch)):
        embed(pixels[:_BATCH])  # warm-up
        started = time.monotonic()
        features = np.concatenate([np.asarray(embed(pixels[i:i + _BATCH])) for i in range(0, len(pixels), _BATCH)])
        seconds = time.monotonic() - started
        results[name] = features.reshape(len(pixels), -1).astype(np.float32)
        print(f"{name}: {len(pixels)} images in {seconds:.1f} s = {len(pixels) / seconds:.2f} images/s")
        started = time.monotonic()
        for image in pixels[:8]:
            embed(image[None])
        print(f"{name}: batch-1 latency {(time.monotonic() - started) / 8 * 1000:.0f} ms")
    a, b = results["keras float32"], results["onnx int8"]
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"feature cosine int8 vs float32: mean {cosine.mean():.5f}, min {cosine.min():.5f}")


def fits(args) -> None:
    sample = _sample(args.data_dir, args.fit_per_class, args.work / "fit" / "weather")
    for label, engine, cache in (("float32", "float32", "cache-f32"), ("int8 (graph built)", "int8", "cache-i8"),
                                 ("int8 (graph cached)", "int8", "cache-i8")):
        if label.endswith("cached)"):
            for folder in (args.work / cache).glob("*/config.json"):
                shutil.rmtree(folder.parent)  # activations recomputed; the quantised graph kept
        out = args.work / "runs" / label.split()[0].replace("(", "") / str(time.monotonic_ns())
        command = [sys.executable, "-m", "tlearn", "fit", str(sample), "--out", str(out), "--cache-dir",
                   str(args.work / cache), "--weights", str(args.weights), "--preprocess", args.preprocess,
                   "--image-size", str(args.image_size), "--engine", engine, "--no-progress"]
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        seconds = time.monotonic() - started
        if result.returncode != 0:
            print(f"fit {label} failed:\n{result.stderr[-2000:]}")
            continue
        stage = json.loads((out / "tlearn.json").read_text())["stages"][0]
        print(f"fit --engine {label}: {seconds:.0f} s wall, test accuracy {stage['test_accuracy']:.4f}, "
              f"check {stage['settings'].get('engine_check')}")


if __name__ == "__main__":
    main()
