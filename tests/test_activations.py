import hashlib
import json
import shutil

import keras
import numpy as np
import pytest
from tqdm.auto import tqdm

from conftest import make_class_folders
from tlearn.train import activations
from tlearn.train.activations import CACHE_FORMAT, ActivationCache, DamagedEntry, compute_activations
from tlearn.calibration import softmax
from tlearn.train.batches import predict_cached
from tlearn.data.dataset import scan_folder
from tlearn.model import build_classifier, cut_layer_name, feature_extractor, trainable_top

BOTH_CUTS = ["block5_pool", "block4_pool"]  # fit's cut and, from the same pass, finetune's
IDENTITY = {"weights": "random-seed-0", "preprocess": "caffe", "image_size": 32, "policy": "float32"}


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_classifier(["cloudy", "rain", "sunrise"], 32, "none", "caffe", dense_units=16)


@pytest.fixture
def folder(tmp_path):
    return scan_folder(make_class_folders(tmp_path / "data", per_class=3))


def test_cache_hits_for_unchanged_images_and_misses_for_changed_ones(model, folder, tmp_path):
    cache = ActivationCache.for_config(tmp_path / "cache", cut="block5_pool", **IDENTITY)
    extractor = feature_extractor(model, "block5_pool")
    compute_activations(extractor, folder.records, cache, progress=False)
    assert all(cache.has(r.sha256, 0) for r in folder.records)
    stamps = {r.sha256: cache.path(r.sha256, 0).stat().st_mtime_ns for r in folder.records}

    changed = folder.records[0].path
    shutil.copy(folder.records[1].path.parent / "cloudy1.jpg", changed)  # new content
    rescanned = scan_folder(folder.root)
    compute_activations(extractor, rescanned.records, cache, progress=False)
    new = next(r for r in rescanned.records if r.path == changed)
    assert new.sha256 != folder.records[0].sha256
    unchanged = [r for r in rescanned.records if r.sha256 in stamps]
    assert all(cache.path(r.sha256, 0).stat().st_mtime_ns == stamps[r.sha256] for r in unchanged)


@pytest.mark.parametrize(
    "change", [{"image_size": 64}, {"weights": "random-seed-1"}, {"preprocess": "torch"}, {"cut": "block4_pool"}]
)
def test_any_changed_setting_gives_another_cache(tmp_path, change):
    base = ActivationCache.for_config(tmp_path, cut="block5_pool", **IDENTITY)
    other = ActivationCache.for_config(tmp_path, **{"cut": "block5_pool", **IDENTITY, **change})
    assert base.folder != other.folder
    assert ActivationCache.for_config(tmp_path, cut="block5_pool", **IDENTITY).folder == base.folder


def test_augmented_views_are_keyed_by_augmentation(tmp_path):
    cache = ActivationCache.for_config(tmp_path, cut="block5_pool", **IDENTITY)
    light, strong = cache.with_augment_key("light-seed1"), cache.with_augment_key("strong-seed1")
    assert light.path("ab", 0) == strong.path("ab", 0)  # the plain view is shared
    assert light.path("ab", 1) != strong.path("ab", 1)


def test_training_on_cache_matches_the_uncached_model(model, folder, tmp_path):
    cut = cut_layer_name(model, 4)
    cache = ActivationCache.for_config(tmp_path / "cache", cut=cut, **IDENTITY)
    compute_activations(feature_extractor(model, cut), folder.records, cache, progress=False)
    cached = predict_cached(trainable_top(model, cut), cache, folder.records, batch_size=4)
    from tlearn.data.images import load_rgb

    pixels = np.stack([load_rgb(r.path, 32) for r in folder.records]).astype("float32")
    # float16 storage of the activations is the only difference
    np.testing.assert_allclose(softmax(cached), model.predict(pixels, verbose=0), atol=2e-3)


def test_undecodable_images_are_returned_not_raised(model, folder, tmp_path):
    broken = folder.records[2].path
    broken.write_bytes(broken.read_bytes()[:300])
    cache = ActivationCache.for_config(tmp_path / "cache", cut="block5_pool", **IDENTITY)
    skipped = compute_activations(feature_extractor(model, "block5_pool"), folder.records, cache, progress=False)
    assert [item.path for item in skipped] == [broken]
    assert not cache.has(folder.records[2].sha256, 0)


