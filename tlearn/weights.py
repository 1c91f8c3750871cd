"""Where the base's pretrained weights come from, and a stable name for them."""

from __future__ import annotations

from pathlib import Path

from .config import PREPROCESS_MODES, default_preprocess, default_weights
from .errors import TlearnError
from .images import file_sha256


def resolve_weights(weights: str | None, preprocess: str | None) -> tuple[str, str]:
    """Apply the environment defaults and check the pair; returns (weights, preprocess)."""
    weights = weights or default_weights()
    preprocess = preprocess or default_preprocess()
    if preprocess not in PREPROCESS_MODES:
        raise TlearnError(f"--preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {preprocess!r}")
    if weights not in ("imagenet", "none"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise TlearnError(f"--weights {weights}: no such file (use imagenet, none or a path to a weights file)")
        weights = str(path.resolve())
    return weights, preprocess


def weights_identity(weights: str, seed: int) -> str:
    """What the base's numbers depend on: the cache key and the run's record use this."""
    if weights == "imagenet":
        return "keras-imagenet"
    if weights == "none":
        return f"random-seed-{seed}"
    return "sha256:" + file_sha256(Path(weights))
