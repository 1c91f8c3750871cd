"""One source for every setting: the API's keywords, the CLI's options and their defaults."""

import inspect
import pydoc
from dataclasses import fields

import click
import pytest

import tlearn
from tlearn.cli import main
from tlearn.errors import TlearnError
from tlearn.settings import (
    CheckSettings, EvaluateSettings, ExplainSettings, ExportSettings, FinetuneSettings, FitSettings,
    PredictSettings,
    TrainingSettings,
)

COMMANDS = [
    ("fit", tlearn.fit, FitSettings),
    ("finetune", tlearn.finetune, FinetuneSettings),
    ("evaluate", tlearn.evaluate, EvaluateSettings),
    ("predict", tlearn.predict, PredictSettings),
    ("explain", tlearn.explain, ExplainSettings),
    ("check", tlearn.check, CheckSettings),
    ("export", tlearn.export_model, ExportSettings),
]


@pytest.mark.parametrize("command, function, settings_class", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_api_keywords_are_the_settings_with_their_defaults(command, function, settings_class):
    parameters = inspect.signature(function).parameters
    for spec in fields(settings_class):
        assert spec.name in parameters, f"tlearn.{function.__name__} lacks the setting {spec.name}"
        assert parameters[spec.name].default == spec.default, spec.name
        assert parameters[spec.name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("command, function, settings_class", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_cli_option_defaults_equal_the_api_defaults(command, function, settings_class):
    options = {p.name: p for p in main.commands[command].params if isinstance(p, click.Option)}
    api = inspect.signature(function).parameters
    for spec in fields(settings_class):
        assert options[spec.name].default == api[spec.name].default, f"{command} --{spec.name}"
    # and the options that are not settings (where runs and caches go) agree too
    for name in ("models_dir", "cache_dir", "progress"):
        if name in options and name in api:
            assert options[name].default == api[name].default, f"{command} --{name}"


def test_explain_writes_to_the_same_default_folder_from_the_api_and_the_cli():
    options = {p.name: p for p in main.commands["explain"].params if isinstance(p, click.Option)}
    assert options["out"].default == inspect.signature(tlearn.explain).parameters["out"].default == "explanations"


def test_help_of_fit_shows_every_setting():
    text = pydoc.render_doc(tlearn.fit, renderer=pydoc.plaintext)
    for spec in fields(FitSettings):
        assert f"{spec.name}: " in text, spec.name


def test_fit_and_finetune_share_one_group_with_their_own_defaults():
    shared = {spec.name for spec in fields(TrainingSettings)}
    assert shared <= {spec.name for spec in fields(FitSettings)} & {spec.name for spec in fields(FinetuneSettings)}
    assert (FitSettings.lr, FinetuneSettings.lr) == (1e-3, 3e-5)
    fit_help = {f.name: f.metadata["help"] for f in fields(FitSettings)}
    finetune_help = {f.name: f.metadata["help"] for f in fields(FinetuneSettings)}
    assert fit_help["batch_size"] == finetune_help["batch_size"]


@pytest.mark.parametrize(
    "settings_class, values, message",
    [
        (FitSettings, {"epochs": 0}, "--epochs must be at least 1"),
        (FitSettings, {"image_size": 16}, "--image-size must be at least 32"),
        (FitSettings, {"dropout": 1.0}, r"--dropout must be in \[0, 1\)"),
        (FitSettings, {"augment": "wild"}, "--augment must be one of none, light, medium, strong"),
        (FitSettings, {"preprocess": "tf"}, "--preprocess must be one of caffe, torch"),
        (FitSettings, {"near_threshold": 300}, "--near-threshold must be at most 256"),
        (FinetuneSettings, {"unfreeze": 0}, "--unfreeze must be at least 1"),
        (FinetuneSettings, {"lr": 0.0}, "--lr must be positive"),
        (FinetuneSettings, {"strategy": "gpus"}, "--strategy must be one of auto, none, mirrored, multi-worker"),
        (EvaluateSettings, {"show_wrong": -1}, "--show-wrong must be at least 0"),
        (PredictSettings, {"top_k": 0}, "--top-k must be at least 1"),
        (ExplainSettings, {"alpha": 1.5}, "--alpha must be between 0 and 1"),
        (CheckSettings, {"max_aspect_ratio": 0.5}, "--max-aspect-ratio must be at least 1"),
        (ExportSettings, {"quantize": "int4"}, "--quantize must be one of none, float16, dynamic, int8"),
        (ExportSettings, {"format": "coreml"}, "--format must be one of litert, onnx"),
    ],
)
def test_each_bad_value_is_one_clear_error(settings_class, values, message):
    with pytest.raises(TlearnError, match=message):
        settings_class(**{"weights": "none", **values} if settings_class is FitSettings else values)


def test_weights_come_from_the_environment_when_not_given(monkeypatch, tmp_path):
    weights = tmp_path / "vgg16.weights.h5"
    weights.write_bytes(b"x")
    monkeypatch.setenv("TLEARN_WEIGHTS", str(weights))
    monkeypatch.setenv("TLEARN_PREPROCESS", "torch")
    settings = FitSettings()
    assert (settings.weights, settings.preprocess) == (str(weights.resolve()), "torch")
    assert "weights" not in settings.record() and settings.record()["epochs"] == 30
