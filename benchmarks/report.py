"""BENCHMARKS.md: the targets as ratios first, then the absolute figures and the machine."""

from __future__ import annotations

from tlearn.settings import FinetuneSettings

GIB = 1024**3

# (job, what it is, what is timed); in the order the jobs run.
JOB_ROWS = [
    ("bare_forward", "bare forward (ceiling)", "Keras VGG16 base on arrays decoded beforehand"),
    ("tlearn_embedding", "tlearn embedding", "`compute_activations` on the same files: decoding and cache writes included"),
    ("tlearn_fit", "tlearn fit", "`tlearn.fit`, fresh cache: scan, split, embed, train, export, report"),
    ("keras_guide", "Keras-guide recipe", "`image_dataset_from_directory`, augmentation, frozen VGG16, `model.fit`, evaluate"),
    ("tlearn_finetune", "tlearn finetune --unfreeze 4", "`tlearn.finetune` after fit, on fit's cache: embed the augmented views to block4_pool, train, export"),
    ("naive_finetune", "naive end-to-end fine-tune", "augmentation + full VGG16 forward every step, block5 + head trainable"),
]


def render(results: dict, settings: dict, machine: dict) -> str:
    """The whole markdown page for one benchmark run."""
    lines = ["# tlearn benchmarks", ""]
    if settings["quick"]:
        lines += [
            f"> **Quick run** (smoke check: {settings['per_class']} images per class, {settings['image_size']} px, "
            f"{settings['epochs']} + {settings['finetune_epochs']} epochs). Not the record: at this size the "
            "fixed costs (model build, export) outweigh the network, so the ratios are not the full run's.",
            "",
        ]
    lines += _setup_lines(results, settings, machine)
    lines += ["", "## Targets", "", "| measure | result | target | met |", "|---|---|---|---|"]
    lines += [f"| {measure} | {result} | {target} | {'yes' if met else '**no**'} |"
              for measure, result, target, met in target_rows(results, settings)]
    lines += ["", "## Absolute figures", "",
              "| job | timed | wall (s) | images/s | test accuracy | peak RSS (GiB) |", "|---|---|---|---|---|---|"]
    lines += [_job_row(results, job, name, timed) for job, name, timed in JOB_ROWS]
    lines += ["", "## How it is measured", ""] + _notes(results, settings)
    return "\n".join(lines) + "\n"


def target_rows(results: dict, settings: dict) -> list[tuple[str, str, str, bool]]:
    """(measure, result, target, met) for each target in README.md's Speed section."""
    bare, embedding, fit = results["bare_forward"], results["tlearn_embedding"], results["tlearn_fit"]
    guide, finetune, naive = results["keras_guide"], results["tlearn_finetune"], results["naive_finetune"]
    embedding_ratio = embedding["rate"] / bare["rate"]
    all_images = sum(fit["images"].values())
    bare_pass = all_images / bare["rate"]
    fit_ratio = fit["seconds"] / bare_pass
    guide_ratio = guide["seconds"] / fit["seconds"]
    accuracy_gain = fit["test_accuracy"] - guide["test_accuracy"]
    finetune_ratio = naive["seconds"] / finetune["seconds"]
    image_difference = (finetune["test_accuracy"] - naive["test_accuracy"]) * finetune["test_images"]
    fit_rss = fit["peak_rss"] / GIB
    return [
        ("embedding rate ÷ bare forward rate", f"{embedding_ratio:.2f}", "≥ 0.9", embedding_ratio >= 0.9),
        (f"fit time ÷ one bare forward pass over all {all_images} images ({bare_pass:.0f} s)",
         f"{fit_ratio:.2f}", "≤ 1.3", fit_ratio <= 1.3),
        (f"Keras-guide recipe time ÷ fit time, {settings['epochs']} epochs each", f"{guide_ratio:.1f}×", "≥ 5×",
         guide_ratio >= 5),
        ("fit test accuracy − Keras-guide test accuracy",
         f"{accuracy_gain * 100:+.1f} points ({fit['test_accuracy']:.3f} vs {guide['test_accuracy']:.3f})", "≥ 0",
         accuracy_gain >= -1e-9),
        (f"naive fine-tune time ÷ finetune time, {settings['finetune_epochs']} epochs each", f"{finetune_ratio:.1f}×",
         "≥ 2.5×", finetune_ratio >= 2.5),
        ("finetune − naive fine-tune, correct test images",
         f"{image_difference:+.0f} of {finetune['test_images']} ({finetune['test_accuracy']:.3f} vs "
         f"{naive['test_accuracy']:.3f})", "within ±1", abs(image_difference) <= 1 + 1e-6),
        ("fit peak RSS", f"{fit_rss:.2f} GiB", "≤ 3 GiB", fit_rss <= 3),
    ]


