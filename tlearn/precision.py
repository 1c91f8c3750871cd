"""Choosing the Keras dtype policy: mixed float16 where a GPU makes it pay."""

from __future__ import annotations

import keras
import tensorflow as tf


def policy_for(mode: str, gpu_visible: bool) -> str:
    """The policy --mixed-precision `mode` (auto|on|off) means on a machine with or without a GPU.

    auto = mixed_float16 when a GPU is visible, float32 otherwise: on a CPU float16 maths is
    emulated and slower.
    """
    return "mixed_float16" if mode == "on" or (mode == "auto" and gpu_visible) else "float32"


def apply_precision_policy(mode: str = "auto") -> str:
    """Set the global policy for `mode` (checked by the settings) and return its name.

    Layers built afterwards use the policy; the classifier's output layer stays float32.
    """
    policy = policy_for(mode, bool(tf.config.list_physical_devices("GPU")))
    keras.mixed_precision.set_global_policy(policy)
    return policy
