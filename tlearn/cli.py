"""The `tlearn` command: options in, one API call, its result printed.

TensorFlow is imported only inside the commands, so `tlearn --help` answers at once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
import textwrap
from dataclasses import fields, is_dataclass
from pathlib import Path

import click

from .errors import TlearnError
from .settings import (
    DEFAULT_CHECK_CSV, DEFAULT_EXPLANATIONS_DIR, DEFAULT_MODELS_DIR, CheckSettings, EvaluateSettings, ExplainSettings,
    ExportSettings, FinetuneSettings, FitSettings, PredictSettings,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Lines TensorFlow's C++ start-up writes to stderr whatever TF_CPP_MIN_LOG_LEVEL says
# (CUDA probing on a machine without a GPU, CPU feature notes, oneDNN's note, printed twice
# since two of its libraries load): nothing a user can act on.
_STARTUP_NOISE = (
    "absl::InitializeLog", "cudart_stub.cc", "cpu_feature_guard.cc", "rebuild TensorFlow with the appropriate",
    "cuda_platform.cc", "cuda_executor.cc", "Unable to register cu", "oneDNN custom operations are on",
)


class UserError(click.ClickException):
    """A TlearnError as the CLI shows it: one line, exit code 2 (as for bad options)."""

    exit_code = 2


def load_tensorflow_quietly() -> None:
    """Import TensorFlow and probe for GPUs with stderr captured, then replay what matters."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not any(noise in line for noise in _STARTUP_NOISE):
                    sys.stderr.write(line)


