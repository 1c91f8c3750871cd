"""Writing a file so that readers see the old content or the new, never half of it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

STAGING_PREFIX = ".tlearn-staging-"


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write` on a temporary file beside `path`, then rename it over `path`.

    A crash or a kill part-way leaves at most a hidden temporary file, never a truncated
    `path`; concurrent writers each rename a complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
        os.chmod(handle.name, 0o666 & ~_UMASK)  # as open() would make it, not mkstemp's 0600
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomically(path: Path, data) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, default=str) + "\n")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: setting it to read it is not thread-safe


def make_staging_folder(parent: Path) -> Path:
    """A new hidden folder in `parent`, named after this process, to write a folder's content
    into before renaming it into place."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=parent))


@contextlib.contextmanager
def staging_folder(parent: Path) -> Iterator[Path]:
    """A staging folder in `parent`, removed on the way out unless the caller renamed it away."""
    folder = make_staging_folder(parent)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
