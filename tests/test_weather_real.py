"""Slow, real-data check: a sample of the real weather photos with the real ImageNet weights.

Skipped where ../shared (the dataset and weights beside the checkout) is absent.
"""

import json
import shutil

import pytest

from conftest import SHARED, run_cli

WEATHER = SHARED / "datasets" / "weather"
WEIGHTS = SHARED / "weights" / "vgg16_imagenet_torchvision_notop.weights.h5"
# Files with the dataset's real faults, kept in the sample on purpose.
ODD_FILES = ["Rain/rain141.jpg", "Shine/shine127.jpg", "Cloudy/cloudy66.jpg", "Rain/rain26.jpg"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (WEATHER.is_dir() and WEIGHTS.is_file()), reason="../shared dataset or weights absent"),
]


@pytest.fixture(scope="module")
def weather_sample(tmp_path_factory):
    """20 photos per class (every n-th, so all kinds of photo), plus the odd files."""
    root = tmp_path_factory.mktemp("weather") / "weather-sample"
    for class_dir in sorted(p for p in WEATHER.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        chosen = set(files[:: max(1, len(files) // 20)][:20])
        chosen |= {WEATHER / name for name in ODD_FILES if name.startswith(class_dir.name + "/")}
        (root / class_dir.name).mkdir(parents=True)
        for path in chosen:
            shutil.copy(path, root / class_dir.name / path.name)
    return root


def test_fit_on_real_photos_with_real_weights(weather_sample, tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        "fit", weather_sample, "--out", run, "--weights", WEIGHTS, "--preprocess", "torch",
        "--image-size", "96", "--val-split", "0.2", "--test-split", "0.25", "--no-progress",
    )
    assert result.exit_code == 0, result.output
    meta = json.loads((run / "tlearn.json").read_text())
    assert meta["skipped"] == []  # GIF, RGBA PNG, grayscale and PNG-named-.jpg all decode
    assert meta["weights_identity"].startswith("sha256:d83fbfa7")
    # Chance is 0.25; pretrained features separate these classes even at 96 px. The test split
    # is 21 images (one is 4.8 points): measured 0.76 at seed 1337 and 0.90 at seeds 1 and 2,
    # so 0.7 leaves room for one-image noise while a broken pipeline (~0.25-0.5) still fails.
    assert meta["stages"][0]["test_accuracy"] >= 0.7

    predicted = run_cli("predict", weather_sample / "Rain", "--model", run, "--format", "json")
    assert predicted.exit_code == 0
    rows = json.loads(predicted.stdout)
    assert sum(row["label"] == "Rain" for row in rows) >= 0.8 * len(rows)
