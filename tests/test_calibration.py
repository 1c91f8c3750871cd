"""Intervals on every accuracy and macro-F1, and temperature-scaled probabilities end to end."""

import csv
import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import CLASS_COLOURS, FAST_FIT, make_class_folders, run_cli, solid_image
from tlearn.calibration import choose_temperature, expected_calibration_error, fit_temperature, softmax
from tlearn.data.images import load_rgb
from tlearn.model import PROBABILITIES, load_classifier, temperature_of
from tlearn.report import macro_f1_interval, wilson_interval
from tlearn.run import Run


def test_wilson_interval_matches_the_published_value():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81 of 263 -> 0.2553 to 0.3662.
    np.testing.assert_allclose(wilson_interval(81, 263), [0.2553, 0.3662], atol=5e-5)
    assert wilson_interval(0, 0) == [0.0, 1.0]


def test_macro_f1_interval_holds_the_estimate_narrows_with_more_images_and_is_reproducible():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    widths = []
    for images in (60, 600):
        true = rng.integers(0, 4, images)
        predicted = np.where(rng.random(images) < 0.8, true, rng.integers(0, 4, images))
        low, high = macro_f1_interval(true, predicted, 4)
        assert low <= f1_score(true, predicted, average="macro") <= high
        assert macro_f1_interval(true, predicted, 4) == [low, high]  # a fixed seed: the same report twice
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_degenerate_predictions_give_an_interval_without_warnings():
    same = np.zeros(30, int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert macro_f1_interval(same, same, 3) == pytest.approx([1 / 3, 1 / 3])  # two classes never seen
        assert macro_f1_interval(same, same + 1, 2) == [0.0, 0.0]
        assert macro_f1_interval(same[:1], same[:1], 2) == [0.0, 1.0]


def test_fit_temperature_recovers_the_temperature_that_made_the_logits_overconfident():
    rng = np.random.default_rng(0)
    calibrated = rng.normal(0, 2, (4000, 5))
    labels = np.array([rng.choice(5, p=row) for row in softmax(calibrated)])
    overconfident = calibrated * 2.5  # what a network trained too long says
    assert fit_temperature(overconfident, labels) == pytest.approx(2.5, rel=0.05)
    assert expected_calibration_error(softmax(overconfident, 2.5), labels) < 0.02
    assert expected_calibration_error(softmax(overconfident), labels) > 0.1


def test_a_validation_split_without_errors_leaves_the_temperature_at_one():
    # Every argmax right: the likelihood grows without limit as T -> 0, so there is no fit.
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 3.0, 1.0], [0.5, 0.0, 2.0]])
    assert fit_temperature(logits, np.array([0, 1, 2])) == 1.0
    assert fit_temperature(logits, np.array([0, 1, 0])) != 1.0  # one wrong: a finite optimum


def test_a_temperature_is_served_where_the_validation_split_shows_miscalibration():
    rng = np.random.default_rng(1)
    calibrated = rng.normal(0, 2, (1000, 5))
    labels = np.array([rng.choice(5, p=row) for row in softmax(calibrated)])
    overconfident = choose_temperature(calibrated * 2.5, labels)
    low, high = overconfident.interval
    assert 1.0 < low < overconfident.fitted < high and overconfident.temperature == overconfident.fitted
    assert overconfident.reason.startswith("fitted on the validation split")


def test_one_wrong_validation_image_is_no_evidence_for_a_temperature():
    # 167 confident and right, 1 wrong: the likelihood alone sharpens T far below 1.
    logits = np.zeros((168, 4))
    logits[:, 0] = np.random.default_rng(2).uniform(2, 6, 168)
    labels = np.zeros(168, np.int64)
    labels[0] = 1
    choice = choose_temperature(logits, labels)
    assert choice.fitted < 0.6 and choice.interval[0] < choice.fitted and choice.interval[1] >= 1.0
    assert choice.temperature == 1.0 and choice.reason.endswith("includes 1")
    assert choose_temperature(logits, np.zeros(168, np.int64)).reason == \
        "left at 1: no validation image was wrong, nothing to fit it on"


def test_expected_calibration_error_of_a_known_case():
    # 10 images at confidence 0.9 of which 6 are right: |0.6 - 0.9| = 0.3.
    probabilities = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.3)


