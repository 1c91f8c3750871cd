import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_cli
from tlearn.data.images import load_rgb

BLOCK5 = {"block5_conv1", "block5_conv2", "block5_conv3"}


def layer_weights(run_dir):
    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    base = model.get_layer("vgg16")
    weights = {layer.name: [w.copy() for w in layer.get_weights()] for layer in base.layers if layer.weights}
    weights.update({name: model.get_layer(name).get_weights() for name in ("head_dense", "logits")})
    return weights


@pytest.fixture(scope="module")
def finetuned(fitted_run, tmp_path_factory):
    """A copy of the fitted run, fine-tuned with --unfreeze 4; and the weights before."""
    import shutil

    run = tmp_path_factory.mktemp("finetune") / "colours"
    shutil.copytree(fitted_run, run)
    before = layer_weights(run)
    split_before = (run / "split.csv").read_text()
    result = run_cli("finetune", run, "--unfreeze", "4", "--epochs", "3", "--lr", "1e-3", "--no-progress")
    assert result.exit_code == 0, result.output
    return run, before, split_before, result.output


def test_only_the_unfrozen_layers_and_head_change(finetuned):
    run, before, _, _ = finetuned
    after = layer_weights(run)
    changed = {name for name in before if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))}
    assert changed == BLOCK5 | {"head_dense", "logits"}


def test_split_is_kept_and_both_stages_are_recorded(finetuned):
    run, _, split_before, output = finetuned
    assert (run / "split.csv").read_text() == split_before
    meta = json.loads((run / "tlearn.json").read_text())
    assert [stage["name"] for stage in meta["stages"]] == ["fit", "finetune"]
    assert meta["stages"][1]["settings"]["unfreeze"] == 4
    assert meta["stages"][1]["settings"]["views"] == 3  # augmented views by default when fine-tuning
    assert meta["stages"][1]["settings"]["cut_layer"] == "block4_pool"
    assert meta["stages"][0]["artifacts"] == "stages/fit"
    assert "finetune:" in output and "Test accuracy:" in output


def test_earlier_stage_stays_readable_and_history_spans_both(finetuned):
    run, _, _, _ = finetuned
    for name in ("saved_model/saved_model.pb", "model.keras", "report/metrics.json", "report/confusion_matrix.png"):
        assert (run / "stages" / "fit" / name).is_file(), name
    rows = list(csv.DictReader(open(run / "report" / "history.csv")))
    stages = [row["stage"] for row in rows]
    assert stages[0] == "fit" and stages[-1] == "finetune"
    assert [int(row["epoch"]) for row in rows] == list(range(1, len(rows) + 1))
    assert not list(run.glob(".tlearn-staging-*"))


def test_reexported_saved_model_serves_the_finetuned_model(finetuned, dataset_dir):
    run, _, _, _ = finetuned
    serve = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    pixels = np.stack([load_rgb(p, 32) for p in sorted((dataset_dir / "sunrise").glob("sunrise*.jpg"))])
    (served,) = serve(pixels=tf.constant(pixels, tf.float32)).values()
    keras_model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    np.testing.assert_allclose(served.numpy(), keras_model.predict(pixels.astype("float32"), verbose=0), atol=1e-5)


def test_second_finetune_keeps_the_first(finetuned, tmp_path):
    import shutil

    run = tmp_path / "colours"
    shutil.copytree(finetuned[0], run)
    result = run_cli("finetune", run, "--unfreeze", "8", "--epochs", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    meta = json.loads((run / "tlearn.json").read_text())
    assert [stage["name"] for stage in meta["stages"]] == ["fit", "finetune", "finetune-2"]
    assert (run / "stages" / "finetune" / "model.keras").is_file()
    assert (run / "stages" / "fit" / "model.keras").is_file()


@pytest.mark.parametrize("unfreeze", ["0", "18"])
def test_unfreeze_out_of_range_is_exit_code_2(fitted_run, unfreeze):
    result = run_cli("finetune", fitted_run, "--unfreeze", unfreeze, "--no-progress")
    assert result.exit_code == 2
    assert result.output.startswith("Error: --unfreeze")


def test_finetune_needs_a_run(tmp_path):
    result = run_cli("finetune", tmp_path, "--no-progress")
    assert result.exit_code == 2 and "is not a tlearn run" in result.output
