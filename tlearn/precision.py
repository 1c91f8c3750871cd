"""Choosing the Keras dtype policy: mixed float16 where a GPU makes it pay."""

from __future__ import annotations

import keras
import tensorflow as tf

from .config import MIXED_PRECISION_MODES
from .errors import TlearnError


def apply_precision_policy(mode: str = "auto") -> str:
    """Set the global policy for `mode` (auto|on|off) and return its name.

    auto = mixed_float16 when a GPU is visible, float32 otherwise: on a CPU float16 maths is
    emulated and slower. Layers built afterwards use the policy; the output layer is float32.
    """
    if mode not in MIXED_PRECISION_MODES:
        raise TlearnError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION_MODES)}, got {mode!r}")
    use_mixed = mode == "on" or (mode == "auto" and bool(tf.config.list_physical_devices("GPU")))
    policy = "mixed_float16" if use_mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy
