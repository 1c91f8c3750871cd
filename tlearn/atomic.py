"""Writing a file so that readers see the old content or the new, never half of it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Iterator

STAGING_PREFIX = ".tlearn-staging-"
# .tlearn-staging-<pid>@<host>-<random>: who is writing it, so a later command can tell a
# folder whose process is gone (killed, crashed) from one still being written.
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)@(.*)-[^-]+$")
_OLD_STAGING_AGE_SECONDS = 24 * 3600  # folders named before this scheme: old enough = abandoned


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
        os.chmod(handle.name, 0o666 & ~_umask())  # as open() would make it, not mkstemp's 0600
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomically(path: Path, data) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, default=str) + "\n")


def _umask() -> int:
    """The process's umask: from /proc where there is one, since the portable way (set it,
    then set it back) briefly leaves other threads creating files with no mask at all."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_staging_folder(parent: Path) -> Path:
    """A new hidden folder in `parent`, named after this process, to write a folder's content
    into before renaming it into place. Staging folders that killed or crashed commands left
    in `parent` are removed first."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(Path(parent))
    folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}@{socket.gethostname()}-", dir=parent))
    folder.chmod(0o777 & ~_umask())  # once published it is the run: readable as the user's umask says, not 0700
    return folder


@contextlib.contextmanager
def staging_folder(parent: Path) -> Iterator[Path]:
    """A staging folder in `parent`, removed on the way out unless the caller renamed it away."""
    folder = make_staging_folder(parent)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_abandoned_staging(parent: Path) -> list[Path]:
    """Remove the staging folders in `parent` whose writing process no longer runs; returns them."""
    removed = []
    for folder in parent.glob(f"{STAGING_PREFIX}*"):
        if folder.is_dir() and _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _abandoned(folder: Path) -> bool:
    try:
        modified = folder.stat().st_mtime
    except OSError:
        return False  # gone already
    match = _STAGING_NAME.match(folder.name)
    if match is None:
        return time.time() - modified > _OLD_STAGING_AGE_SECONDS
    pid, host = int(match.group(1)), match.group(2)
    if host != socket.gethostname():
        return False  # another machine's process, on a shared folder: not ours to judge
    started = _process_start_time(pid)
    # No such process, or one that started after the folder was last written: the pid was reused.
    return started is None or started > modified + 1


def _process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if it does not run."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process: it runs
    try:  # Linux: start time in clock ticks after boot
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0  # it runs; when it started is unknown here: assume long ago
