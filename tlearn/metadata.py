"""tlearn.json as typed records: the model spec a classifier is rebuilt from, the split and
every training stage. Written by fit, extended by each finetune, read by every command.

The JSON keeps its flat layout (the model spec's fields are top-level keys), so runs written
by earlier versions open unchanged; unknown keys are ignored, so a newer run opens too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class ModelSpec:
    """Everything the classifier is rebuilt from (tlearn.json's top-level model keys)."""

    class_names: list[str]
    image_size: int
    weights: str  # imagenet, none or the weights file's path
    weights_identity: str  # what the base's numbers depend on: keys the activation cache
    preprocess: str
    dense_units: int
    dropout: float
    head_l2: float = 0.0  # runs made before the setting trained their head without it

    def build(self, weights: str = "none") -> keras.Model:
        """The architecture under the current dtype policy; random weights unless `weights` says."""
        from .model import build_classifier

        return build_classifier(
            self.class_names, self.image_size, weights, self.preprocess, self.dense_units, self.dropout, self.head_l2
        )


@dataclass
class SplitRecord:
    seed: int
    val_split: float
    test_split: float
    sizes: dict[str, int]
    duplicate_groups: int = 0
    given: dict[str, str] = field(default_factory=dict)  # subset -> the folder that gave it (pre-split data)


@dataclass
class StageRecord:
    """One training stage (fit, finetune, finetune-3, ...) as tlearn.json records it."""

    name: str
    settings: dict[str, Any]  # the command's settings, plus the cut layer it trained above
    precision_policy: str
    distribution: dict[str, Any]  # what --strategy resolved to: strategy, replicas, workers
    epochs_run: int
    best_epoch: int
    history: dict[str, list[float]]
    test_accuracy: float
    test_macro_f1: float
    wall_seconds: float
    artifacts: str = "."  # where its saved_model/, model.keras and report/ are, in the run

    @property
    def unfreeze(self) -> int:
        """How many base layers this stage trained (0: fit trained the head only)."""
        return self.settings.get("unfreeze", 0)


@dataclass
class RunMetadata:
    """tlearn.json: what later commands read instead of asking the user again."""

    data_dir: str
    model: ModelSpec
    views: int
    augment: str
    split: SplitRecord
    stages: list[StageRecord]
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"path", "reason"}]
    versions: dict[str, str] = field(default_factory=dict)
    tlearn_version: str = ""
    created: str = ""
    # Only while a finetune swaps its artifacts in: {"staging", "stage", "skipped"}, so that a
    # command interrupted there is completed by the next one to open the run (run.py).
    pending: dict[str, Any] | None = None

    def to_json(self) -> dict:
        pending = {"pending": self.pending} if self.pending else {}
        return {
            "tlearn_version": self.tlearn_version, "created": self.created, "data_dir": self.data_dir,
            **asdict(self.model), "views": self.views, "augment": self.augment, "split": asdict(self.split),
            "skipped": self.skipped, "stages": [asdict(stage) for stage in self.stages], "versions": self.versions,
            **pending,
        }

    @classmethod
    def from_json(cls, data: dict) -> RunMetadata:
        return cls(
            data_dir=data["data_dir"], model=_known(ModelSpec, data), views=data["views"], augment=data["augment"],
            split=_known(SplitRecord, data["split"]), stages=[_known(StageRecord, s) for s in data["stages"]],
            skipped=data.get("skipped", []), versions=data.get("versions", {}),
            tlearn_version=data.get("tlearn_version", ""), created=data.get("created", ""), pending=data.get("pending"),
        )


def stage_from_json(data: dict) -> StageRecord:
    return _known(StageRecord, data)


def _known(record_class, data: dict):
    """`record_class` from the keys of `data` it has fields for (a newer tlearn may add keys)."""
    return record_class(**{f.name: data[f.name] for f in fields(record_class) if f.name in data})