def _call(function, *args, **kwargs):
    """Run an API function; its TlearnError becomes a one-line CLI error."""
    try:
        return function(*args, **kwargs)
    except TlearnError as error:
        raise UserError(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tlearn")
def main():
    """Transfer learning for folders of photos: one sub-folder per class.

    \b
    tlearn check ./weather               what in the data needs attention
    tlearn fit ./weather                 train and export (models/weather)
    tlearn finetune --unfreeze 4         train the top of VGG16 too
    tlearn evaluate                      test-split report of the newest run
    tlearn predict photo.jpg             classify with the newest run
    tlearn explain photo.jpg             where in the photo the evidence lies
    tlearn export --format onnx          the newest run as a verified .onnx file
    """


def settings_options(settings_class):
    """A Click option for every field of `settings_class`, with its default and help text.

    The command's own settings come first, then those it shares with other commands (the
    fields of its settings base class, such as TrainingSettings for fit and finetune).
    """
    inherited = {f.name for base in settings_class.__mro__[1:] if is_dataclass(base) for f in fields(base)}
    ordered = sorted(fields(settings_class), key=lambda spec: spec.name in inherited)

    def decorate(command):
        for spec in reversed(ordered):
            command = _option(spec)(command)
        return command

    return decorate


def _option(spec):
    name = "--" + spec.name.replace("_", "-")
    help_text, choices, shown = spec.metadata["help"], spec.metadata["choices"], spec.metadata["shown_default"]
    if isinstance(spec.default, bool):
        if spec.default:
            return click.option(f"{name}/--no-{name[2:]}", spec.name, default=True, show_default=True, help=help_text)
        return click.option(name, spec.name, is_flag=True, default=False, help=help_text)
    kind = click.Choice(choices) if choices else type(spec.default) if spec.default is not None else str
    if shown:  # a default that depends on the environment, said in words
        return click.option(name, spec.name, type=kind, default=spec.default, help=f"{help_text}  [default: {shown}]")
    return click.option(name, spec.name, type=kind, default=spec.default, show_default=True, help=help_text)


def _settings_of(settings_class, options: dict) -> dict:
    """The command's options that are fields of `settings_class`, for the API call."""
    return {spec.name: options.pop(spec.name) for spec in fields(settings_class)}


def _progress_flag(function):
    return click.option("--progress/--no-progress", default=True, help="Show progress bars on stderr.")(function)


def _models_dir_option(function):
    return click.option(
        "--models-dir", default=DEFAULT_MODELS_DIR, show_default=True, type=click.Path(file_okay=False),
        help="Where runs are kept; commands without a run use the newest one there.",
    )(function)


def _cache_dir_option(function):
    return click.option(
        "--cache-dir", type=click.Path(file_okay=False), default=None,
        help="Where activations and file facts are cached. [default: $TLEARN_CACHE_DIR or ~/.cache/tlearn]",
    )(function)


def _print_skipped(skipped) -> None:
    for item in skipped:
        click.echo(f"Warning: skipped {item.path}: {item.reason}", err=True)


_CHANGED_SHOWN = 5  # more changed files than this get one line: their count and the first few


def _print_changed(changed) -> None:
    """Split images changed since fit: one line each, or one line in all when there are many."""
    if len(changed) > _CHANGED_SHOWN:
        first = ", ".join(str(path) for path in changed[:3])
        click.echo(f"Warning: {len(changed)} files changed since fit, used as they are now: {first} "
                   f"and {len(changed) - 3} more", err=True)
        return
    for path in changed:
        click.echo(f"Warning: changed since fit, used as it is now: {path}", err=True)


def _print_damaged_cache_entries(entries) -> None:
    if entries:
        folders = ", ".join(sorted({str(Path(entry).parent.parent) for entry in entries}))
        noun = "entry was" if len(entries) == 1 else "entries were"
        click.echo(f"Warning: {len(entries)} damaged activation cache {noun} dropped and recomputed, in {folders}",
                   err=True)


def _print_result_warnings(result) -> None:
    """What a command's result says went differently from the plain case, before its figures."""
    _print_damaged_cache_entries(result.damaged_cache_entries)
    _print_skipped(result.skipped)
    _print_changed(result.changed)


def _open_run(run_dir, models_dir):
    from .run import Run

    return _call(Run.open, run_dir, models_dir)


@main.command()
@click.argument("data_dir", type=click.Path(path_type=str))
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to create (must not exist). [default: MODELS_DIR/<data folder name>, -2, -3, ... if taken]")
@_models_dir_option
@settings_options(FitSettings)
@_cache_dir_option
@_progress_flag
def fit(data_dir, out, models_dir, cache_dir, progress, **options):
    """Train a classifier on DATA_DIR, one sub-folder per class, and export it.

    DATA_DIR may also be pre-split: train/, val/ (or valid/, validation/, dev/) and test/
    folders, each with one sub-folder per class; their subsets are kept and only the missing
    ones are split from train/.

    Splits the images (stratified, seeded, duplicates kept together), trains a new head on a
    frozen ImageNet VGG16, and writes the run directory: saved_model/, model.keras,
    labels.txt, tlearn.json, split.csv and report/.

    \b
    Example:
      tlearn fit ./weather --weights vgg16.weights.h5 --preprocess torch
    """
    load_tensorflow_quietly()
    from .train.stages import fit as fit_run

    result = _call(fit_run, data_dir, out=out, models_dir=models_dir, cache_dir=cache_dir, progress=progress,
                   **_settings_of(FitSettings, options))
    _print_result_warnings(result)
    _print_run_summary(result)
    _print_label_issues_line(result)


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@_models_dir_option
@settings_options(FinetuneSettings)
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Where the run's dataset is now, if it moved.")
@_cache_dir_option
@_progress_flag
def finetune(run_dir, models_dir, data_dir, cache_dir, progress, **options):
    """Unfreeze the top of the base and train on at a lower learning rate.

    RUN_DIR defaults to the newest run in MODELS_DIR. Trains on the split that fit recorded,
    then replaces the run's export and report; the previous ones move to stages/<stage>/.

    \b
    Example:
      tlearn finetune models/weather --unfreeze 4
    """
    settings = _settings_of(FinetuneSettings, options)
    load_tensorflow_quietly()
    run = _open_run(run_dir, models_dir)
    result = _call(run.finetune, data_dir=data_dir, cache_dir=cache_dir, progress=progress, **settings)
    _print_result_warnings(result)
    _print_run_summary(result)


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@_models_dir_option
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="A folder of class sub-folders to evaluate on. [default: the run's test split]")
@settings_options(EvaluateSettings)
@_cache_dir_option
@_progress_flag
def evaluate(run_dir, models_dir, data_dir, cache_dir, progress, **options):
    """Accuracy, per-class table and the most confidently wrong images of a run.

    RUN_DIR defaults to the newest run in MODELS_DIR. The full report (metrics.json,
    classification_report.txt, confusion_matrix.png, reliability.png, predictions.csv,
    confidently_wrong.csv) goes to RUN_DIR/report/evaluate-<test or data folder name>/.

    \b
    Example:
      tlearn evaluate models/weather --data ./new-photos
    """
    settings = _settings_of(EvaluateSettings, options)
    load_tensorflow_quietly()
    run = _open_run(run_dir, models_dir)
    result = _call(run.evaluate, data=data_dir, cache_dir=cache_dir, progress=progress, **settings)
    _print_result_warnings(result)
    if result.ignored_classes:
        click.echo(f"Warning: ignored folders of classes the model does not know: {', '.join(result.ignored_classes)}", err=True)
    click.echo(f"{result.data_name}: {result.metrics['images']} images, accuracy {result.accuracy:.4f}"
               f"{_with_interval(result.metrics, 'accuracy_ci95')}, {_macro_f1(result.metrics)}")
    click.echo(result.table, nl=False)
    if result.confidently_wrong:
        click.echo("Most confidently wrong:")
        for row in result.confidently_wrong:
            click.echo(f"  {row['probability']:.3f}  {row['true']} -> {row['predicted']}  {row['path']}")
    from .html_report import INDEX

    click.echo(f"Report: {result.report_dir / INDEX}")


def _print_run_summary(result) -> None:
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if result.data_summary:
        click.echo(f"Data: {result.data_summary}")
    sizes = result.images
    click.echo(
        f"{result.stage}: {sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test images, "
        f"{len(result.skipped)} skipped, {result.wall_seconds:.0f} s"
    )
    click.echo(f"Run: {result.run_dir}" if result.run_dir is not None else "Run: written by the chief worker")
    metrics = result.metrics
    images = f", {metrics['images']} images"
    click.echo(f"Test accuracy: {result.test_accuracy:.4f}{_with_interval(metrics, 'accuracy_ci95', images)}, "
               f"{_macro_f1(metrics)}")
    calibration = metrics.get("calibration")
    if calibration:
        click.echo(f"Calibration: temperature {calibration['temperature']:.2f} ({calibration['temperature_reason']}), "
                   f"test ECE {calibration['ece_uncalibrated']:.3f} before, {calibration['ece']:.3f} after")
    if result.run_dir is not None:
        from .html_report import INDEX
        from .run import RunFiles

        click.echo(f"Report: {RunFiles(result.run_dir).report / INDEX}")


def _with_interval(metrics: dict, key: str, suffix: str = "") -> str:
    """' (95% CI 0.93-0.99<suffix>)', or '' for metrics without the interval."""
    if key not in metrics:
        return ""
    low, high = metrics[key]
    return f" (95% CI {low:.2f}-{high:.2f}{suffix})"


def _macro_f1(metrics: dict) -> str:
    return f"macro F1 {metrics['macro_avg']['f1-score']:.3f}{_with_interval(metrics, 'macro_f1_ci95')}"


@main.command()
@click.argument("data_dir", type=click.Path(path_type=str))
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@settings_options(CheckSettings)
@click.option("--out", type=click.Path(dir_okay=False), default=DEFAULT_CHECK_CSV, show_default=True,
              help="With --labels: the CSV of suspected label errors to write (replaced if it exists).")
@_cache_dir_option
@_progress_flag
def check(data_dir, output_format, out, cache_dir, progress, **options):
    """Report what in DATA_DIR needs attention before training, without changing anything.

    Images per class and imbalance; files that cannot be decoded and why; content that does
    not match the extension; images converted to RGB; tiny images and extreme aspect ratios;
    exact duplicates within and across classes; near-duplicates. Exit code 0 when clean, 1
    when something is listed, 2 for a bad folder or option. A repeated check reuses cached
    file facts and is near-instant.

    With --labels, also the images that look mislabelled (needs the weights fit would use;
    embeds every image once, into the activation cache fit reuses), listed most suspect
    first and written to --out.

    \b
    Example:
      tlearn check ./weather --format json > weather-check.json
      tlearn check ./weather --labels --weights vgg16.weights.h5 --preprocess torch
    """
    settings = _settings_of(CheckSettings, options)
    if settings["labels"]:
        load_tensorflow_quietly()
    from .data.check import format_check
    from .label_issues import check as check_data

    report = _call(check_data, data_dir, out=out, cache_dir=cache_dir, progress=progress, **settings)
    if output_format == "json":
        found = report.data.to_dict()
        if report.label_issues is not None:
            found["label_issues"] = _label_issues_dict(report)
        click.echo(json.dumps(found, indent=2))
    else:
        click.echo(format_check(report.data), nl=False)
        if report.label_issues is not None:
            _print_skipped(report.skipped)
            _print_label_issues(report)
    sys.exit(1 if report.needs_attention else 0)