@pytest.fixture(scope="module")
def ambiguous_run(tmp_path_factory):
    """A fitted run whose `rain` looks like `cloudy`: its validation split has enough errors to
    show the model miscalibrated, so a temperature other than 1 is served. Returns (run,
    dataset, fit's output)."""
    data = make_class_folders(tmp_path_factory.mktemp("ambiguous") / "colours", per_class=20)
    for number, path in enumerate(sorted((data / "rain").glob("*.jpg"))):
        solid_image(CLASS_COLOURS["cloudy"], seed=5000 + number).save(path, quality=95)
    run = tmp_path_factory.mktemp("runs") / "run"
    result = run_cli("fit", data, "--out", run, *FAST_FIT, "--val-split", "0.3", "--test-split", "0.3")
    assert result.exit_code == 0, result.output
    return run, data, result.output


def test_saved_model_model_keras_and_predict_serve_the_calibrated_probabilities(ambiguous_run):
    fitted_run, dataset_dir, _ = ambiguous_run
    metrics = json.loads((fitted_run / "report" / "metrics.json").read_text())
    temperature = metrics["calibration"]["temperature"]
    assert temperature != pytest.approx(1.0, abs=1e-3)
    assert set(metrics["calibration"]) == {"temperature", "bins", "ece", "ece_uncalibrated", "fitted_temperature",
                                           "fitted_temperature_ci95", "temperature_reason"}
    low, high = metrics["calibration"]["fitted_temperature_ci95"]
    assert temperature == metrics["calibration"]["fitted_temperature"] and not low <= 1.0 <= high
    paths = sorted((dataset_dir / "sunrise").glob("*.jpg"))[:6]
    pixels = np.stack([load_rgb(p, 32) for p in paths]).astype("float32")

    reloaded = load_classifier(fitted_run / "model.keras")
    assert temperature_of(reloaded) == pytest.approx(temperature)
    logits = keras.Model(reloaded.input, reloaded.get_layer("logits").output)(pixels)
    expected = softmax(keras.ops.convert_to_numpy(logits), temperature)
    np.testing.assert_allclose(reloaded(pixels), expected, rtol=1e-4, atol=1e-6)
    serve = tf.saved_model.load(str(fitted_run / "saved_model")).signatures["serving_default"]
    (served,) = serve(pixels=tf.constant(pixels)).values()
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-4, atol=1e-6)
    result = run_cli("predict", *paths, "--model", fitted_run, "--format", "json", "--top-k", "3")
    assert result.exit_code == 0, result.output
    for row, probabilities in zip(json.loads(result.stdout), expected):
        np.testing.assert_allclose([item["probability"] for item in row["top_k"]], np.sort(probabilities)[::-1],
                                   rtol=1e-4, atol=1e-6)


def test_fit_closing_lines_and_report_show_intervals_and_calibration(ambiguous_run):
    run, _, output = ambiguous_run
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    low, high = metrics["accuracy_ci95"]
    assert low <= metrics["accuracy"] <= high
    assert (f"Test accuracy: {metrics['accuracy']:.4f} (95% CI {low:.2f}-{high:.2f}, {metrics['images']} images), "
            f"macro F1 {metrics['macro_avg']['f1-score']:.3f} (95% CI ") in output
    calibration = metrics["calibration"]
    assert calibration["temperature_reason"].startswith("fitted on the validation split: validation fit ")
    assert (f"Calibration: temperature {calibration['temperature']:.2f} ({calibration['temperature_reason']}), "
            f"test ECE {calibration['ece_uncalibrated']:.3f} before, {calibration['ece']:.3f} after") in output
    report = run / "report"
    assert "95% CI" in (report / "classification_report.txt").read_text()
    assert (report / "reliability.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(report / "predictions.csv", encoding="utf-8")))
    assert list(rows[0]) == ["path", "true", "predicted", "probability"] and len(rows) == metrics["images"]


def test_evaluate_reports_the_served_models_calibration(ambiguous_run):
    fitted_run = ambiguous_run[0]
    result = run_cli("evaluate", fitted_run, "--no-progress")
    assert result.exit_code == 0, result.output
    report = fitted_run / "report" / "evaluate-test"
    metrics = json.loads((report / "metrics.json").read_text())
    low, high = metrics["accuracy_ci95"]
    assert f"test: {metrics['images']} images, accuracy {metrics['accuracy']:.4f} (95% CI {low:.2f}-{high:.2f}), " \
           "macro F1 " in result.output
    served = temperature_of(Run.open(fitted_run).load_model())
    assert metrics["calibration"]["temperature"] == pytest.approx(served)
    assert (report / "reliability.png").is_file() and (report / "predictions.csv").is_file()


def test_a_run_made_before_temperature_scaling_still_loads_and_evaluates(run_copy):
    """Older runs end in a softmax Dense named `probabilities`: they serve it at temperature 1."""
    model = load_classifier(run_copy / "model.keras")
    head = keras.Input(model.get_layer("head_dropout").output.shape[1:])
    dense = keras.layers.Dense(3, activation="softmax", dtype="float32", name=PROBABILITIES)
    dense(head)
    dense.set_weights(model.get_layer("logits").get_weights())
    old = keras.Model(model.inputs, dense(model.get_layer("head_dropout").output), name="tlearn_classifier")
    old.save(run_copy / "model.keras")

    assert temperature_of(Run.open(run_copy).load_model()) == 1.0
    result = run_cli("evaluate", run_copy, "--no-progress")
    assert result.exit_code == 0, result.output
    calibration = json.loads((run_copy / "report" / "evaluate-test" / "metrics.json").read_text())["calibration"]
    assert calibration["temperature"] == 1.0 and calibration["ece"] == calibration["ece_uncalibrated"]


def _trained_top_logits(head_l2: float) -> np.ndarray:
    """fit's head (tlearn's layers, loss and training loop) trained on separable 1x1x512
    activations with `head_l2`; its logits on fresh images of the same classes."""
    from tlearn.model import build_classifier, cut_layer_name, trainable_top
    from tlearn.train.loop import train_top

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 512)).astype("float32")
    labels = np.arange(240) % 3
    activations = (centres[labels] + rng.normal(0, 0.5, (240, 512)))[:, None, None, :].astype("float32")
    keras.utils.set_random_seed(0)
    model = build_classifier(["a", "b", "c"], 32, "none", "torch", dense_units=32, head_l2=head_l2)
    top = trainable_top(model, cut_layer_name(model, 0))
    train = tf.data.Dataset.from_tensor_slices((activations[:180], labels[:180], np.ones(180, "float32")))
    validation = tf.data.Dataset.from_tensor_slices((activations[180:], labels[180:]))
    train_top(top, (train.batch(30).repeat(), 6), (validation.batch(60).repeat(), 1), epochs=30, patience=30,
              lr=1e-3, progress=False)
    return keras.ops.convert_to_numpy(top(activations[180:], training=False))


def test_the_head_l2_penalty_reaches_training_and_keeps_the_logits_from_growing():
    unpenalised, penalised = _trained_top_logits(0.0), _trained_top_logits(1e-2)
    assert (penalised.argmax(axis=1) == unpenalised.argmax(axis=1)).all()  # the same answers, told less loudly
    spread = lambda logits: float(np.mean(logits.max(axis=1) - np.median(logits, axis=1)))
    assert spread(penalised) < 0.8 * spread(unpenalised)


def test_fit_trains_the_head_with_the_l2_penalty_and_records_it(fitted_run):
    from tlearn.model import cut_layer_name, trainable_top
    from tlearn.settings import FitSettings, FinetuneSettings

    assert FitSettings().head_l2 > 0
    recorded = json.loads((fitted_run / "tlearn.json").read_text())
    assert recorded["head_l2"] == FitSettings().head_l2 == Run.open(fitted_run).spec.head_l2
    model = load_classifier(fitted_run / "model.keras")
    for name in ("head_dense", "logits"):
        assert model.get_layer(name).kernel_regularizer.get_config() == {"l2": pytest.approx(FitSettings().head_l2)}
    # The penalty lives in the layers: finetune's top, which includes the head, trains with it too.
    assert len(trainable_top(model, cut_layer_name(model, FinetuneSettings().unfreeze)).losses) == 2


def test_a_run_recorded_before_head_l2_rebuilds_without_the_penalty(fitted_run):
    from tlearn.metadata import RunMetadata

    recorded = json.loads((fitted_run / "tlearn.json").read_text())
    del recorded["head_l2"]
    spec = RunMetadata.from_json(recorded).model
    assert spec.head_l2 == 0.0
    assert spec.build().get_layer("logits").kernel_regularizer is None


def test_a_negative_head_l2_is_refused(tmp_path):
    result = run_cli("fit", tmp_path, "--head-l2", "-0.1", "--weights", "none")
    assert result.exit_code == 2 and "Error: --head-l2 must be 0 or more, got -0.1" in result.output
