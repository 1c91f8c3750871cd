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

import click

from .config import (
    AUGMENT_STRENGTHS, DEFAULT_MODELS_DIR, MIXED_PRECISION_MODES, PREPROCESS_MODES, STRATEGIES, FinetuneConfig, FitConfig,
)
from .errors import TlearnError

FIT, FINETUNE = FitConfig(), FinetuneConfig()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Lines TensorFlow's C++ start-up writes to stderr whatever TF_CPP_MIN_LOG_LEVEL says
# (CUDA probing on a machine without a GPU, CPU feature notes): nothing a user can act on.
_STARTUP_NOISE = (
    "absl::InitializeLog", "cudart_stub.cc", "cpu_feature_guard.cc", "rebuild TensorFlow with the appropriate",
    "cuda_platform.cc", "cuda_executor.cc", "Unable to register cu",
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
    """


def _progress_flag(function):
    return click.option("--progress/--no-progress", default=True, help="Show progress bars on stderr.")(function)


def _models_dir_option(function):
    return click.option(
        "--models-dir", default=DEFAULT_MODELS_DIR, show_default=True, type=click.Path(file_okay=False),
        help="Where runs are kept; commands without a run use the newest one there.",
    )(function)


def _strategy_option(default: str):
    return click.option(
        "--strategy", type=click.Choice(STRATEGIES), default=default, show_default=True,
        help="tf.distribute strategy: auto = mirrored over 2+ GPUs, else one device; multi-worker reads "
             "$TF_CONFIG (run the same command on every worker; --batch-size is the global batch).",
    )


def _print_skipped(skipped) -> None:
    for item in skipped:
        click.echo(f"Warning: skipped {item.path}: {item.reason}", err=True)


@main.command()
@click.argument("data_dir", type=click.Path(path_type=str))
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to create (must not exist). [default: MODELS_DIR/<data folder name>, -2, -3, ... if taken]")
@_models_dir_option
@click.option("--weights", help="imagenet (Keras's download, cached), none (random) or a local weights file for the VGG16 base. [default: $TLEARN_WEIGHTS or imagenet]")
@click.option("--preprocess", type=click.Choice(PREPROCESS_MODES), help="Input convention of those weights: caffe (Keras's imagenet) or torch (torchvision's). [default: $TLEARN_PREPROCESS or caffe]")
@click.option("--image-size", type=int, default=FIT.image_size, show_default=True, help="Side in pixels the images are resized to; 160 is about 3x faster on a CPU.")
@click.option("--epochs", type=int, default=FIT.epochs, show_default=True, help="Most epochs to train the head.")
@click.option("--patience", type=int, default=FIT.patience, show_default=True, help="Stop after this many epochs without a better validation loss (the best weights are kept).")
@click.option("--batch-size", type=int, default=FIT.batch_size, show_default=True)
@click.option("--lr", type=float, default=FIT.lr, show_default=True, help="Adam learning rate.")
@click.option("--val-split", type=float, default=FIT.val_split, show_default=True, help="Fraction of each class for validation.")
@click.option("--test-split", type=float, default=FIT.test_split, show_default=True, help="Fraction of each class for the test report.")
@click.option("--seed", type=int, default=FIT.seed, show_default=True, help="Seeds the split, initialisation and augmentation.")
@click.option("--views", type=int, default=FIT.views, show_default=True, help="Views per training image: 1 = the plain image, more = add augmented copies (each costs one VGG16 pass).")
@click.option("--augment", type=click.Choice(AUGMENT_STRENGTHS), default=FIT.augment, show_default=True, help="Strength of the augmentation used for views 2 and up.")
@click.option("--finetune-cache/--no-finetune-cache", default=FIT.finetune_cache, show_default=True, help="Also cache, from the same pass, the block4_pool activations that `tlearn finetune --unfreeze 4` trains on: it then embeds only the views fit did not (none after fit --views 3). Costs disk: 14x14x512 float16, ~200 KB per image and view at 224 px (4x fit's own cache).")
@click.option("--preview-augment", is_flag=True, help="Write report/augmentation.png: training images beside augmented samples of them.")
@click.option("--near-threshold", type=int, default=FIT.near_threshold, show_default=True, help="Near-duplicates (bits of 256 that may differ) share a subset like exact duplicates; -1 = exact duplicates only.")
@click.option("--keep-cross-class-duplicates", is_flag=True, help="Keep images whose exact copy is filed under another class (left out by default).")
@click.option("--dense-units", type=int, default=FIT.dense_units, show_default=True, help="Width of the head's hidden layer.")
@click.option("--dropout", type=float, default=FIT.dropout, show_default=True)
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION_MODES), default=FIT.mixed_precision, show_default=True, help="float16 compute: auto = on when a GPU is visible.")
@_strategy_option(FIT.strategy)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where activations are cached. [default: $TLEARN_CACHE_DIR or ~/.cache/tlearn]")
@_progress_flag
def fit(data_dir, out, models_dir, weights, preprocess, cache_dir, progress, **settings):
    """Train a classifier on DATA_DIR, one sub-folder per class, and export it.

    Splits the images (stratified, seeded, duplicates kept together), trains a new head on a
    frozen ImageNet VGG16, and writes the run directory: saved_model/, model.keras,
    labels.txt, tlearn.json, split.csv and report/.

    \b
    Example:
      tlearn fit ./weather --weights vgg16.weights.h5 --preprocess torch
    """
    load_tensorflow_quietly()
    from .fitting import fit as fit_run

    result = _call(
        fit_run, data_dir, out=out, models_dir=models_dir, weights=weights, preprocess=preprocess,
        cache_dir=cache_dir, progress=progress, **settings,
    )
    _print_skipped(result.skipped)
    _print_run_summary(result)


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@_models_dir_option
@click.option("--unfreeze", type=int, default=FINETUNE.unfreeze, show_default=True, help="Base layers to train, counted from the top: 4 = block5 (3 convolutions + pooling), 8 = blocks 4 and 5.")
@click.option("--epochs", type=int, default=FINETUNE.epochs, show_default=True)
@click.option("--patience", type=int, default=FINETUNE.patience, show_default=True)
@click.option("--batch-size", type=int, default=FINETUNE.batch_size, show_default=True)
@click.option("--lr", type=float, default=FINETUNE.lr, show_default=True, help="Adam learning rate; keep it small to keep the pretrained features.")
@click.option("--views", type=int, default=FINETUNE.views, show_default=True, help="Views per training image: the plain one plus augmented copies (the run's --augment strength); each costs one pass to the cut. Unfrozen layers overfit without them.")
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION_MODES), default=FINETUNE.mixed_precision, show_default=True)
@_strategy_option(FINETUNE.strategy)
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Where the run's dataset is now, if it moved.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where activations are cached. [default: $TLEARN_CACHE_DIR or ~/.cache/tlearn]")
@_progress_flag
def finetune(run_dir, models_dir, data_dir, cache_dir, progress, **settings):
    """Unfreeze the top of the base and train on at a lower learning rate.

    RUN_DIR defaults to the newest run in MODELS_DIR. Trains on the split that fit recorded,
    then replaces the run's export and report; the previous ones move to stages/<stage>/.

    \b
    Example:
      tlearn finetune models/weather --unfreeze 4
    """
    load_tensorflow_quietly()
    from .fitting import finetune as finetune_run

    result = _call(
        finetune_run, run_dir, models_dir=models_dir, data_dir=data_dir, cache_dir=cache_dir,
        progress=progress, **settings,
    )
    _print_skipped(result.skipped)
    _print_run_summary(result)


@main.command()
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@_models_dir_option
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="A folder of class sub-folders to evaluate on. [default: the run's test split]")
@click.option("--show-wrong", type=int, default=10, show_default=True, help="How many of the most confidently wrong images to list.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where activations are cached. [default: $TLEARN_CACHE_DIR or ~/.cache/tlearn]")
@_progress_flag
def evaluate(run_dir, models_dir, data_dir, show_wrong, cache_dir, progress):
    """Accuracy, per-class table and the most confidently wrong images of a run.

    RUN_DIR defaults to the newest run in MODELS_DIR. The full report (metrics.json,
    classification_report.txt, confusion_matrix.png, confidently_wrong.csv) goes to
    RUN_DIR/report/evaluate-<test or data folder name>/.

    \b
    Example:
      tlearn evaluate models/weather --data ./new-photos
    """
    load_tensorflow_quietly()
    from .evaluation import evaluate as evaluate_run

    result = _call(
        evaluate_run, run_dir, data=data_dir, models_dir=models_dir, cache_dir=cache_dir,
        show_wrong=show_wrong, progress=progress,
    )
    _print_skipped(result.skipped)
    if result.ignored_classes:
        click.echo(f"Warning: ignored folders of classes the model does not know: {', '.join(result.ignored_classes)}", err=True)
    click.echo(f"{result.data_name}: {result.metrics['images']} images, accuracy {result.accuracy:.4f}")
    click.echo(result.table, nl=False)
    if result.confidently_wrong:
        click.echo("Most confidently wrong:")
        for row in result.confidently_wrong:
            click.echo(f"  {row['probability']:.3f}  {row['true']} -> {row['predicted']}  {row['path']}")
    click.echo(f"Report: {result.report_dir}")


def _print_run_summary(result) -> None:
    if result.data_summary:
        click.echo(f"Data: {result.data_summary}")
    sizes = result.images
    click.echo(
        f"{result.stage}: {sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test images, "
        f"{len(result.skipped)} skipped, {result.wall_seconds:.0f} s"
    )
    click.echo(f"Run: {result.run_dir}" if result.run_dir is not None else "Run: written by the chief worker")
    click.echo(f"Test accuracy: {result.test_accuracy:.4f}")


@main.command()
@click.argument("data_dir", type=click.Path(path_type=str))
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--image-size", type=int, default=FIT.image_size, show_default=True, help="Training size: images under half of it on a side are reported as tiny.")
@click.option("--near-threshold", type=int, default=FIT.near_threshold, show_default=True, help="How many of 256 hash bits a near-duplicate may differ in; -1 = no near-duplicate search.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where file facts are cached. [default: $TLEARN_CACHE_DIR or ~/.cache/tlearn]")
def check(data_dir, output_format, image_size, near_threshold, cache_dir):
    """Report what in DATA_DIR needs attention before training, without changing anything.

    Images per class and imbalance; files that cannot be decoded and why; content that does
    not match the extension; images converted to RGB; tiny images and extreme aspect ratios;
    exact duplicates within and across classes; near-duplicates. Exit code 0 when clean, 1
    when something is listed, 2 for a bad folder or option. A repeated check reuses cached
    file facts and is near-instant.

    \b
    Example:
      tlearn check ./weather --format json > weather-check.json
    """
    from .check import check_folder, format_check

    result = _call(check_folder, data_dir, image_size=image_size, near_threshold=near_threshold, cache_dir=cache_dir)
    if output_format == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(format_check(result), nl=False)
    sys.exit(1 if result.needs_attention else 0)


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "model", type=click.Path(file_okay=False), help="Run directory. [default: the newest run in MODELS_DIR]")
@_models_dir_option
@click.option("--top-k", type=int, default=1, show_default=True, help="How many classes to list per image.")
@click.option("--format", "output_format", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def predict(images, model, models_dir, top_k, output_format):
    """Classify IMAGES (files, folders searched recursively, or globs).

    Exit code 1 if any image could not be read (its row says why), 2 for a bad option or run.

    \b
    Example:
      tlearn predict photos/ --top-k 2 --format csv > predictions.csv
    """
    load_tensorflow_quietly()
    from .prediction import predict as predict_images

    results = _call(predict_images, list(images), model=model, models_dir=models_dir, top_k=top_k)
    click.echo(_format_predictions(results, output_format, top_k), nl=False)
    if any(result.error for result in results):
        sys.exit(1)


def _format_predictions(results, output_format: str, top_k: int) -> str:
    if output_format == "json":
        return json.dumps([vars(result) for result in results], indent=2) + "\n"
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        ranked = [f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("label", "probability")]
        writer.writerow(["path", "label", "probability", *ranked, "error"])
        for result in results:
            pairs = [v for item in result.top_k for v in (item["label"], f"{item['probability']:.6f}")]
            pairs += [""] * (len(ranked) - len(pairs))
            probability = "" if result.probability is None else f"{result.probability:.6f}"
            writer.writerow([result.path, result.label or "", probability, *pairs, result.error or ""])
        return buffer.getvalue()
    width = max(len("path"), *(len(result.path) for result in results))
    lines = [f"{'path':<{width}}  prediction"]
    for result in results:
        shown = f"error: {result.error}" if result.error else "  ".join(
            f"{item['label']} {item['probability']:.3f}" for item in result.top_k
        )
        lines.append(f"{result.path:<{width}}  {shown}")
    return "\n".join(lines) + "\n"
