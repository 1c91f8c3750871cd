"""A run's recorded split checked against the files as they are now.

evaluate and finetune look images up in the activation cache by the content hash that fit
recorded. A file replaced since would be scored or trained on as it was: so each file's
size and modification time are compared with the recorded ones, and a file whose differ is
hashed again. Only a file whose content differs counts as changed (a touched or copied-back
file does not); it is used as it is now, under its new hash, and keeps its label: the folder
it is in, which is what the split recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import TlearnError
from .dataset import ImageRecord, SkippedFile
from .files import file_sha256, inspect_file
from .images import unreadable_reason


@dataclass(frozen=True)
class CheckedSplit(Mapping):
    """Subset name -> the records still usable, as the files are now.

    `changed` lists the files whose content changed since fit (their records carry the new
    hash, so they are embedded afresh); `skipped` the files gone or no longer decodable, with why.
    """

    subsets: dict[str, list[ImageRecord]]
    changed: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def __getitem__(self, name: str) -> list[ImageRecord]:
        return self.subsets[name]

    def __iter__(self):
        return iter(self.subsets)

    def __len__(self) -> int:
        return len(self.subsets)


def recheck_split(subsets: dict[str, list[ImageRecord]], workers: int = 8) -> CheckedSplit:
    """`subsets` as their files are now; a TlearnError if most files are gone (the dataset moved).

    A few files gone are skipped, with unreadable_reason's words: one deleted photo should not
    stop an evaluation of the others. Records without a recorded size and time (runs made before
    split.csv had them) are hashed again every time.
    """
    records = [record for name in subsets for record in subsets[name]]
    gone = [record.path for record in records if not record.path.exists()]
    if gone and 2 * len(gone) > len(records):
        raise TlearnError(
            f"{len(gone)} of the {len(records)} images of the run's split are missing, e.g. {gone[0]}: "
            "if the dataset moved, pass its new place with --data"
        )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        now = dict(zip(records, pool.map(_as_it_is_now, records)))
    checked = CheckedSplit({name: [] for name in subsets})
    for name, records_of_subset in subsets.items():
        for record in records_of_subset:
            current = now[record]
            if isinstance(current, SkippedFile):
                checked.skipped.append(current)
                continue
            checked.subsets[name].append(current)
            if current.sha256 != record.sha256:
                checked.changed.append(record.path)
    checked.skipped.sort(key=lambda item: str(item.path))
    checked.changed.sort()
    return checked


def _as_it_is_now(record: ImageRecord) -> ImageRecord | SkippedFile:
    """The record itself if its file is unchanged; else one with the new hash, or why it is unusable."""
    try:
        stat = record.path.stat()
        if (stat.st_size, stat.st_mtime_ns) == (record.size, record.mtime_ns):
            return record
        if file_sha256(record.path) == record.sha256:
            return record  # touched, or written back unchanged
    except OSError as error:  # gone since fit, or no longer readable
        return SkippedFile(record.path, unreadable_reason(error))
    facts = inspect_file(record.path)  # one more read, for the few changed files: hash and decode
    if facts.sha256 is None:  # gone or unreadable since the lines above
        return SkippedFile(record.path, facts.error)
    if facts.error is not None:
        return SkippedFile(record.path, f"changed since fit: now {facts.error}")
    return replace(record, sha256=facts.sha256, size=facts.size, mtime_ns=facts.mtime_ns)
