"""Do training, `tlearn evaluate`, `tlearn predict` and the exported model used on its own agree?

    python benchmarks/serving_agreement.py RUN_DIR [--cache-dir DIR]

On the run's test split (split.csv rows with subset `test`) this compares, image by image,
`tlearn predict`'s probabilities with those of the plain SavedModel
(`tf.saved_model.load(RUN_DIR/saved_model).signatures["serving_default"]`, as in
examples/classify_with_tensorflow.py) given the whole decoded file, float32 [1, H, W, 3],
decoded by tlearn's decode path and not resized. Then it sets the test accuracy in
report/metrics.json (what fit measured on its cached activations) beside `tlearn evaluate`'s
(which writes RUN_DIR/report/evaluate-test/) and the accuracy of predict's classes. Exit code 0
when predict and the plain SavedModel agree on every class and within 1e-3 in probability and
the three accuracies are equal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure the checkout's tlearn, installed or not

import tlearn  # noqa: E402  (needs the path above)
from tlearn.data.images import decode_rgb  # noqa: E402
from tlearn.export import load_serving_function  # noqa: E402

TOLERANCE = 1e-3  # the largest |difference| in probability the target allows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=None, help="Activation cache for evaluate.")
    args = parser.parse_args()

    run = tlearn.Run.open(args.run_dir)
    records = run.read_split(subsets=("test",))["test"]
    paths = [record.path for record in records]
    started = time.perf_counter()
    predicted = tlearn.predict(paths, model=run, top_k=len(run.class_names))
    predict_seconds = time.perf_counter() - started
    from_predict = np.array([[_probability(p, name) for name in run.class_names] for p in predicted])
    from_plain = _plain_saved_model(run.files.saved_model, paths)

    difference = np.abs(from_predict - from_plain)
    worst = int(difference.max(axis=1).argmax())
    disagreements = [
        f"{path.name}: {run.class_names[a]} {from_predict[i, a]:.3f} from predict, "
        f"{run.class_names[b]} {from_plain[i, b]:.3f} from the plain SavedModel"
        for i, (path, a, b) in enumerate(zip(paths, from_predict.argmax(1), from_plain.argmax(1))) if a != b
    ]
    labels = np.array([run.class_names.index(record.label) for record in records])
    accuracies = {
        "metrics.json (fit)": json.loads((run.files.report / "metrics.json").read_text())["accuracy"],
        "tlearn evaluate": tlearn.evaluate(run, cache_dir=args.cache_dir, progress=False).accuracy,
        "tlearn predict": float((from_predict.argmax(1) == labels).mean()),
        "plain SavedModel": float((from_plain.argmax(1) == labels).mean()),
    }

    print(f"run {run.path}: {len(paths)} test images, {run.spec.image_size} px; predict took {predict_seconds:.1f} s")
    print(f"max |predict - plain SavedModel| = {difference.max():.2e} ({paths[worst].name}); "
          f"mean {difference.mean():.2e}")
    print(f"classes differ on {len(disagreements)} of {len(paths)} images")
    for line in disagreements:
        print("  " + line)
    for name, accuracy in accuracies.items():
        print(f"test accuracy, {name}: {accuracy:.4f} ({round(accuracy * len(paths))} of {len(paths)})")
    agree = difference.max() <= TOLERANCE and not disagreements and len(set(accuracies.values())) == 1
    print("target met" if agree else "target NOT met")
    return 0 if agree else 1


def _probability(prediction, name: str) -> float:
    if prediction.error:
        raise SystemExit(f"{prediction.path}: {prediction.error}")
    return next(item["probability"] for item in prediction.top_k if item["label"] == name)


def _plain_saved_model(saved_model: Path, paths: list[Path]) -> np.ndarray:
    """Each file as a deployment would run it: the whole decoded image, one at a time."""
    serve = load_serving_function(saved_model)
    rows = []
    for path in paths:
        (probabilities,) = serve(pixels=decode_rgb(path).astype(np.float32)[None]).values()
        rows.append(probabilities.numpy()[0])
    return np.array(rows)


if __name__ == "__main__":
    sys.exit(main())
