"""Damaged activation cache entries, made for real on disk, met by real CLI commands."""

import shutil

import numpy as np
import pytest

from conftest import FAST_FIT, cached_activation_files, make_class_folders, run_cli
from tlearn.train import stages
from tlearn.train.activations import ActivationCache

QUICK_FIT = [*FAST_FIT, "--epochs", "1", "--patience", "1", "--val-split", "0.25", "--test-split", "0.25"]


def quick_fit(data, out, cache):
    result = run_cli("fit", data, "--out", out, "--cache-dir", cache, *QUICK_FIT)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Data and the activation cache its first fit filled; tests damage copies of the cache."""
    root = tmp_path_factory.mktemp("damaged-cache")
    data = make_class_folders(root / "colours", per_class=4)
    quick_fit(data, root / "first", root / "cache")
    return data, root / "cache"


@pytest.fixture
def data_and_cache(fitted, tmp_path):
    data, cache = fitted
    shutil.copytree(cache, tmp_path / "cache")
    return data, tmp_path / "cache"


def cache_warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Warning:") and "activation cache" in line]


def test_a_later_fit_recomputes_damaged_entries_with_one_warning(data_and_cache, tmp_path):
    data, cache = data_and_cache
    entries = cached_activation_files(cache, "block5_pool")
    before = {path: np.load(path) for path in entries}
    truncated, garbage, wrong_shape, zeros, flipped, copied = entries[:6]
    truncated.write_bytes(truncated.read_bytes()[:1000])
    garbage.write_bytes(b"not an array at all")
    np.save(wrong_shape, np.zeros((3, 3), np.float16))
    np.save(zeros, np.zeros_like(before[zeros]))  # right shape and dtype, wrong values, no checksum
    content = bytearray(flipped.read_bytes())
    content[300] ^= 0x01
    flipped.write_bytes(bytes(content))
    shutil.copy(entries[6], copied)  # another image's sound entry under this image's name

    result = quick_fit(data, tmp_path / "second", cache)
    assert cache_warnings(result.output) == [
        f"Warning: 6 damaged activation cache entries were dropped and recomputed, in {entries[0].parent.parent}"
    ]
    for path, array in before.items():  # rewritten as sound entries of the same values
        cache_folder, sha256 = ActivationCache(path.parent.parent), path.name.split("-")[0]
        np.testing.assert_allclose(cache_folder.load(sha256, 0, array.shape), array, atol=1e-3)


def test_an_entry_damaged_during_training_is_a_one_line_error(data_and_cache, tmp_path, monkeypatch):
    data, cache = data_and_cache
    train_top = stages.train_top

    def damage_then_train(*args, **kwargs):  # after the entries were checked, before they are read
        for path in cached_activation_files(cache, "block5_pool"):
            path.write_bytes(path.read_bytes()[:-1])
        return train_top(*args, **kwargs)

    monkeypatch.setattr(stages, "train_top", damage_then_train)
    result = run_cli("fit", data, "--out", tmp_path / "second", "--cache-dir", cache, *QUICK_FIT)
    assert result.exit_code == 2
    (error,) = [line for line in result.output.splitlines() if line.strip()]
    assert error.startswith(f"Error: activation cache entry {cache}")
    assert error.endswith(".npy is damaged (truncated: 1191 bytes, expected 1192): run the command again to recompute it")
    assert not (tmp_path / "second").exists()

    monkeypatch.setattr(stages, "train_top", train_top)
    again = quick_fit(data, tmp_path / "second", cache)
    assert cache_warnings(again.output) == [
        f"Warning: 12 damaged activation cache entries were dropped and recomputed, in "
        f"{cached_activation_files(cache, 'block5_pool')[0].parent.parent}"
    ]
