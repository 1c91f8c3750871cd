import hashlib
import json
import os
import shutil

import keras
import numpy as np
import pytest
from tqdm.auto import tqdm

from conftest import make_class_folders
from tlearn.train import activations
from tlearn.train import shards
from tlearn.train.activations import MISSING, CACHE_FORMAT, ActivationCache, DamagedEntry, compute_activations
from tlearn.calibration import softmax
from tlearn.train.batches import predict_cached
from tlearn.data.dataset import scan_folder
from tlearn.model import build_classifier, cut_layer_name, feature_extractor, trainable_top

BOTH_CUTS = ["block5_pool", "block4_pool"]  # fit's cut and, from the same pass, finetune's
SHA = hashlib.sha256(b"an image").hexdigest()
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
    stored = cache.entries()

    changed = folder.records[0].path
    shutil.copy(folder.records[1].path.parent / "cloudy1.jpg", changed)  # new content
    rescanned = scan_folder(folder.root)
    compute_activations(extractor, rescanned.records, cache, progress=False)
    new = next(r for r in rescanned.records if r.path == changed)
    assert new.sha256 != folder.records[0].sha256
    unchanged = [cache.entry_name(r.sha256, 0) for r in rescanned.records if r.sha256 != new.sha256]
    assert {name: cache.entries()[name] for name in unchanged} == {name: stored[name] for name in unchanged}
    assert cache.has(new.sha256, 0)


@pytest.mark.parametrize(
    "change", [{"image_size": 64}, {"weights": "random-seed-1"}, {"preprocess": "torch"}, {"cut": "block4_pool"}]
)
def test_any_changed_setting_gives_another_cache(tmp_path, change):
    base = ActivationCache.for_config(tmp_path, cut="block5_pool", **IDENTITY)
    base.store(SHA, 0, np.ones((1, 1, 4), np.float16))
    base.finish_writing()
    other = ActivationCache.for_config(tmp_path, **{"cut": "block5_pool", **IDENTITY, **change})
    assert base.folder != other.folder
    assert other.problem(SHA, 0) == MISSING  # a miss, never another configuration's entry
    same = ActivationCache.for_config(tmp_path, cut="block5_pool", **IDENTITY)
    assert same.folder == base.folder and same.has(SHA, 0, (1, 1, 4))


def test_augmented_views_are_keyed_by_augmentation(tmp_path):
    cache = ActivationCache.for_config(tmp_path, cut="block5_pool", **IDENTITY)
    light, strong = cache.with_augment_key("light-seed1"), cache.with_augment_key("strong-seed1")
    assert light.entry_name(SHA, 0) == strong.entry_name(SHA, 0)  # the plain view is shared
    assert light.entry_name(SHA, 1) != strong.entry_name(SHA, 1)
    light.store(SHA, 1, np.ones((2,), np.float16))
    assert light.has(SHA, 1) and not strong.has(SHA, 1)


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
    stored = [cache.entries() for cache in (top, below)]
    extractor = feature_extractor(model, BOTH_CUTS)
    embedded = []
    real_step = activations.embedding_step

    def counting_step(extractor):
        step = real_step(extractor)

        def counted(pixels):
            embedded.append(len(pixels))
            return step(pixels)

        return counted

    monkeypatch.setattr(activations, "embedding_step", counting_step)

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
    assert [{name: cache.entries()[name] for name in before} for cache, before in zip((top, below), stored)] == stored

    compute_activations(extractor, records, [ActivationCache(top.folder), ActivationCache(below.folder)], progress=False)
    assert sum(embedded) == 5  # both complete, as the next command sees them: nothing to embed


def test_one_trace_embeds_batches_of_every_size_across_calls(model, folder, tmp_path):
    """As fit embeds: train (batches of 4 and 1), then validation+test (a batch of 3)."""
    caches = [ActivationCache.for_config(tmp_path / "cache", cut=cut, **IDENTITY) for cut in BOTH_CUTS]
    extractor = feature_extractor(model, BOTH_CUTS)
    traces = []
    call = extractor.call

    def counting_call(*args, **kwargs):  # runs once per trace of a graph, never again when the graph runs
        traces.append(1)
        return call(*args, **kwargs)

    extractor.call = counting_call
    compute_activations(extractor, folder.records[:5], caches, batch_size=4, progress=False)
    compute_activations(extractor, folder.records[5:8], caches, batch_size=4, progress=False)
    assert all(cache.has(r.sha256, 0) for cache in caches for r in folder.records[:8])
    assert len(traces) == 1