def _setup_lines(results: dict, settings: dict, machine: dict) -> list[str]:
    sizes = results["tlearn_fit"]["images"]
    return [
        f"Machine: {machine['cpu']}, {machine['cores']} cores; TensorFlow {machine['tensorflow']}, "
        f"Keras {machine['keras']}, Python {machine['python']}; load average {machine['load_before']:.1f} "
        f"before and {machine['load_after']:.1f} after (1 min; other jobs share this machine, so compare "
        f"ratios, not absolute rates).  ",
        f"Data: `{settings['data_name']}`, {sum(sizes.values())} images (train {sizes['train']}, validation "
        f"{sizes['validation']}, test {sizes['test']}; seed {settings['seed']}); image size {settings['image_size']} px; "
        f"fit and Keras-guide epochs {settings['epochs']}, fine-tune epochs {settings['finetune_epochs']}; batch "
        f"{settings['batch_size']}; rates on {settings['rate_images']} images. Run on {machine['date']}, "
        f"{machine['total_minutes']:.0f} minutes in all.  ",
        f"Command: `{settings['command']}`",
    ]


def _job_row(results: dict, job: str, name: str, timed: str) -> str:
    result = results[job]
    rate = f"{result['rate']:.2f}" if "rate" in result else ""
    accuracy = f"{result['test_accuracy']:.3f} ({result['test_images']} images)" if "test_accuracy" in result else ""
    return f"| {name} | {timed} | {result['seconds']:.1f} | {rate} | {accuracy} | {result['peak_rss'] / GIB:.2f} |"


def _notes(results: dict, settings: dict) -> list[str]:
    left_out = results["keras_guide"]["left_out"]
    decoded = (
        "TensorFlow decoded every file of the split (`decode_image` with `expand_animations=False` takes a GIF's "
        "first frame and sniffs PNGs named .jpg), so none was left out."
        if not left_out else
        f"TensorFlow could not decode {len(left_out)} file(s) of the split, which a user of the guide has to "
        f"leave out; they were: {', '.join(f'`{path}`' for path in left_out)}."
    )
    return [
        "- Every job runs in its own child process (`benchmarks/run.py --job NAME`); peak RSS is the child's "
        "own `ru_maxrss`. Times are wall-clock around the work, after importing TensorFlow.",
        f"- Rates: the same {settings['rate_images']} images, spread over the classes, after a warm-up batch; each "
        "is the faster of two passes (the one less disturbed by other jobs). The embedding writes each pass into "
        "an empty cache, so every file is decoded and computed every time.",
        "- Equal epochs: tlearn's early stopping and the one given to the Keras recipes both have patience = "
        "epochs, so every epoch runs, and both restore the weights of the best validation loss.",
        "- The Keras-guide recipe and the naive fine-tune read the same train/validation/test files as tlearn's "
        "split (symlink folders built from the fit run's `split.csv`) with `image_dataset_from_directory`, "
        "`.cache()` and `.prefetch()` as in the guide, and augment with random flip and rotation (0.1). "
        + decoded,
        "- The Keras-guide recipe uses no class weights (the guide has none); the naive fine-tune uses tlearn's "
        "balanced class weights, so against `tlearn finetune` only the pipeline differs. Both Keras recipes use "
        f"tlearn's head (Dense 256, ReLU, Dropout 0.5, softmax) and the weights' ({settings['preprocess']}) "
        "preprocessing.",
        "- The naive fine-tune starts from the fit run's weights, as `tlearn finetune` does (on a copy of the run), "
        f"with Adam at tlearn's fine-tune learning rate ({FinetuneSettings.lr:g}). `tlearn finetune` runs with its "
        "defaults (3 views of each training image: the plain one and 2 augmented) on the cache `tlearn fit` left, "
        "as a user's would: fit's pass already stored the plain images' block4_pool activations, so finetune "
        "embeds the 2 augmented views of each training image to block4_pool, then trains block5 + head on the "
        "cached activations. Its advantage grows with the epochs; `--views 1` embeds nothing.",
        "- Every job's cost is VGG16 passes, so the time ratios are set by the epochs, not the image size: the "
        "full mode runs at 160 px to keep the record to about an hour on a 2-core CPU (at 224 px, tlearn's default, "
        "it takes about 2.5 hours). 10 fine-tune epochs is where tlearn's early stopping ended on the weather set.",
        "- Accuracies on a few test images are noisy: one image is "
        f"{100 / max(1, results['tlearn_fit']['test_images']):.1f} points here.",
    ]