def test_one_pass_fills_each_cache_only_where_it_lacks_the_entry(model, folder, tmp_path, monkeypatch):
    top, below = (ActivationCache.for_config(tmp_path / "cache", cut=cut, **IDENTITY) for cut in BOTH_CUTS)
    records = folder.records  # 9 images
    compute_activations(feature_extractor(model, "block5_pool"), records, top, progress=False)
    compute_activations(feature_extractor(model, "block4_pool"), records[:4], below, progress=False)
    stamps = {path: path.stat().st_mtime_ns for cache in (top, below) for path in cache.folder.rglob("*.npy")}
    extractor = feature_extractor(model, BOTH_CUTS)
    embedded = []
    embed = extractor.predict_on_batch

    def counting_embed(pixels):
        embedded.append(len(pixels))
        return embed(pixels)

    extractor.predict_on_batch = counting_embed

    bars = []

    class RecordedBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(activations, "tqdm", RecordedBar)
    compute_activations(extractor, records, [top, below], batch_size=4)
    assert sum(embedded) == 5  # only the images `below` lacked
    assert [(bar.total, bar.n) for bar in bars] == [(5, 5)]  # one bar, one step per image and view
    assert all(below.has(r.sha256, 0) for r in records)
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps  # nothing rewritten

    compute_activations(extractor, records, [top, below], progress=False)
    assert sum(embedded) == 5  # both complete: nothing to embed


def test_caches_must_match_the_extractors_outputs(model, folder, tmp_path):
    cache = ActivationCache.for_config(tmp_path, cut="block5_pool", **IDENTITY)
    with pytest.raises(ValueError, match=r"one cache per output of the extractor \(2\), got 1"):
        compute_activations(feature_extractor(model, BOTH_CUTS), folder.records, [cache], progress=False)


def damage_by_truncating(path, other):
    path.write_bytes(path.read_bytes()[:-100])


def damage_with_garbage(path, other):
    path.write_bytes(b"\x00garbage" * 50)


def damage_with_a_wrong_shape(path, other):
    np.save(path, np.zeros((2, 2, 16), np.float16))


def damage_with_right_shaped_wrong_values(path, other):
    np.save(path, np.zeros_like(np.load(path)))  # a plain .npy, as tlearn wrote before entries had checksums


def damage_one_value(path, other):
    content = bytearray(path.read_bytes())
    content[200] ^= 0x40  # one bit of one float16 in the array
    path.write_bytes(bytes(content))


def damage_by_copying_another_images_entry(path, other):
    shutil.copy(other, path)  # right shape and sound bytes, but another image's activations


DAMAGES = [damage_by_truncating, damage_with_garbage, damage_with_a_wrong_shape,
           damage_with_right_shaped_wrong_values, damage_one_value, damage_by_copying_another_images_entry]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda damage: damage.__name__)
def test_a_damaged_entry_is_dropped_and_recomputed(model, folder, tmp_path, damage):
    cache = ActivationCache.for_config(tmp_path / "cache", cut="block5_pool", **IDENTITY)
    extractor = feature_extractor(model, "block5_pool")
    compute_activations(extractor, folder.records, cache, progress=False)
    good, other = (cache.path(r.sha256, 0) for r in folder.records[:2])
    expected = np.load(good)
    stamps = {path: path.stat().st_mtime_ns for path in cache.folder.rglob("*.npy") if path != good}
    damage(good, other)
    assert not cache.has(folder.records[0].sha256, 0, (1, 1, 512))
    with pytest.raises(DamagedEntry, match=rf"^activation cache entry {good} is damaged \(.+\): run the command again"):
        cache.load(folder.records[0].sha256, 0, (1, 1, 512))

    assert compute_activations(extractor, folder.records, cache, progress=False) == []
    assert cache.damaged == [good]
    np.testing.assert_allclose(cache.load(folder.records[0].sha256, 0, (1, 1, 512)), expected, atol=1e-3)
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps  # the sound ones were left alone


def test_entries_are_npy_files_of_the_new_format_in_their_own_folder(tmp_path):
    cache = ActivationCache.for_config(tmp_path, cut="block5_pool", **IDENTITY)
    assert json.loads((cache.folder / "config.json").read_text())["format"] == CACHE_FORMAT == 2
    # format 1 (no checksums) kept its entries in the folder keyed without "format": never read again
    format_1_key = json.dumps({"cut": "block5_pool", **IDENTITY}, sort_keys=True)
    assert cache.folder.name != hashlib.sha256(format_1_key.encode()).hexdigest()[:20]
    array = np.arange(8, dtype=np.float16).reshape(2, 4)
    cache.store("ab" * 32, 0, array)
    np.testing.assert_array_equal(np.load(cache.path("ab" * 32, 0)), array)  # numpy still reads an entry
    np.testing.assert_array_equal(cache.load("ab" * 32, 0, (2, 4)), array)
