"""Checking an exported file against the run's SavedModel before it counts as done.

On the run's test split: how often the file's top class is the SavedModel's, the largest
difference of any probability, the file's accuracy, its size and its single-image latency on
this machine. Every export of a run is kept in RUN/export/verification.json, one entry per
format and quantization.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .atomic import write_json_atomically
from .data.images import UnreadableImage, load_batches
from .errors import TlearnError
from .run import Run
from .runtimes import ServedModel, open_litert, open_onnx, open_saved_model

VERIFICATION_FILE = "verification.json"
# The SavedModel's answers on the test split, kept for the next export of the same stage: on a
# CPU they cost as long as a verification itself (a VGG16 pass over the test split).
REFERENCE_FILE = "saved_model_reference.json"
_BATCH = 16
_WARM_UP, _TIMED = 2, 7  # single-image calls: the first ones build caches and pick kernels
# What each quantization is expected to keep of the SavedModel's answers on the test split:
# (least top-1 agreement, largest probability difference or None, most test images of accuracy lost).
TARGETS = {"none": (1.0, 1e-3, 0), "float16": (1.0, None, 0), "dynamic": (0.98, None, 1), "int8": (0.98, None, 1)}
INT8_MAX_SIZE_OF_FLOAT32 = 0.30


@dataclass
class TestImages:
    """The run's test split as pixels, with the SavedModel's probabilities for them."""

    pixels: np.ndarray
    labels: np.ndarray  # class indices
    reference: np.ndarray  # the SavedModel's probabilities
    reference_latency_ms: float

    @classmethod
    def load(cls, run: Run, records) -> TestImages:
        index = {name: i for i, name in enumerate(run.class_names)}
        records = [r for r in records if r.label in index]
        loaded = [item for batch in load_batches([r.path for r in records], run.spec.image_size, _BATCH)
                  for item in batch]
        kept = [(pixels, index[r.label], r.sha256) for r, pixels in zip(records, loaded)
                if not isinstance(pixels, UnreadableImage)]
        if not kept:
            raise TlearnError(f"none of {run.path}'s test images could be read, so an export cannot be verified: "
                              "pass the dataset's place with --data")
        pixels = np.stack([p for p, _, _ in kept])
        key = {"stage": run.last_stage.name, "image_size": run.spec.image_size, "files": [h for _, _, h in kept]}
        reference = _saved_model_reference(run, pixels, key)
        return cls(pixels, np.array([label for _, label, _ in kept]), np.array(reference["probabilities"], np.float32),
                   reference["latency_ms"])


def _saved_model_reference(run: Run, pixels: np.ndarray, key: dict) -> dict:
    """The SavedModel's probabilities and latency on these test pixels: kept from an earlier
    export of the same stage and images, or computed now and kept."""
    path = run.files.root / "export" / REFERENCE_FILE
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept["key"] == key:
            return kept
    except (OSError, ValueError, KeyError, TypeError):
        pass
    saved_model = open_saved_model(run.files.saved_model, run)
    reference = {"key": key, "probabilities": _probabilities(saved_model, pixels).tolist(),
                 "latency_ms": _latency_ms(saved_model, pixels[:1])}
    write_json_atomically(path, reference)
    return reference


def verify(path: Path, format: str, quantize: str, run: Run, test: TestImages, earlier: dict) -> tuple[dict, list[str]]:
    """The verification entry of the exported file at `path`, and a warning per target missed."""
    served = open_litert(path, run) if format == "litert" else open_onnx(path, run)
    probabilities = _probabilities(served, test.pixels)
    agreement = float(np.mean(probabilities.argmax(1) == test.reference.argmax(1)))
    entry = {
        "format": format, "quantize": quantize, "file": path.name, "bytes": path.stat().st_size,
        "test_images": len(test.labels), "top1_agreement": agreement,
        "max_probability_difference": float(np.abs(probabilities - test.reference).max()),
        "accuracy": float(np.mean(probabilities.argmax(1) == test.labels)),
        "saved_model_accuracy": float(np.mean(test.reference.argmax(1) == test.labels)),
        "latency_ms": _latency_ms(served, test.pixels[:1]),
        "saved_model_latency_ms": test.reference_latency_ms,
        "stage": run.last_stage.name, "tlearn_version": __version__,
        "verified": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    warnings = _missed_targets(entry, earlier.get(_key(format, "none")))
    entry["targets_met"] = not warnings
    return entry, warnings


def _missed_targets(entry: dict, float32: dict | None) -> list[str]:
    least_agreement, largest_difference, most_lost = TARGETS[entry["quantize"]]
    name = f"{entry['format']} {entry['quantize']}"
    missed = []
    if entry["top1_agreement"] < least_agreement:
        missed.append(f"{name} agrees with the SavedModel on {entry['top1_agreement']:.1%} of the test split "
                      f"(target: {least_agreement:.0%})")
    if largest_difference is not None and entry["max_probability_difference"] > largest_difference:
        missed.append(f"{name} differs from the SavedModel by up to {entry['max_probability_difference']:.2g} "
                      f"in probability (target: {largest_difference:g})")
    lost = round((entry["saved_model_accuracy"] - entry["accuracy"]) * entry["test_images"])
    if lost > most_lost:
        missed.append(f"{name} gets {lost} more test images wrong than the SavedModel (target: at most {most_lost})")
    if entry["quantize"] == "int8" and float32 and entry["bytes"] > INT8_MAX_SIZE_OF_FLOAT32 * float32["bytes"]:
        missed.append(f"{name} is {entry['bytes'] / float32['bytes']:.0%} of the float32 file's size "
                      f"(target: {INT8_MAX_SIZE_OF_FLOAT32:.0%})")
    return missed


def _probabilities(served: ServedModel, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([served.probabilities(pixels[i : i + _BATCH]) for i in range(0, len(pixels), _BATCH)])


def _latency_ms(served: ServedModel, one_image: np.ndarray) -> float:
    """Median milliseconds of one single-image call, after warm-up calls."""
    for _ in range(_WARM_UP):
        served.probabilities(one_image)
    timings = []
    for _ in range(_TIMED):
        start = time.perf_counter()
        served.probabilities(one_image)
        timings.append((time.perf_counter() - start) * 1000)
    return float(statistics.median(timings))


def _key(format: str, quantize: str) -> str:
    return f"{format}/{quantize}"


def read_verification(export_dir: Path) -> dict:
    """RUN/export/verification.json's entries ("litert/int8" -> entry), or none yet."""
    try:
        return json.loads((Path(export_dir) / VERIFICATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def record_verification(export_dir: Path, entry: dict) -> dict:
    """Add (or replace) `entry` in verification.json; returns all entries."""
    entries = read_verification(export_dir)
    entries[_key(entry["format"], entry["quantize"])] = entry
    write_json_atomically(Path(export_dir) / VERIFICATION_FILE, entries)
    return entries


def verification_table(entries: dict) -> str:
    """The entries as an aligned table, the SavedModel first, then one row per exported file."""
    header = ("file", "size MB", "agreement", "max diff", "accuracy", "latency ms", "targets")
    rows = []
    if entries:
        first = next(iter(entries.values()))
        rows.append(("saved_model (reference)", "", "", "", f"{first['saved_model_accuracy']:.4f}",
                     f"{first['saved_model_latency_ms']:.1f}", ""))
    for entry in entries.values():
        rows.append((entry["file"], f"{entry['bytes'] / 1e6:.1f}", f"{entry['top1_agreement']:.1%}",
                     f"{entry['max_probability_difference']:.1e}", f"{entry['accuracy']:.4f}",
                     f"{entry['latency_ms']:.1f}", "met" if entry["targets_met"] else "missed"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    return "".join(line.rstrip() + "\n" for line in lines)
