"""Run directories: the artifact that flows between commands.

A run is written in a hidden staging folder next to its final place and renamed into place
when complete, so an interrupted or failed command never leaves a half-written export, and
an existing run is never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import TlearnError

METADATA = "tlearn.json"


def write_json(path: Path, data: dict) -> None:
    """Write JSON by rename, so readers see the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def read_metadata(run_dir: Path) -> dict:
    return json.loads((run_dir / METADATA).read_text(encoding="utf-8"))


def is_run(path: Path) -> bool:
    return (path / METADATA).is_file()


def resolve_run(run_dir: str | Path | None, models_dir: str | Path = "models") -> Path:
    """`run_dir` checked to be a run, or the newest run in `models_dir` when it is None."""
    if run_dir is not None:
        path = Path(run_dir)
        if not is_run(path):
            raise TlearnError(f"{path} is not a tlearn run (no {METADATA}): give a folder that `tlearn fit` wrote")
        return path
    models = Path(models_dir)
    runs = [p for p in models.iterdir() if is_run(p)] if models.is_dir() else []
    if not runs:
        raise TlearnError(f"no runs in {models}/: run `tlearn fit DATA_DIR` first, or pass --model RUN_DIR")
    return max(runs, key=lambda p: (p / METADATA).stat().st_mtime)


def free_run_dir(models_dir: Path, name: str) -> Path:
    """models_dir/name, or name-2, name-3, ... if taken."""
    candidate, number = models_dir / name, 1
    while candidate.exists():
        number += 1
        candidate = models_dir / f"{name}-{number}"
    return candidate


@contextlib.contextmanager
def staging_dir(parent: Path):
    """A hidden temporary folder in `parent`, removed unless the caller moved it away."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".tlearn-staging-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish_new_run(staging: Path, target: Path | None, models_dir: Path, name: str) -> Path:
    """Rename a complete staging folder to its final name; returns that name."""
    if target is not None:
        if target.exists() and any(target.iterdir()):
            raise TlearnError(f"--out {target} already exists and is not empty: choose another --out or remove it")
        os.replace(staging, target)
        return target
    while True:
        candidate = free_run_dir(models_dir, name)
        try:
            os.rename(staging, candidate)  # fails if another run claimed the name meanwhile
            return candidate
        except OSError:
            if not candidate.exists():
                raise


def replace_stage_artifacts(run_dir: Path, staging: Path, previous_stage: str, names: list[str]) -> None:
    """Move the current artifacts to stages/<previous_stage>/, then the staged ones into place.

    At every moment each stage's files exist complete in one of the two places.
    """
    keep = run_dir / "stages" / previous_stage
    keep.mkdir(parents=True, exist_ok=False)
    for name in names:
        if (run_dir / name).exists():
            os.rename(run_dir / name, keep / name)
    for name in names:
        os.rename(staging / name, run_dir / name)
