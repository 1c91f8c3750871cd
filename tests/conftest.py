"""Small real image folders and one real fitted run, shared by the tests.

Everything runs real TensorFlow on random-weight VGG16 at 32 px: fast, no downloads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tlearn.cli import main
from tlearn.train.activations import ActivationCache, Location

SHARED = Path(__file__).resolve().parents[2] / "shared"
CLASS_COLOURS = {"cloudy": (128, 128, 128), "rain": (20, 40, 200), "sunrise": (230, 120, 20)}


def solid_image(colour, size=48, seed=0, noise=20.0) -> Image.Image:
    """A noisy flat-colour picture: trivially separable by class, yet no two files alike."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(colour, dtype=float)[None, None, :] + rng.normal(0, noise, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_class_folders(root: Path, per_class: int = 14, size: int = 48) -> Path:
    for index, (name, colour) in enumerate(CLASS_COLOURS.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            solid_image(colour, size, seed=index * 1000 + number).save(folder / f"{name}{number}.jpg", quality=95)
    return root


def add_odd_files(root: Path) -> dict[str, Path]:
    """Files that real folders contain: each must be decoded or reported, never fatal."""
    cloudy, rain, sunrise = (root / name for name in CLASS_COLOURS)
    odd = {
        "png_named_jpg": cloudy / "png_inside.jpg",
        "grayscale": cloudy / "gray.jpg",
        "rgba_png": rain / "alpha.png",
        "gif": sunrise / "animated.gif",
        "truncated": rain / "truncated.jpg",
        "zero_bytes": sunrise / "empty.jpg",
        "text": cloudy / "notes.jpg",
        "hidden": cloudy / ".DS_Store",
    }
    solid_image(CLASS_COLOURS["cloudy"], seed=7).save(odd["png_named_jpg"], format="PNG")
    solid_image(CLASS_COLOURS["cloudy"], seed=8).convert("L").save(odd["grayscale"])
    rgba = solid_image(CLASS_COLOURS["rain"], seed=9).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(odd["rgba_png"])
    frames = [solid_image(CLASS_COLOURS["sunrise"], seed=s).convert("P") for s in (10, 11)]
    frames[0].save(odd["gif"], save_all=True, append_images=frames[1:])
    full = rain / "rain0.jpg"
    odd["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    odd["zero_bytes"].write_bytes(b"")
    odd["text"].write_text("not a picture\n")
    odd["hidden"].write_bytes(b"\x00\x01")
    return odd


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Activation caches of the test session go to a temporary folder, never ~/.cache."""
    os.environ["TLEARN_CACHE_DIR"] = str(tmp_path_factory.mktemp("activation-cache"))
    os.environ.pop("TLEARN_WEIGHTS", None)
    os.environ.pop("TLEARN_PREPROCESS", None)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """Three separable classes of 14 JPEGs each plus every kind of odd file."""
    root = make_class_folders(tmp_path_factory.mktemp("data") / "colours")
    add_odd_files(root)
    return root


def activation_caches(cache_dir: Path, cut: str) -> list[ActivationCache]:
    """The activation caches of base layer `cut` under `cache_dir` (one per configuration)."""
    keys = sorted(Path(cache_dir).glob("*/config.json"))
    return [ActivationCache(key.parent) for key in keys if json.loads(key.read_text())["cut"] == cut]


def cached_activation_entries(cache_dir: Path, cut: str) -> dict[str, Location]:
    """Entry name (`<sha256>-plain`, `<sha256>-<augmentation>-v1`, ...) -> where it is stored,
    for every entry cached at base layer `cut` under `cache_dir`, sorted by name. An entry
    stored again (recomputed) has a new location."""
    entries = {name: where for cache in activation_caches(cache_dir, cut) for name, where in cache.entries().items()}
    return dict(sorted(entries.items()))


def cached_activations(cache_dir: Path, cut: str) -> dict[str, np.ndarray]:
    """Entry name -> its checked array, for every entry cached at base layer `cut` under `cache_dir`."""
    arrays = {}
    for cache in activation_caches(cache_dir, cut):
        for name in cache.entries():
            sha256, tag = name.split("-", 1)
            arrays[name] = cache.shards.read(sha256, tag)
    return dict(sorted(arrays.items()))


FAST_FIT = ["--weights", "none", "--image-size", "32", "--epochs", "40", "--patience", "40",
            "--lr", "0.003", "--batch-size", "8", "--no-progress"]


def run_cli(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="session")
def fitted_run(dataset_dir, tmp_path_factory) -> Path:
    """A real `tlearn fit` run on `dataset_dir`; tests must not change it (copy it first)."""
    models = tmp_path_factory.mktemp("models")
    result = run_cli("fit", dataset_dir, "--models-dir", models, *FAST_FIT)
    assert result.exit_code == 0, result.output
    return models / "colours"


@pytest.fixture
def run_copy(fitted_run, tmp_path) -> Path:
    """A private copy of the fitted run, for tests that change it."""
    target = tmp_path / "models" / "colours"
    shutil.copytree(fitted_run, target)
    return target
