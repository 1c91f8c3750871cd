"""The near-duplicate index: exactly the pairs that comparing every pair finds, on hashes and on real files."""

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from tlearn.data import near_duplicates
from tlearn.data.check import NEAR_COLOUR_DIFFERENCE, check_folder, visible_files
from tlearn.data.files import inspect_file
from tlearn.data.near_duplicates import exhaustive_hamming_pairs, hamming_pairs

REPO = Path(__file__).resolve().parents[1]
WEATHER = SHARED / "datasets" / "weather"


def every_pair(hashes, threshold):
    """The reference: every pair's distance, all at once (fine for a few thousand hashes)."""
    bits = np.unpackbits(hashes, axis=1).astype(np.int16)
    distances = bits.sum(1)[:, None] + bits.sum(1)[None, :] - 2 * bits @ bits.T
    first, second = np.nonzero(np.triu(distances <= threshold, k=1))
    return np.stack([first, second], axis=1)


def with_flipped_bits(hashes, rng, source, target, flips):
    bits = np.unpackbits(hashes[source])
    bits[rng.choice(bits.size, flips, replace=False)] ^= 1
    hashes[target] = np.packbits(bits)


@pytest.fixture(scope="module")
def planted_hashes():
    """2,000 random 256-bit hashes with pairs planted 0, 1, 12, 24 and 25 bits apart."""
    rng = np.random.default_rng(7)
    hashes = rng.integers(0, 256, (2000, 32), dtype=np.uint8)
    planted = {}
    for number, flips in enumerate([0, 1, 12, 24, 24, 25, 25, 40]):
        source, target = 2 * number, 1000 + 2 * number
        with_flipped_bits(hashes, rng, source, target, flips)
        planted[(source, target)] = flips
    return hashes, planted


@pytest.mark.parametrize("threshold", [0, 1, 12, 24, 25, 40])
def test_index_finds_exactly_the_pairs_every_pair_finds(planted_hashes, threshold):
    hashes, planted = planted_hashes
    found = hamming_pairs(hashes, threshold)
    np.testing.assert_array_equal(found, every_pair(hashes, threshold))
    found = {tuple(pair) for pair in found.tolist()}
    for pair, flips in planted.items():  # at the threshold found, one bit over not
        assert (pair in found) == (flips <= threshold), (pair, flips, threshold)


def test_the_index_itself_answers_at_check_s_threshold(planted_hashes):
    """At 24 bits the index must do the work (not the fallback that compares every pair)."""
    hashes, _ = planted_hashes
    plan = near_duplicates._part_plan(len(hashes), 256, 24)
    index = near_duplicates._PartIndex(hashes, *plan)
    pairs = len(hashes) * (len(hashes) - 1) / 2
    assert index.candidates() < near_duplicates.INDEX_MAX_CANDIDATE_SHARE * pairs
    candidates = sum(len(first) for first, _ in index.candidate_batches())
    assert candidates == index.candidates()


def test_all_hashes_equal_gives_every_pair():
    hashes = np.full((300, 32), 0xA5, np.uint8)
    for threshold in (0, 24):
        found = hamming_pairs(hashes, threshold)
        assert len(found) == 300 * 299 // 2
        np.testing.assert_array_equal(found, exhaustive_hamming_pairs(hashes, threshold))


def test_edge_sizes_and_thresholds():
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    assert hamming_pairs(hashes[:1], 24).shape == (0, 2)
    assert hamming_pairs(hashes, -1).shape == (0, 2)
    assert len(hamming_pairs(hashes, 256)) == 50 * 49 // 2
    odd_width = rng.integers(0, 256, (500, 5), dtype=np.uint8)  # not whole 64-bit words
    np.testing.assert_array_equal(hamming_pairs(odd_width, 10), every_pair(odd_width, 10))


def row_by_row_groups(paths, facts, threshold):
    """data/check.py's near-duplicate groups as main computed them, every pair row by row."""
    paths = [path for path in paths if facts[path].fingerprinted]
    hashes = np.stack([np.frombuffer(bytes.fromhex(facts[p].dhash), np.uint8) for p in paths])
    colours = np.stack([np.frombuffer(bytes.fromhex(facts[p].colours), np.uint8) for p in paths]).astype(np.int16)
    parent = list(range(len(paths)))

    def find(index):
        while parent[index] != index:
            index = parent[index]
        return index

    for i in range(len(paths) - 1):
        distances = np.bitwise_count(hashes[i + 1 :] ^ hashes[i]).sum(axis=1)
        for j in (i + 1 + np.nonzero(distances <= threshold)[0]).tolist():
            same_file = facts[paths[i]].sha256 == facts[paths[j]].sha256
            if not same_file and np.abs(colours[i] - colours[j]).mean() <= NEAR_COLOUR_DIFFERENCE:
                parent[find(i)] = find(j)
    groups = defaultdict(list)
    for index, path in enumerate(paths):
        groups[find(index)].append(path)
    return sorted((sorted(g) for g in groups.values() if len({facts[p].sha256 for p in g}) > 1), key=lambda g: g[0])


