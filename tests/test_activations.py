import shutil

import keras
import numpy as np
import pytest

from conftest import make_class_folders
from tlearn.activations import ActivationCache, CachedActivations, compute_activations
from tlearn.dataset import scan_folder
from tlearn.model import build_classifier, cut_layer_name, feature_extractor, trainable_top

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
    batches = CachedActivations(cache, folder.records, folder.class_names, batch_size=4)
    cached = trainable_top(model, cut).predict(batches, verbose=0)
    from tlearn.images import load_rgb

    pixels = np.stack([load_rgb(r.path, 32) for r in folder.records]).astype("float32")
    # float16 storage of the activations is the only difference
    np.testing.assert_allclose(cached, model.predict(pixels, verbose=0), atol=2e-3)


def test_undecodable_images_are_returned_not_raised(model, folder, tmp_path):
    broken = folder.records[2].path
    broken.write_bytes(broken.read_bytes()[:300])
    cache = ActivationCache.for_config(tmp_path / "cache", cut="block5_pool", **IDENTITY)
    skipped = compute_activations(feature_extractor(model, "block5_pool"), folder.records, cache, progress=False)
    assert [item.path for item in skipped] == [broken]
    assert not cache.has(folder.records[2].sha256, 0)
