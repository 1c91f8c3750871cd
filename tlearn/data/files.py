"""Per-file facts about an image folder, read once and cached by (path, size, mtime).

Everything later commands want to know about a file (content hash, real format, colour mode,
size, frames, perceptual hash, or why it cannot be used) comes from one read of its bytes
and one reduced-size decode: JPEGs are decoded at 1/8 scale by libjpeg itself, which also
catches truncated files. A picture still over MAX_FINGERPRINT_PIXELS after that (a huge PNG:
only JPEG decodes at reduced scale) is not decoded at all.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import write_text_atomically
from .images import TRUNCATED, UnreadableImage, open_image, unreadable_reason

_CACHE_VERSION = 4  # bump when FileFacts or how it is computed changes
# A full decode costs ~3 bytes a pixel and check decodes up to 8 files at once: a 12,000 x 12,000
# PNG (420 KB on disk) took check to 1.3 GB. Larger pictures keep their header facts and
# content hash, a PNG's chunks are still checked for truncation, and check reports them
# as very large; they only miss the near-duplicate search.
MAX_FINGERPRINT_PIXELS = 50_000_000
# Fewer files than this are read in threads: starting worker processes (a few tenths of a
# second) would cost more than the cores save.
PROCESS_POOL_MIN_FILES = 200
# At most this many files are read at once, whatever the cores, for the memory above.
MAX_WORKERS = 8
# Pillow warns (a Python warning with a source line) on opening a picture over 89 million
# pixels; tlearn says it in its own words: check lists such images as very large.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class FileFacts:
    size: int
    mtime_ns: int
    sha256: str | None = None
    format: str | None = None
    mode: str | None = None
    width: int = 0
    height: int = 0
    frames: int = 1
    has_alpha: bool = False
    dhash: str | None = None  # 256-bit difference hash (hex) of the picture, for near-duplicates
    colours: str | None = None  # 8x8 RGB thumbnail (hex): tells apart pictures of like shape
    error: str | None = None  # why the file cannot be used; None for a usable image

    @property
    def usable(self) -> bool:
        return self.error is None

    @property
    def fingerprinted(self) -> bool:
        """Decoded for its perceptual hashes (a picture over MAX_FINGERPRINT_PIXELS is not)."""
        return self.dhash is not None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_file(path: Path) -> FileFacts:
    """The facts of one file; a file that cannot be used has `error` set, nothing is raised."""
    try:
        stat = path.stat()
        base = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        data = path.read_bytes()
    except OSError as error:  # vanished or unreadable since the folder was listed
        return FileFacts(size=0, mtime_ns=0, error=unreadable_reason(error))
    sha = hashlib.sha256(data).hexdigest()
    try:
        with open_image(data) as image:
            facts = dict(
                format=image.format, mode=image.mode, width=image.width, height=image.height,
                frames=getattr(image, "n_frames", 1),
                has_alpha=image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info,
            )
            return FileFacts(**base, sha256=sha, **facts, **_fingerprints(image))
    except UnreadableImage as error:
        return FileFacts(**base, sha256=sha, error=str(error))


def _fingerprints(image: Image.Image) -> dict[str, str]:
    """A difference hash (brightness gradients of a 17x16 thumbnail: robust to resizing and
    re-encoding) and a colour thumbnail: on skies, gradients alone match different photos.
    None for a picture over MAX_FINGERPRINT_PIXELS, which is only checked for truncation."""
    image.draft("RGB", (64, 64))  # JPEG: decode at reduced scale
    if image.width * image.height > MAX_FINGERPRINT_PIXELS:
        _verify(image)
        return {}
    image.load()  # decodes: a truncated file fails here
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # no copy of a large RGB picture
    gray = np.asarray(rgb.convert("L").resize((17, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    gradients = np.packbits(gray[:, 1:] > gray[:, :-1])
    thumbnail = np.asarray(rgb.resize((8, 8), Image.Resampling.BILINEAR), dtype=np.uint8)
    return {"dhash": gradients.tobytes().hex(), "colours": thumbnail.tobytes().hex()}


def _verify(image: Image.Image) -> None:
    """Check a file's structure without decoding its pixels (PNG: every chunk's checksum)."""
    try:
        image.verify()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise UnreadableImage(TRUNCATED if "truncated" in str(error).lower() else unreadable_reason(error)) from None


def inspect_files(paths: list[Path], cache_file: Path | None = None, workers: int | None = None,
                  progress: bool = False) -> dict[Path, FileFacts]:
    """Facts for every path, in the order given; entries in `cache_file` whose size and mtime
    still match are reused, the rest are read in `workers` processes (default: the cores this
    process may use, at most MAX_WORKERS). `progress` shows a bar on stderr while files are
    read, when stderr is a terminal.
    """
    cached = _read_cache(cache_file)
    facts: dict[Path, FileFacts] = {}
    todo = []
    for path in paths:
        entry = cached.get(str(path))
        stat = _stat_or_none(path)
        if entry and stat and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            facts[path] = FileFacts(**entry)
        else:
            todo.append(path)
    if todo:
        facts.update(zip(todo, _inspect_all(todo, workers or min(default_workers(), MAX_WORKERS), progress)))
        _write_cache(cache_file, {**cached, **{str(p): asdict(f) for p, f in facts.items()}})
    return {path: facts[path] for path in paths}


def default_workers() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if counter is not None:
        return counter() or 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def _inspect_all(todo: list[Path], workers: int, progress: bool) -> list[FileFacts]:
    """`inspect_file` of each path, in order: in worker processes (decoding holds the GIL), or
    in threads for a few files, one core, or where processes cannot be started."""
    from tqdm.auto import tqdm  # here: a tenth of a second that a repeated check, with nothing to read, saves

    with tqdm(total=len(todo), desc="reading files", unit="file", disable=None if progress else True,
              leave=False) as bar:
        # not with TensorFlow loaded: a process forked from its threads can deadlock, and fit,
        # the one caller that has it loaded, spends far longer embedding than reading files
        if workers > 1 and len(todo) >= PROCESS_POOL_MIN_FILES and "tensorflow" not in sys.modules:
            try:
                return _in_processes(todo, workers, bar)
            except (OSError, ValueError, BrokenProcessPool):  # no fork, no processes (a sandbox), a worker killed
                bar.reset()
        with ThreadPoolExecutor(max_workers=MAX_WORKERS) as pool:  # threads overlap reads from slow disks
            return [_counted(facts, bar) for facts in pool.map(inspect_file, todo)]


def _in_processes(todo: list[Path], workers: int, bar) -> list[FileFacts]:
    # Forked: workers start at once with everything imported, and never run the caller's
    # script again as spawn and forkserver do (they import its __main__ in every worker).
    context = multiprocessing.get_context("fork")
    chunk = max(1, min(64, len(todo) // (workers * 8)))  # few round trips, yet an even share each
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return [_counted(facts, bar) for facts in pool.map(inspect_file, todo, chunksize=chunk)]


def _counted(facts: FileFacts, bar) -> FileFacts:
    bar.update()
    return facts


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None  # inspect_file says why


def _read_cache(cache_file: Path | None) -> dict:
    if cache_file is None or not cache_file.exists():
        return {}
    try:
        content = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a damaged cache only costs a re-read
    return content.get("files", {}) if content.get("version") == _CACHE_VERSION else {}


def _write_cache(cache_file: Path | None, files: dict) -> None:
    if cache_file is None:
        return
    write_text_atomically(cache_file, json.dumps({"version": _CACHE_VERSION, "files": files}))
