"""Would decoding JPEGs at reduced scale (Pillow's `draft`) change what a run's model says?

    python benchmarks/jpeg_draft.py RUN_DIR DATA_DIR [--factors 1 2 4]

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 scale, several times faster than a full decode.
For each factor k, every JPEG in DATA_DIR that a draft to at least k x the run's image size would
shrink is decoded both ways (full resolution, and drafted), resized by tlearn's one resize, and
classified by the run's SavedModel; this prints the largest |difference| in probability, how
many classes change, and the decode + resize time per image each way. tlearn decodes in full
(only images over 40 megapixels are reduced) unless a factor agrees within 1e-3 everywhere.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure the checkout's tlearn, installed or not

import tlearn  # noqa: E402  (needs the path above)
from tlearn.data.images import decode_rgb, open_image, resize_for_model, to_rgb  # noqa: E402
from tlearn.export import load_serving_function  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    run = tlearn.Run.open(args.run_dir)
    size = run.spec.image_size
    serve = load_serving_function(run.files.saved_model)
    jpegs = sorted(p for p in args.data_dir.rglob("*") if p.is_file() and _jpeg_size(p))
    for factor in args.factors:
        target = factor * size
        shrunk = [p for p in jpegs if min(s // target for s in _jpeg_size(p)) >= 2]
        if not shrunk:
            print(f"draft to >= {factor} x {size} px: no JPEG in {args.data_dir} would be reduced")
            continue
        full, full_seconds = _timed(lambda path: resize_for_model(decode_rgb(path), size), shrunk)
        drafted, draft_seconds = _timed(lambda path: resize_for_model(_drafted(path, target), size), shrunk)
        p_full, p_draft = _classify(serve, full), _classify(serve, drafted)
        difference = np.abs(p_full - p_draft).max(axis=1)
        flips = int((p_full.argmax(1) != p_draft.argmax(1)).sum())
        print(
            f"draft to >= {factor} x {size} px: {len(shrunk)} of {len(jpegs)} JPEGs reduced; "
            f"max |difference| {difference.max():.2e} ({shrunk[int(difference.argmax())].name}), "
            f"{int((difference > 1e-3).sum())} over 1e-3, {flips} change class; decode + resize "
            f"{1000 * full_seconds / len(shrunk):.0f} ms full, {1000 * draft_seconds / len(shrunk):.0f} ms drafted"
        )


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    try:
        with open_image(path) as image:
            return image.size if image.format in ("JPEG", "MPO") else None
    except Exception:
        return None


def _drafted(path: Path, target: int) -> np.ndarray:
    with open_image(path) as image:
        image.draft("RGB", (target, target))
        return np.asarray(to_rgb(ImageOps.exif_transpose(image)))


def _timed(load, paths):
    started = time.perf_counter()
    pixels = [load(path) for path in paths]
    return pixels, time.perf_counter() - started


def _classify(serve, pixels: list[np.ndarray]) -> np.ndarray:
    rows = []
    for start in range(0, len(pixels), 16):
        (probabilities,) = serve(pixels=np.stack(pixels[start : start + 16])).values()
        rows.append(probabilities.numpy())
    return np.concatenate(rows)


if __name__ == "__main__":
    main()
