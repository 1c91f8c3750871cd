"""Slow, real-data check: on real photos, fit, evaluate, predict and the exported model used on
its own (the README's plain-TensorFlow way) give the same answers.

Skipped where ../shared (the dataset and weights beside the checkout) is absent.
"""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, run_cli
from tlearn.data.images import decode_rgb
from tlearn.export import load_serving_function
from tlearn.prediction import predict

WEATHER = SHARED / "datasets" / "weather"
WEIGHTS = SHARED / "weights" / "vgg16_imagenet_torchvision_notop.weights.h5"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (WEATHER.is_dir() and WEIGHTS.is_file()), reason="../shared dataset or weights absent"),
]


def _pixels(path):
    try:
        with Image.open(path) as image:
            return image.width * image.height
    except OSError:
        return 0


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 96-px run on 12 photos per class plus every photo over 4 megapixels (up to 15 MP)."""
    root = tmp_path_factory.mktemp("serving") / "weather-sample"
    large = []
    for class_dir in sorted(p for p in WEATHER.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        chosen = set(files[:: len(files) // 12][:12]) | {p for p in files if _pixels(p) > 4_000_000}
        (root / class_dir.name).mkdir(parents=True)
        for path in chosen:
            shutil.copy(path, root / class_dir.name / path.name)
        large += [root / class_dir.name / p.name for p in chosen if _pixels(p) > 4_000_000]
    run = root.parent / "run"
    result = run_cli("fit", root, "--out", run, "--weights", WEIGHTS, "--preprocess", "torch", "--image-size", "96",
                     "--val-split", "0.2", "--test-split", "0.3", "--no-progress")
    assert result.exit_code == 0, result.output
    return root, run, large


def test_predict_equals_the_plain_saved_model_on_real_photos(fitted):
    root, run, large = fitted
    test_files = [root / row["path"] for row in csv.DictReader(open(run / "split.csv")) if row["subset"] == "test"]
    paths = test_files + [path for path in large if path not in test_files]
    assert len(large) >= 10  # the 4-15 megapixel photos, where the old decode disagreed most
    class_names = (run / "labels.txt").read_text().split()
    serve = load_serving_function(run / "saved_model")
    for path, prediction in zip(paths, predict(paths, model=run, top_k=len(class_names))):
        (plain,) = serve(pixels=decode_rgb(path).astype(np.float32)[None]).values()
        from_predict = {item["label"]: item["probability"] for item in prediction.top_k}
        np.testing.assert_allclose([from_predict[name] for name in class_names], plain.numpy()[0], rtol=0, atol=1e-3,
                                   err_msg=str(path))
        assert prediction.label == class_names[int(plain.numpy()[0].argmax())], path


def test_fit_evaluate_and_predict_give_one_test_accuracy(fitted):
    root, run, _ = fitted
    rows = [row for row in csv.DictReader(open(run / "split.csv")) if row["subset"] == "test"]
    predicted = predict([root / row["path"] for row in rows], model=run)
    from_predict = np.mean([p.label == row["label"] for p, row in zip(predicted, rows)])
    from_fit = json.loads((run / "report" / "metrics.json").read_text())["accuracy"]
    evaluated = run_cli("evaluate", run, "--no-progress")
    assert evaluated.exit_code == 0, evaluated.output
    from_evaluate = json.loads((run / "report" / "evaluate-test" / "metrics.json").read_text())["accuracy"]
    assert from_fit == from_evaluate == pytest.approx(from_predict, abs=1e-9)


def test_one_photo_five_routes_one_answer_on_real_photos(fitted):
    """tlearn predict, the SavedModel's pixel and bytes signatures, LiteRT and ONNX float32."""
    from test_export import five_routes

    root, run, large = fitted
    for format in ("litert", "onnx"):
        result = run_cli("export", run, "--format", format)
        assert result.exit_code == 0, result.output
    test_files = [root / row["path"] for row in csv.DictReader(open(run / "split.csv")) if row["subset"] == "test"]
    paths = test_files[:: max(1, len(test_files) // 8)] + large[:2]
    routes = five_routes(run, paths)
    for name, probabilities in routes.items():
        np.testing.assert_allclose(probabilities, routes["tlearn predict"], atol=1e-3, rtol=0, err_msg=name)