_LABEL_ISSUES_SHOWN = 20  # check --labels lists this many suspects; the CSV has them all


def _print_label_issues(report) -> None:
    issues = report.label_issues
    if issues.reason:
        click.echo(f"Suspected label errors: not searched: {issues.reason}")
        return
    if not issues.issues:
        click.echo(f"Suspected label errors: none among {issues.images} images ({issues.folds}-fold cross-validation)")
        return
    click.echo(f"Suspected label errors ({len(issues.issues)} of {issues.images} images, {issues.folds}-fold "
               "cross-validation; score: lower = more suspect):")
    for row in issues.rows()[:_LABEL_ISSUES_SHOWN]:
        click.echo(f"  {row['score']}  {row['given']} -> {row['suggested']}  {row['path']}")
    if len(issues.issues) > _LABEL_ISSUES_SHOWN:
        click.echo(f"  ... and {len(issues.issues) - _LABEL_ISSUES_SHOWN} more")
    click.echo(f"Written to {report.label_issues_csv}")


def _label_issues_dict(report) -> dict:
    issues = report.label_issues
    return {"images": issues.images, "folds": issues.folds, "reason": issues.reason,
            "csv": str(report.label_issues_csv), "suspects": issues.rows()}


def _print_label_issues_line(result) -> None:
    """fit's one line on suspected label errors, when there are any (or why none were searched)."""
    issues = result.label_issues
    if issues is None:
        return
    if issues.reason:
        click.echo(f"Warning: label errors not searched: {issues.reason}", err=True)
    elif issues.issues and result.run_dir is not None:
        from .run import RunFiles

        count = len(issues.issues)
        click.echo(f"{count} image{'s' if count != 1 else ''} look{'s' if count == 1 else ''} mislabelled: "
                   f"see {RunFiles(result.run_dir).label_issues}")


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model", type=click.Path(), help="Run directory, SavedModel folder, or .tflite / .onnx file "
              "from `tlearn export`. [default: the newest run in MODELS_DIR]")
