"""The same flow through the Python API, as in a notebook.

    python examples/python_api.py DATA_DIR [WEIGHTS_FILE]
"""

import itertools
import sys

import tlearn

data_dir = sys.argv[1]
weights = dict(weights=sys.argv[2], preprocess="torch") if len(sys.argv) > 2 else {}

try:
    run = tlearn.fit(data_dir, out="models/api-example", image_size=160, epochs=20, **weights)
except tlearn.TlearnError as error:  # a bad folder, option or weights file: fixable by you
    sys.exit(f"Error: {error}")
print(f"fit: test accuracy {run.test_accuracy:.3f}, run in {run.run_dir}")

tuned = tlearn.finetune(run.run_dir, unfreeze=4, epochs=5)
print(f"finetune: test accuracy {tuned.test_accuracy:.3f}")

# iter_predictions works batch by batch as it is read: five rows cost a batch, not the folder.
for prediction in itertools.islice(tlearn.iter_predictions(data_dir, model=run.run_dir, top_k=2), 5):
    print(prediction.path, prediction.label, f"{prediction.probability:.3f}", prediction.error or "")