def test_caches_must_match_the_extractors_outputs(model, folder, tmp_path):
    cache = ActivationCache.for_config(tmp_path, cut="block5_pool", **IDENTITY)
    with pytest.raises(ValueError, match=r"one cache per output of the extractor \(2\), got 1"):
        compute_activations(feature_extractor(model, BOTH_CUTS), folder.records, [cache], progress=False)


def overwrite(where, content: bytes, at: int = 0) -> None:
    with open(where.data_path, "r+b") as shard:
        shard.seek(where.offset + at)
        shard.write(content)


def entry_bytes(where) -> bytes:
    return where.data_path.read_bytes()[where.offset : where.offset + where.size]


def damage_by_truncating(cache, name, other):
    with open(cache.entries()[name].data_path, "r+b") as shard:  # as a crash or a full disk could leave it
        shard.truncate(cache.entries()[name].offset + 100)


def damage_with_garbage(cache, name, other):
    overwrite(cache.entries()[name], b"\x00garbage" * 50)


def damage_with_a_wrong_shape(cache, name, other):
    sha256, tag = name.split("-", 1)
    cache.shards.append(sha256, tag, np.zeros((2, 2, 16), np.float16))


def damage_with_right_shaped_wrong_values(cache, name, other):
    overwrite(cache.entries()[name], bytes(cache.entries()[name].size))


def damage_one_value(cache, name, other):
    overwrite(cache.entries()[name], bytes([entry_bytes(cache.entries()[name])[200] ^ 0x40]), at=200)  # one bit


def damage_by_copying_another_images_entry(cache, name, other):
    overwrite(cache.entries()[name], entry_bytes(cache.entries()[other]))  # sound bytes, another image's


def damage_its_index_row(cache, name, other):
    where = cache.entries()[name]
    with open(where.data_path.with_suffix(".index"), "r+b") as index:
        index.seek(where.row * shards._ROW.itemsize + shards._ROW.fields["offset"][1])
        index.write(b"\x01")  # points elsewhere now, and the row's CRC no longer matches


DAMAGES = [damage_by_truncating, damage_with_garbage, damage_with_a_wrong_shape,
           damage_with_right_shaped_wrong_values, damage_one_value, damage_by_copying_another_images_entry,
           damage_its_index_row]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda damage: damage.__name__)
def test_a_damaged_entry_is_dropped_and_recomputed(model, folder, tmp_path, damage):
    cache = ActivationCache.for_config(tmp_path / "cache", cut="block5_pool", **IDENTITY)
    extractor = feature_extractor(model, "block5_pool")
    compute_activations(extractor, folder.records, cache, progress=False)
    located = cache.entries()
    last = max(located, key=lambda name: located[name].offset)  # truncating it leaves the others whole
    record = next(r for r in folder.records if cache.entry_name(r.sha256, 0) == last)
    other = next(name for name in located if name != last)
    expected = cache.load(record.sha256, 0)
    damage(cache, last, other)
    cache = ActivationCache(cache.folder)  # as the next command sees it
    assert not cache.has(record.sha256, 0, (1, 1, 512))
    shard = located[last].data_path
    with pytest.raises(DamagedEntry, match=rf"^activation cache entry {last} in {shard} is damaged \(.+\): run the"):
        cache.load(record.sha256, 0, (1, 1, 512))

    assert compute_activations(extractor, folder.records, cache, progress=False) == []
    assert cache.damaged == [shard]
    np.testing.assert_allclose(cache.load(record.sha256, 0, (1, 1, 512)), expected, atol=1e-3)
    assert {name: cache.entries()[name] for name in located if name != last} == {
        name: where for name, where in located.items() if name != last}  # the sound ones were left alone


def test_entries_are_appended_to_shards_of_the_new_format_in_their_own_folder(tmp_path):
    cache = ActivationCache.for_config(tmp_path, cut="block5_pool", **IDENTITY)
    assert json.loads((cache.folder / "config.json").read_text())["format"] == CACHE_FORMAT == 3
    # formats 1 and 2 (a .npy file per entry) kept their entries in folders keyed otherwise: never read again
    for old_format in (None, 2):
        old_key = {"cut": "block5_pool", **IDENTITY, **({"format": old_format} if old_format else {})}
        assert cache.folder.name != hashlib.sha256(json.dumps(old_key, sort_keys=True).encode()).hexdigest()[:20]
    array = np.arange(8, dtype=np.float16).reshape(2, 4)
    cache.store(SHA, 0, array)
    np.testing.assert_array_equal(cache.load(SHA, 0, (2, 4)), array)
    (data,) = (cache.folder / "shards").glob("*.data")
    assert data.name.startswith(f"{os.getpid()}@") and data.read_bytes() == array.tobytes()