def textured(seed, size=(96, 72)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def folder_with_copies(tmp_path_factory):
    """Two classes of distinct pictures with resized, re-encoded, cropped and exact copies."""
    root = tmp_path_factory.mktemp("copies") / "data"
    for name in ("fields", "skies"):
        (root / name).mkdir(parents=True)
    for number in range(40):
        textured(number).save(root / ("fields" if number % 2 else "skies") / f"photo{number}.jpg", quality=90)
    fields, skies = root / "fields", root / "skies"
    textured(1).resize((192, 144)).save(fields / "photo1_large.jpg", quality=70)
    textured(1).resize((48, 36)).save(fields / "photo1_small.jpg", quality=80)
    textured(3).crop((2, 2, 94, 70)).save(fields / "photo3_cropped.jpg", quality=85)
    textured(4).save(fields / "photo4_in_fields.png")  # near, across classes
    shutil.copy(skies / "photo6.jpg", skies / "photo6_copy.jpg")  # exact: not a near-duplicate on its own
    return root


@pytest.mark.parametrize("threshold", [0, 24, 60])
def test_check_groups_match_the_row_by_row_search(folder_with_copies, tmp_path, threshold):
    check = check_folder(folder_with_copies, near_threshold=threshold, cache_dir=tmp_path)
    usable = [path for path in check.facts if check.facts[path].usable]
    assert check.near_duplicates == row_by_row_groups(usable, check.facts, threshold)
    if threshold == 24:
        names = [[path.name for path in group] for group in check.near_duplicates]
        assert ["photo1.jpg", "photo1_large.jpg", "photo1_small.jpg"] in names
        assert ["photo3.jpg", "photo3_cropped.jpg"] in names


@pytest.mark.slow
@pytest.mark.skipif(not WEATHER.is_dir(), reason="../shared weather dataset absent")
@pytest.mark.parametrize("threshold", [8, 24, 40])
def test_weather_groups_are_today_s(tmp_path_factory, threshold):
    cache = tmp_path_factory.getbasetemp() / "weather-check-cache"  # shared by the thresholds
    check = check_folder(WEATHER, near_threshold=threshold, cache_dir=cache)
    usable = [path for path in check.facts if check.facts[path].usable]
    assert check.near_duplicates == row_by_row_groups(usable, check.facts, threshold)
    assert check.near_duplicates  # the weather set has near-duplicates at each of these


def test_visible_files_lists_as_rglob_did(tmp_path):
    root = tmp_path / "tree"
    for name in ("a/b/one.jpg", "a-b/two.jpg", "a/three.jpg", "a/.hidden.jpg", ".cache/four.jpg", "b/.x/five.jpg",
                 "Z.jpg", "a/b/c/six.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (root / "linked_folder").symlink_to(root / "a", target_is_directory=True)  # not entered
    (root / "a" / "linked.jpg").symlink_to(root / "Z.jpg")  # a file
    (root / "a" / "broken.jpg").symlink_to(root / "missing.jpg")  # not a file
    expected = sorted(
        path for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    assert visible_files(root) == expected


def test_files_are_read_in_worker_processes(tmp_path):
    """A check without TensorFlow loaded reads files on every core: the decoding is done by
    child processes, in the order given, and gives the facts a read in this process gives."""
    folder = tmp_path / "many"
    folder.mkdir()
    paths = []
    for number in range(240):
        paths.append(folder / f"picture{number:03d}.jpg")
        textured(number, (40, 30)).save(paths[-1], quality=90)
    (folder / "broken.jpg").write_bytes(b"not a picture")
    paths.insert(100, folder / "broken.jpg")
    script = (
        "import json, os, sys; from pathlib import Path\n"
        "from tlearn.data.files import inspect_files\n"
        "paths = [Path(line) for line in sys.stdin.read().splitlines()]\n"
        "facts = inspect_files(paths, workers=2)\n"
        "print(json.dumps({'children_cpu': os.times().children_user + os.times().children_system,\n"
        "                  'paths': [str(p) for p in facts], 'sha256': [f.sha256 for f in facts.values()],\n"
        "                  'dhash': [f.dhash for f in facts.values()], 'error': [f.error for f in facts.values()]}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], input="\n".join(map(str, paths)), capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    read = json.loads(result.stdout)
    assert read["children_cpu"] > 0
    assert read["paths"] == [str(path) for path in paths]
    here = [inspect_file(path) for path in paths]
    assert read["sha256"] == [facts.sha256 for facts in here]
    assert read["dhash"] == [facts.dhash for facts in here]
    assert read["error"] == [facts.error for facts in here]
