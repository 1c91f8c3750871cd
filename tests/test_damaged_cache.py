"""Damaged activation cache entries, made for real on disk, met by real CLI commands."""

import re
import shutil

import numpy as np
import pytest

from conftest import (FAST_FIT, activation_caches, cached_activation_entries, cached_activations, make_class_folders,
                      run_cli)
from tlearn.train import stages
from tlearn.train.activations import ActivationCache, Location

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


def overwrite(where: Location, content: bytes, at: int = 0) -> None:
    """Write `content` over an entry's bytes in its shard file, from byte `at` of the entry."""
    with open(where.data_path, "r+b") as shard:
        shard.seek(where.offset + at)
        shard.write(content)


def entry_bytes(where: Location) -> bytes:
    return where.data_path.read_bytes()[where.offset : where.offset + where.size]


def test_a_later_fit_recomputes_damaged_entries_with_one_warning(data_and_cache, tmp_path):
    data, cache = data_and_cache
    (cache_folder,) = [each.folder for each in activation_caches(cache, "block5_pool")]
    before = cached_activations(cache, "block5_pool")
    entries = cached_activation_entries(cache, "block5_pool")
    last = max(entries, key=lambda name: entries[name].offset)
    truncated, garbage, zeros, flipped, copied, wrong_shape = [last, *(name for name in entries if name != last)][:6]
    with open(entries[truncated].data_path, "r+b") as shard:  # as a crash or a full disk could leave it
        shard.truncate(entries[truncated].offset + 100)
    overwrite(entries[garbage], b"not an array at all")
    overwrite(entries[zeros], bytes(entries[zeros].size))  # right shape and dtype, wrong values
    overwrite(entries[flipped], bytes([entry_bytes(entries[flipped])[300] ^ 0x01]), at=300)  # one bit
    other = [name for name in entries if name not in (truncated, copied)][-1]
    overwrite(entries[copied], entry_bytes(entries[other]))  # another image's sound entry
    sha256, tag = wrong_shape.split("-", 1)
    ActivationCache(cache_folder).shards.append(sha256, tag, np.zeros((3, 3), np.float16))

    result = quick_fit(data, tmp_path / "second", cache)
    assert cache_warnings(result.output) == [
        f"Warning: 6 damaged activation cache entries were dropped and recomputed, in {cache_folder}"
    ]
    after = cached_activations(cache, "block5_pool")
    assert list(after) == list(before)
    for name, array in before.items():  # stored again, with the same values
        np.testing.assert_allclose(after[name], array, atol=1e-3)


def test_an_entry_damaged_during_training_is_a_one_line_error(data_and_cache, tmp_path, monkeypatch):
    data, cache = data_and_cache
    train_top = stages.train_top
    (cache_folder,) = [each.folder for each in activation_caches(cache, "block5_pool")]

    def damage_then_train(*args, **kwargs):  # after the entries were checked, before they are read
        for where in cached_activation_entries(cache, "block5_pool").values():
            overwrite(where, bytes(where.size))
        return train_top(*args, **kwargs)

    monkeypatch.setattr(stages, "train_top", damage_then_train)
    result = run_cli("fit", data, "--out", tmp_path / "second", "--cache-dir", cache, *QUICK_FIT)
    assert result.exit_code == 2
    (error,) = [line for line in result.output.splitlines() if line.strip()]
    assert re.fullmatch(
        rf"Error: activation cache entry [0-9a-f]{{64}}-plain in {re.escape(str(cache_folder / 'shards'))}/\S+\.data "
        r"is damaged \(checksum mismatch\): run the command again to recompute it", error), error
    assert not (tmp_path / "second").exists()

    monkeypatch.setattr(stages, "train_top", train_top)
    again = quick_fit(data, tmp_path / "second", cache)
    assert cache_warnings(again.output) == [
        f"Warning: 12 damaged activation cache entries were dropped and recomputed, in {cache_folder}"
    ]
