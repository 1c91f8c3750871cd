"""Run directories: the artifact that flows between commands.

`RunFiles` is the one place that names a run's files; `Run` is an existing run directory with
its metadata (metadata.py: tlearn.json as typed records); `RunWriter` writes a new run or a
new stage in a hidden staging folder and renames it into place when complete, so an
interrupted or failed command never leaves a half-written export, and an existing run is
never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import make_staging_folder, write_json_atomically
from .errors import TlearnError
from .metadata import ModelSpec, RunMetadata, StageRecord, stage_from_json
from .settings import DEFAULT_MODELS_DIR

if TYPE_CHECKING:
    import keras

    from .data.changes import CheckedSplit

@dataclass(frozen=True)
class RunFiles:
    """Where each artifact lives inside a run directory (or its staging folder)."""

    root: Path

    metadata = property(lambda self: self.root / "tlearn.json")
    split = property(lambda self: self.root / "split.csv")
    labels = property(lambda self: self.root / "labels.txt")
    model = property(lambda self: self.root / "model.keras")
    saved_model = property(lambda self: self.root / "saved_model")
    report = property(lambda self: self.root / "report")
    data_check_json = property(lambda self: self.root / "data_check.json")
    data_check_text = property(lambda self: self.root / "data_check.txt")
    label_issues = property(lambda self: self.root / "label_issues.csv")  # fit's; finetune keeps it

    def stage(self, name: str) -> Path:
        """Where an earlier stage's artifacts go once a later stage replaces them."""
        return self.root / "stages" / name

    def evaluation(self, data_name: str) -> Path:
        return self.report / f"evaluate-{data_name}"

    def stage_artifacts(self) -> list[Path]:
        """What each stage replaces: the export, the Keras model and the report."""
        return [self.saved_model, self.model, self.report]