@_models_dir_option
@settings_options(PredictSettings)
@click.option("--format", "output_format", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr when it is a terminal.")
def predict(images, model, models_dir, output_format, progress, **options):
    """Classify IMAGES (files, folders searched recursively, or globs).

    Rows are written as the images are classified, batch by batch, in the order given.
    Exit code 1 if any image could not be read (its row says why), 2 for a bad option or run.

    \b
    Example:
      tlearn predict photos/ --top-k 2 --format csv > predictions.csv
    """
    settings = _settings_of(PredictSettings, options)
    load_tensorflow_quietly()
    from tqdm.auto import tqdm

    from .prediction import iter_predictions

    stream = _call(iter_predictions, list(images), model=model, models_dir=models_dir, **settings)
    rows = _PredictionRows(output_format, settings["top_k"], max(len(str(path)) for path in stream.paths))
    any_failed = False
    # disable=None: no bar where stderr is not a terminal (a log file, a pipe)
    with tqdm(total=len(stream), desc="predicting", unit="img", disable=None if progress else True, leave=False) as bar:
        _write_above(bar, rows.header())
        for index, result in enumerate(stream):
            _write_above(bar, rows.row(result, first=index == 0))
            bar.update(1)
            any_failed = any_failed or result.error is not None
        _write_above(bar, rows.footer())
    if any_failed:
        sys.exit(1)


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model", type=click.Path(file_okay=False), help="Run directory. [default: the newest run in MODELS_DIR]")
@_models_dir_option
@click.option("--out", default=DEFAULT_EXPLANATIONS_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Folder the figures are written to (created if needed).")
@settings_options(ExplainSettings)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr when it is a terminal.")
def explain(images, model, models_dir, out, progress, **options):
    """Show where in each of IMAGES the evidence for its predicted class lies (Grad-CAM).

    IMAGES are files, folders searched recursively, or globs. Writes OUT/<image>-gradcam.jpg
    per image: the image beside a heatmap of the evidence (red = most), from VGG16's last
    convolution, titled with the predicted class and its probability. Exit code 1 if any
    image could not be read (a warning says why), 2 for a bad option, run or path.

    \b
    Example:
      tlearn explain photos/ --model models/weather --out photos-explained
    """
    settings = _settings_of(ExplainSettings, options)
    load_tensorflow_quietly()
    from tqdm.auto import tqdm

    from .explanation import iter_explanations

    run = _open_run(model, models_dir)
    stream = _call(iter_explanations, list(images), model=run, out=out, **settings)
    written = failed = 0
    with tqdm(total=len(stream), desc="explaining", unit="img", disable=None if progress else True, leave=False) as bar:
        for result in stream:
            if result.error is None:
                written += 1
                _write_above(bar, f"{result.path}  {result.label} {result.probability:.3f}  -> {result.figure}\n")
            else:
                failed += 1
                with bar.external_write_mode(file=sys.stderr):
                    click.echo(f"Warning: skipped {result.path}: {result.error}", err=True)
            bar.update(1)
    click.echo(f"{written} explanation{'s' if written != 1 else ''} in {stream.out}")
    if failed:
        sys.exit(1)


@main.command("export")
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@_models_dir_option
@settings_options(ExportSettings)
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Where the run's dataset is now, if it moved.")
def export_command(run_dir, models_dir, data_dir, **options):
    """Export a run as a LiteRT (.tflite) or ONNX (.onnx) file, verified on its test split.

    RUN_DIR defaults to the newest run in MODELS_DIR. Writes RUN_DIR/export/model_<quantize>.tflite
    (or .onnx) only once it has been checked against the run's SavedModel on the test split:
    top-1 agreement, largest probability difference, accuracy, size and single-image latency,
    kept in RUN_DIR/export/verification.json and printed as a table. The file takes float32
    [N, S, S, 3] RGB 0-255 pixels already resized to the run's image size S with tlearn's
    resize_for_model (LiteRT and ONNX have no antialiased resize). `tlearn predict --model FILE`
    runs it.

    \b
    Example:
      tlearn export models/weather --format litert --quantize int8
    """
    settings = _settings_of(ExportSettings, options)
    load_tensorflow_quietly()
    run = _open_run(run_dir, models_dir)
    result = _call(run.export_model, data_dir=data_dir, **settings)
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    click.echo(f"Exported: {result.path} ({result.verification['bytes'] / 1e6:.1f} MB)")
    click.echo(result.table, nl=False)


def _write_above(bar, text: str) -> None:
    """Write to stdout at once, the progress bar redrawn below it where both share a terminal."""
    with bar.external_write_mode(file=sys.stdout):
        click.echo(text, nl=False)


class _PredictionRows:
    """predict's output, one row at a time: an aligned table, CSV with flattened top-k, or a
    JSON array (valid once the footer is written) of Prediction records."""

    def __init__(self, output_format: str, top_k: int, path_width: int):
        self.output_format, self.top_k = output_format, top_k
        self.width = max(len("path"), path_width)
        self.ranked = [f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("label", "probability")]

    def header(self) -> str:
        if self.output_format == "json":
            return "["
        if self.output_format == "csv":
            return self._csv_line(["path", "label", "probability", *self.ranked, "error"])
        return f"{'path':<{self.width}}  prediction\n"

    def row(self, result, first: bool) -> str:
        if self.output_format == "json":
            return ("\n" if first else ",\n") + textwrap.indent(json.dumps(vars(result), indent=2), "  ")
        if self.output_format == "csv":
            pairs = [v for item in result.top_k for v in (item["label"], f"{item['probability']:.6f}")]
            pairs += [""] * (len(self.ranked) - len(pairs))
            probability = "" if result.probability is None else f"{result.probability:.6f}"
            return self._csv_line([result.path, result.label or "", probability, *pairs, result.error or ""])
        shown = f"error: {result.error}" if result.error else "  ".join(
            f"{item['label']} {item['probability']:.3f}" for item in result.top_k
        )
        return f"{result.path:<{self.width}}  {shown}\n"

    def footer(self) -> str:
        return "\n]\n" if self.output_format == "json" else ""

    @staticmethod
    def _csv_line(values: list[str]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(values)
        return buffer.getvalue()
