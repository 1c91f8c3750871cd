"""Suspected label errors: cross-validated probabilities from cached features, ranked by cleanlab."""

from __future__ import annotations

import csv
import hashlib
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tlearn.label_issues import find_suspected_label_errors, fold_of_each
from tlearn.run import RunFiles

from conftest import FAST_FIT, SHARED, cached_activation_entries, make_class_folders, run_cli

CLASSES = ["cloudy", "rain", "sunrise", "shine"]


def clusters(per_class: int = 40, width: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features of well-separated classes: one Gaussian cluster each."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (len(CLASSES), width))
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    return centres[labels] + rng.normal(0, 1, (len(labels), width)), labels


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_flipped_labels_of_separated_clusters_rank_first():
    features, labels = clusters()
    flipped = [3, 50, 95, 150]
    given = labels.copy()
    given[flipped] = (labels[flipped] + 1) % len(CLASSES)
    found = find_suspected_label_errors(features, given, np.arange(len(given)), CLASSES, seed=1)
    assert found.folds == 5 and found.images == len(given)
    assert sorted(issue.index for issue in found.issues[: len(flipped)]) == flipped
    for issue in found.issues[: len(flipped)]:
        assert issue.suggested == CLASSES[labels[issue.index]] and issue.given == CLASSES[given[issue.index]]
        assert 0 <= issue.score < 0.5
    scores = [issue.score for issue in found.issues]
    assert scores == sorted(scores)


def test_duplicates_are_held_out_in_one_fold():
    labels = np.repeat(np.arange(3), 20)
    groups = np.array([f"picture{i // 3}" for i in range(len(labels))])  # three copies of each picture
    fold = fold_of_each(labels, groups, 5, seed=0)
    for group in set(groups):
        assert len(set(fold[groups == group])) == 1, group
    assert sorted(set(fold)) == [0, 1, 2, 3, 4]


def test_folds_shrink_to_the_smallest_class_and_one_picture_is_a_reason_not_a_crash():
    features, labels = clusters(per_class=10)
    groups = np.arange(len(labels)).astype(str)
    groups[labels == 1] = np.where(np.arange(10) < 5, "a", "b")  # class rain: two pictures, five copies each
    assert find_suspected_label_errors(features, labels, groups, CLASSES).folds == 2
    groups[labels == 1] = "a"
    found = find_suspected_label_errors(features, labels, groups, CLASSES)
    assert (found.folds, found.issues) == (0, [])
    assert found.reason == ("class rain has one picture (and its duplicates): cross-validation needs at least "
                            "2 distinct pictures per class to hold one out")


def plant_label_errors(root: Path, per_class: int, seed: int) -> list[tuple[str, str]]:
    """Move `per_class` images of each class into another class's folder; returns (new path, true class).

    Only pictures without an exact copy are moved: a moved copy would be caught anyway, by
    the data check, as the same image filed under two classes (and left out).
    """
    rng = random.Random(seed)
    names = sorted(folder.name for folder in root.iterdir() if folder.is_dir())
    contents = Counter(hashlib.sha256(path.read_bytes()).digest() for path in root.rglob("*") if path.is_file())
    planted = []
    for name in names:
        unique = [path for path in sorted((root / name).iterdir())
                  if contents[hashlib.sha256(path.read_bytes()).digest()] == 1]
        for image in rng.sample(unique, per_class):
            target = root / rng.choice([other for other in names if other != name]) / f"planted-{image.name}"
            shutil.move(image, target)
            planted.append((str(target), name))
    return planted


@pytest.fixture(scope="module")
def planted_folder(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    root = make_class_folders(tmp_path_factory.mktemp("planted") / "colours", per_class=16)
    return root, plant_label_errors(root, 1, seed=3)


def test_check_labels_ranks_planted_errors_then_fit_reuses_its_activations(planted_folder, tmp_path, monkeypatch):
    root, planted = planted_folder
    cache = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    checked = run_cli("check", root, "--labels", "--weights", "none", "--image-size", "32", "--cache-dir", cache,
                      "--no-progress")
    assert checked.exit_code == 1, checked.output
    assert "-fold cross-validation; score: lower = more suspect):" in checked.output
    assert "Written to label_issues.csv" in checked.output
    rows = read_csv(tmp_path / "label_issues.csv")
    assert list(rows[0]) == ["path", "given", "suggested", "score"]
    top = {row["path"]: row for row in rows[: len(planted)]}
    assert set(top) == {path for path, _ in planted}
    assert all(top[path]["suggested"] == true for path, true in planted)
    embedded = {cut: cached_activation_entries(cache, cut) for cut in ("block5_pool", "block4_pool")}

    fitted = run_cli("fit", root, "--models-dir", tmp_path / "models", "--cache-dir", cache, *FAST_FIT)
    assert fitted.exit_code == 0, fitted.output
    run_dir = tmp_path / "models" / "colours"
    assert {cut: cached_activation_entries(cache, cut) for cut in embedded} == embedded  # fit embedded nothing
    fit_rows = read_csv(RunFiles(run_dir).label_issues)
    assert f"{len(fit_rows)} images look mislabelled: see {RunFiles(run_dir).label_issues}\n" in fitted.output
    assert {path for path, _ in planted} <= {row["path"] for row in fit_rows[: len(planted) + 2]}


def test_check_without_labels_stays_a_file_check(planted_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("check", planted_folder[0])
    assert "Suspected label errors" not in result.output and not (tmp_path / "label_issues.csv").exists()


def test_check_labels_on_a_class_of_one_picture_says_why_not(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "data", per_class=4)
    for extra in sorted((root / "rain").iterdir())[1:]:
        extra.unlink()
    monkeypatch.chdir(tmp_path)
    result = run_cli("check", root, "--labels", "--weights", "none", "--image-size", "32", "--no-progress")
    assert ("Suspected label errors: not searched: class rain has one picture (and its duplicates): "
            "cross-validation needs at least 2 distinct pictures per class to hold one out") in result.output
    assert read_csv(tmp_path / "label_issues.csv") == []


WEATHER = SHARED / "datasets" / "weather"
WEIGHTS = SHARED / "weights" / "vgg16_imagenet_torchvision_notop.weights.h5"
WARM_CACHE_ENV = "TLEARN_TEST_WEATHER_CACHE"


@pytest.mark.slow
@pytest.mark.skipif(not WEATHER.is_dir() or not WEIGHTS.is_file(), reason="needs ../shared (weather set and weights)")
def test_weather_planted_label_errors_rank_among_the_top_30(tmp_path, monkeypatch):
    """12 planted errors (3 moved per class) in a copy of the weather set: 10 or more in the top 30.

    Set TLEARN_TEST_WEATHER_CACHE to a warm activation cache of the weather set (224 px, torch)
    to skip its ~4-minute embedding: entries are keyed by content, so the moved copies hit it.
    (The session's TLEARN_CACHE_DIR is a fresh temporary folder: see conftest.py.)
    """
    copy = tmp_path / "weather"
    shutil.copytree(WEATHER, copy, ignore=shutil.ignore_patterns("*.md"))
    planted = plant_label_errors(copy, 3, seed=13)
    monkeypatch.chdir(tmp_path)
    result = run_cli("check", copy, "--labels", "--weights", WEIGHTS, "--preprocess", "torch", "--no-progress",
                     *(["--cache-dir", os.environ[WARM_CACHE_ENV]] if os.environ.get(WARM_CACHE_ENV) else []))
    assert result.exit_code == 1, result.output
    top = [row["path"] for row in read_csv(tmp_path / "label_issues.csv")[:30]]
    found = [path for path, _ in planted if path in top]
    assert len(found) >= 10, (len(found), result.output)