class Run:
    """An existing run directory and its metadata.

        run = Run.open("models/weather")
        run.finetune(unfreeze=4)
        run.predict(["photo.jpg"])
    """

    def __init__(self, path: Path, metadata: RunMetadata):
        self.path, self.metadata = Path(path), metadata
        self.files = RunFiles(self.path)

    @classmethod
    def open(cls, path: str | Path | Run | None = None, models_dir: str | Path = DEFAULT_MODELS_DIR) -> Run:
        """The run at `path`, or the newest run in `models_dir` when `path` is None."""
        if isinstance(path, Run):
            return path
        found = Path(path) if path is not None else newest_run(models_dir)
        metadata_file = RunFiles(found).metadata
        if not metadata_file.is_file():
            raise TlearnError(f"{found} is not a tlearn run (no {metadata_file.name}): give a folder that `tlearn fit` wrote")
        try:
            metadata = RunMetadata.from_json(json.loads(metadata_file.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise TlearnError(f"{metadata_file} cannot be read ({type(error).__name__}: {error}): "
                              "the run is damaged; fit it again") from None
        run = cls(found, metadata)
        run.complete_pending_stage()
        return run

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def spec(self) -> ModelSpec:
        return self.metadata.model

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    @property
    def last_stage(self) -> StageRecord:
        return self.metadata.stages[-1]

    @property
    def data_dir(self) -> Path:
        return Path(self.metadata.data_dir)

    def load_model(self) -> keras.Model:
        """The run's classifier, rebuilt from its spec under the current dtype policy.

        Building anew (rather than using the loaded model as is) lets each stage choose its
        own precision; model.keras is read in safe mode, so the file cannot run code.
        """
        from .model import classifier_weights, load_classifier

        model = self.spec.build()
        model.set_weights(classifier_weights(load_classifier(self.files.model)))
        return model

    def read_split(self, data_dir: str | Path | None = None, subsets: tuple[str, ...] | None = None) -> CheckedSplit:
        """The recorded train/validation/test records (or only `subsets`), with paths under
        `data_dir` (default: where the run's data was), checked against the files as they are
        now: files changed since fit come with their new hash and are listed in `changed`;
        files gone or undecodable are left out and listed in `skipped`. A TlearnError if most
        files are missing (the dataset moved)."""
        from .data.changes import recheck_split
        from .data.split import SUBSETS, read_split_csv

        recorded = read_split_csv(self.files.split, Path(data_dir) if data_dir is not None else self.data_dir)
        return recheck_split({name: recorded[name] for name in subsets or SUBSETS})

    def save_metadata(self) -> None:
        write_json_atomically(self.files.metadata, self.metadata.to_json())

    def complete_pending_stage(self) -> None:
        """Finish switching to a new stage whose switch was interrupted (see RunWriter.publish_stage).

        Every step checks what is already done, so running this again after a crash in it
        is safe. Until tlearn.json records the switch, the previous stage's files are whole
        at the root or in stages/; the new stage's are whole in the staging folder.
        """
        pending = self.metadata.pending
        if not pending:
            return
        staged = RunFiles(self.path / pending["staging"])
        previous = self.last_stage
        kept = RunFiles(self.files.stage(previous.name))
        if not staged.root.is_dir():  # the new stage is lost: stay with (or move back to) the previous one
            for current, keep in zip(self.files.stage_artifacts(), kept.stage_artifacts()):
                if not current.exists() and keep.exists():
                    os.rename(keep, current)
            self.metadata.pending = None
            self.save_metadata()
            return
        kept.root.mkdir(parents=True, exist_ok=True)
        for current, keep, new in zip(self.files.stage_artifacts(), kept.stage_artifacts(), staged.stage_artifacts()):
            if not new.exists():
                continue  # already in place
            if current.exists():
                _remove(keep)  # what an abandoned earlier attempt may have left there
                os.rename(current, keep)
            os.rename(new, current)
        previous.artifacts = f"stages/{previous.name}"
        self.metadata.stages.append(stage_from_json(pending["stage"]))
        self.metadata.skipped += pending["skipped"]
        self.metadata.pending = None
        self.save_metadata()
        shutil.rmtree(staged.root, ignore_errors=True)

    def finetune(self, **settings):
        """`tlearn.finetune` on this run; see there for the settings."""
        from .train.stages import finetune

        return finetune(self, **settings)

    def evaluate(self, **settings):
        """`tlearn.evaluate` on this run; see there for the settings."""
        from .evaluation import evaluate

        return evaluate(self, **settings)

    def export_model(self, **settings):
        """`tlearn.export_model` of this run; see there for the settings."""
        from .conversion import export_model

        return export_model(self, **settings)

    def predict(self, images, **settings):
        """`tlearn.predict` with this run's model; see there for the settings."""
        from .prediction import predict

        return predict(images, model=self, **settings)

    def explain(self, images, **settings):
        """`tlearn.explain` with this run's model; see there for the settings."""
        from .explanation import explain

        return explain(images, model=self, **settings)


def load_model(run: str | Path | Run | None = None, models_dir: str | Path = DEFAULT_MODELS_DIR) -> keras.Model:
    """A run's Keras model, loaded in safe mode (default: the newest run in `models_dir`).

    Use this rather than `keras.saving.load_model("RUN/model.keras")`: that needs tlearn's
    preprocessing layer registered first, which importing this function does.
    """
    return Run.open(run, models_dir).load_model()


def newest_run(models_dir: str | Path) -> Path:
    models = Path(models_dir)
    runs = [p for p in models.iterdir() if RunFiles(p).metadata.is_file()] if models.is_dir() else []
    if not runs:
        raise TlearnError(f"no runs in {models}/: run `tlearn fit DATA_DIR` first, or pass --model RUN_DIR")
    return max(runs, key=lambda p: RunFiles(p).metadata.stat().st_mtime)


def check_out_is_free(out: str | Path | None) -> None:
    if out is not None and Path(out).exists() and any(Path(out).iterdir()):
        raise TlearnError(f"--out {out} already exists and is not empty: choose another --out or remove it")


class RunWriter:
    """A run, or a run's next stage, written in a hidden staging folder and then published.

    Use as a context manager: whatever was not published is removed on the way out. With
    `publish=False` (a multi-worker worker other than the chief) the folder is a temporary one
    outside `parent` and publishing does nothing: every worker writes, one publishes.
    """

    def __init__(self, parent: str | Path, *, publish: bool = True):
        self.parent, self.publishes = Path(parent), publish
        folder = make_staging_folder(self.parent) if publish else Path(tempfile.mkdtemp(prefix="tlearn-worker-"))
        self.files = RunFiles(folder)
        self.handed_over = False

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.handed_over:
            shutil.rmtree(self.files.root, ignore_errors=True)

    def publish_new(self, out: str | Path | None, models_dir: str | Path, name: str) -> Path | None:
        """Rename the complete staging folder to `out`, or to `models_dir/name` (`-2`, `-3`, ... if taken)."""
        if not self.publishes:
            return None
        if out is not None:
            check_out_is_free(out)
            os.replace(self.files.root, out)
            return Path(out)
        while True:
            candidate = _free_run_dir(Path(models_dir), name)
            try:
                os.rename(self.files.root, candidate)  # fails if another run claimed the name meanwhile
                return candidate
            except OSError:
                if not candidate.exists():
                    raise

    def publish_stage(self, run: Run, stage: StageRecord, skipped: list[dict[str, str]]) -> Path | None:
        """Make the staged artifacts the run's current ones and record `stage`; the previous
        stage's move to stages/<its name>/.

        tlearn.json first records the switch as pending (one atomic write), then the files
        are renamed: a command killed in between leaves the new stage whole in the staging
        folder, and the next command to open the run completes the switch.
        """
        if not self.publishes:
            return None
        run.metadata.pending = {"staging": self.files.root.name, "stage": asdict(stage), "skipped": skipped}
        run.save_metadata()
        self.handed_over = True  # the run owns the staging folder now: it completes the switch from it
        run.complete_pending_stage()
        return run.path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _free_run_dir(models_dir: Path, name: str) -> Path:
    """models_dir/name, or name-2, name-3, ... if taken."""
    candidate, number = models_dir / name, 1
    while candidate.exists():
        number += 1
        candidate = models_dir / f"{name}-{number}"
    return candidate
