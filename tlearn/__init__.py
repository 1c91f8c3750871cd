"""tlearn: transfer learning for folders of photos, one sub-folder per class.

    import tlearn
    run = tlearn.fit("weather", weights="vgg16.weights.h5", preprocess="torch")
    tlearn.finetune(run.run_dir, unfreeze=4)
    for p in tlearn.predict(["photo.jpg"], model=run.run_dir):
        print(p.path, p.label, p.probability)
    tlearn.explain(["photo.jpg"], model=run.run_dir, out="explanations")  # Grad-CAM figures
    model = tlearn.load_model(run.run_dir)  # the Keras model, loaded in safe mode

TensorFlow loads on first use of a training or prediction function, not on import, so the
command line answers --help at once.
"""

from importlib import import_module

from .errors import TlearnError

__version__ = "0.1.0"

_LAZY = {
    "fit": "train.stages", "finetune": "train.stages", "RunResult": "train.stages",
    "evaluate": "evaluation", "Evaluation": "evaluation",
    "predict": "prediction", "iter_predictions": "prediction", "Prediction": "prediction",
    "explain": "explanation", "iter_explanations": "explanation", "Explanation": "explanation",
    "Run": "run", "load_model": "run",
    "export_model": "conversion", "ExportResult": "conversion",
    "FitSettings": "settings", "FinetuneSettings": "settings", "EvaluateSettings": "settings",
    "PredictSettings": "settings", "CheckSettings": "settings", "ExplainSettings": "settings",
    "ExportSettings": "settings",
    "check_folder": "data.check", "DataCheck": "data.check",
    "check": "label_issues", "find_suspected_label_errors": "label_issues",
}
__all__ = ["TlearnError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'tlearn' has no attribute {name!r}")
