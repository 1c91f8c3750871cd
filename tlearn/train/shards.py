"""Float16 arrays appended into a few large shard files, each found through its index file.

A folder of shards replaces one file per array: a million images at 3 views are a few
hundred files, not 3 million. Layout, in the store's folder:

    <writer>.data    the arrays' bytes, back to back (at most SHARD_BYTES per file)
    <writer>.index   one fixed-size row per array: name, offset, shape, dtype, checksum, time

where <writer> is `<pid>@<host>-<random>`, the process that created the pair.

Crash safety: an array's bytes are written before its index row, and a row is read only
whole, with its own CRC; the array's sha256 (over the store's salt, the array's name and its
bytes) is checked on every read. A killed writer leaves at most bytes no row points to, or a
partial last row, which is ignored (and cut off by the next writer of that shard); a row
whose bytes never reached the disk fails its checksum. Nothing half-written is read as valid.

Concurrent writers: each pair is appended to by one writer at a time, which holds an
exclusive flock on its index file while it writes. A writer adopts an existing shard that is
not full and not locked, else creates its own pair (named by pid, host and a random part), so
two processes filling one cache never write into the same file, and the file count stays near
the data's size / SHARD_BYTES plus one shard per writer that ran at the same time. Readers
take no lock: rows and arrays are only ever appended, never rewritten in place. (Per-writer
files rather than one shared file under a lock: writers never wait for each other, and
workers on several machines can share a network folder. Where the file system has no locks,
no shard is adopted: each writer writes only pairs of its own making.)

An array stored again (recomputed after damage) or dropped gets a newer row; the newest row
of a name wins, and the old bytes stay until the folder is deleted.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Big enough that a million 7x7x512 float16 arrays (50 KB) are ~50 shards, small enough that
# one shard is a sensible unit to copy or lose.
SHARD_BYTES = 1 << 30
ARRAY_DTYPE = np.dtype("<f2")
_ARRAY_DTYPE_CODE = ARRAY_DTYPE.str.encode()
MAX_DIMENSIONS = 4
MISSING = "missing"
_TAG_BYTES = 40
_ROW_MAGIC = b"TLR3"
# Digests are u1 arrays, not S32: numpy's bytes fields drop trailing zero bytes.
_ROW = np.dtype([
    ("magic", "S4"), ("key", "<u8"), ("sha256", "u1", (32,)), ("tag", f"S{_TAG_BYTES}"), ("offset", "<u8"),
    ("time_ns", "<u8"), ("ndim", "u1"), ("dtype", "S3"), ("shape", "<u4", (MAX_DIMENSIONS,)), ("checksum", "u1", (32,)),
    ("crc", "<u4"), ("padding", "S4"),
])
# The same row for struct, which unpacks one row several times faster than numpy's field access.
_ROW_STRUCT = struct.Struct(f"<4sQ32s{_TAG_BYTES}sQQB3s{MAX_DIMENSIONS}I32sI4s")
assert _ROW_STRUCT.size == _ROW.itemsize
_CRC_END = _ROW.fields["crc"][1]  # the row's CRC covers every byte before it
_ROW_BITS = 40  # a lookup value is shard number << _ROW_BITS | row
_DROPPED = b"del"  # a row of this dtype says the array was dropped


class DamagedArray(Exception):
    """An array that is missing (`problem` == MISSING) or whose stored form is wrong."""

    def __init__(self, where: Path, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


@dataclass(frozen=True)
class Location:
    """Where an array is: its shard's data file, its index row, and its bytes in the data file."""

    data_path: Path
    row: int
    offset: int
    size: int


def lookup_key(sha256: str, tag: str) -> int:
    """The 64-bit key the array named sha256-tag is found by: its image's hash, told apart by
    view. Two names share a key with odds of 2**-64; a row found under another name's key
    fails its checksum, so even then no wrong array is returned."""
    return int(sha256[:16], 16) ^ zlib.crc32(tag.encode())


class ShardStore:
    """Arrays named `<sha256>-<tag>` in the shard files of `folder`; `salt` goes into every
    checksum, so an array copied into another store fails its check there."""

    def __init__(self, folder: Path, salt: str):
        self.folder, self.salt = Path(folder), salt
        self._positions: dict[int, int] = {}  # key -> shard number << _ROW_BITS | row: one int, not a tuple
        self._shards: list[_ShardView] = []
        self._shard_numbers: dict[str, int] = {}
        self._writer: _Writer | None = None
        self._lock = threading.Lock()  # tf.data reads in its own thread
        self._loaded = False

    def read(self, sha256: str, tag: str, shape: tuple[int, ...] | None = None, refresh: bool = False) -> np.ndarray:
        """The array named sha256-tag, checked (row CRC, dtype, `shape` if given, size and
        sha256); DamagedArray otherwise. With `refresh`, a name not found yet is looked up
        again in what other processes wrote since."""
        name = f"{sha256}-{tag}"
        found = self._find(lookup_key(sha256, tag), refresh)
        if found is None:
            raise DamagedArray(self.folder, MISSING)
        return self._shards[found[0]].checked_array(found[1], name, self.salt, shape)

    def append(self, sha256: str, tag: str, array: np.ndarray) -> None:
        """Store `array` (as float16) under sha256-tag; it replaces any earlier one of that name."""
        array = np.ascontiguousarray(array, dtype=ARRAY_DTYPE)
        if array.ndim > MAX_DIMENSIONS:
            raise ValueError(f"arrays of at most {MAX_DIMENSIONS} dimensions are stored, got shape {array.shape}")
        body = array.tobytes()
        name = f"{sha256}-{tag}"
        self._write(sha256, tag, array.shape, _checksum(self.salt, name, body), body)

    def drop(self, sha256: str, tag: str) -> None:
        """Forget the array named sha256-tag (a row saying so; its bytes stay until the folder is cleared)."""
        self._write(sha256, tag, (), b"\0" * 32, b"", dtype=_DROPPED)

    def refresh(self) -> None:
        """Read the index rows that this or other processes appended since the last look."""
        with self._lock:
            self._refresh_locked()

    def finish_writing(self) -> None:
        """Flush this process's shard to disk and release it for other writers."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def locations(self) -> dict[str, Location]:
        """Every array's name -> where its current row is, dropped ones left out (a Python
        loop over every row: for tests and benchmarks, not for reading)."""
        self.refresh()
        located = {}
        for shard in self._shards:
            for number, row in enumerate(shard.rows):
                if row["magic"] == _ROW_MAGIC and row["dtype"] != _DROPPED:
                    name = f"{row['sha256'].tobytes().hex()}-{row['tag'].decode()}"
                    if self._positions.get(int(row["key"])) == self._shard_numbers[shard.stem] << _ROW_BITS | number:
                        size = int(np.prod(row["shape"][: int(row["ndim"])], dtype=np.int64)) * ARRAY_DTYPE.itemsize
                        located[name] = Location(shard.data_path, number, int(row["offset"]), size)
        return dict(sorted(located.items()))

    def _find(self, key: int, refresh: bool) -> tuple[int, int] | None:
        """(shard number, row) of the newest row under `key`, if any."""
        with self._lock:
            if not self._loaded:
                self._refresh_locked()
            found = self._positions.get(key)
            if found is None and refresh:
                self._refresh_locked()
                found = self._positions.get(key)
        return None if found is None else divmod(found, 1 << _ROW_BITS)

    def _refresh_locked(self) -> None:
        self._loaded = True
        own = self._writer.stem if self._writer is not None else None
        for index_file in sorted(self.folder.glob("*.index")):
            stem = index_file.stem
            if stem == own:
                continue  # its rows are added as they are written; reading it here could drop our lock on NFS
            if stem not in self._shard_numbers:
                self._shard_numbers[stem] = len(self._shards)
                self._shards.append(_ShardView(self.folder, stem))
            number = self._shard_numbers[stem]
            start = len(self._shards[number].rows)
            if self._shards[number].reread_index():
                self._add_rows(number, start)

    def _add_rows(self, number: int, start: int) -> None:
        """Put rows start.. of shard `number` in the lookup, where they are newer than what is there.

        Whole-array work and one dict update: a million rows take about a second, where a
        Python loop over them took several.
        """
        rows = self._shards[number].rows[start:]
        sound = np.flatnonzero(rows["magic"] == _ROW_MAGIC)
        sound = sound[np.argsort(rows["time_ns"][sound], kind="stable")]  # the newest of a name comes last, and wins
        added = dict(zip(rows["key"][sound].tolist(), ((sound + start) | (number << _ROW_BITS)).tolist()))
        for key in added.keys() & self._positions.keys():  # stored again, here or in another shard: rare
            if self._time_of(self._positions[key]) > self._time_of(added[key]):
                added[key] = self._positions[key]
        self._positions.update(added)

    def _time_of(self, position: int) -> int:
        number, row = divmod(position, 1 << _ROW_BITS)
        return int(self._shards[number].rows[row]["time_ns"])

    def _write(self, sha256, tag, shape, checksum, body, dtype=_ARRAY_DTYPE_CODE) -> None:
        row = np.zeros((), _ROW)
        row["magic"], row["key"], row["sha256"] = _ROW_MAGIC, lookup_key(sha256, tag), _digest_array(bytes.fromhex(sha256))
        row["tag"] = _stored_tag(tag)
        row["time_ns"], row["ndim"], row["dtype"] = time.time_ns(), len(shape), dtype
        row["shape"][: len(shape)] = shape
        row["checksum"] = _digest_array(checksum)
        with self._lock:
            writer = self._writer_for(len(body))
            row["offset"] = writer.append_body(body)
            row["crc"] = zlib.crc32(row.tobytes()[:_CRC_END])
            writer.append_row(row)
            number = self._shard_numbers[writer.stem]
            self._shards[number].add_rows(row.reshape(1))
            self._positions[int(row["key"])] = number << _ROW_BITS | (len(self._shards[number].rows) - 1)

    def _writer_for(self, size: int) -> "_Writer":
        """This process's shard, with room for `size` more bytes (a new or adopted one if not)."""
        if self._writer is not None and self._writer.full(size):
            self._writer.close()
            self._writer = None
        if self._writer is None:
            if not self._loaded:
                self._refresh_locked()
            self._writer = _Writer.open(self.folder)
            if self._writer.stem not in self._shard_numbers:
                self._shard_numbers[self._writer.stem] = len(self._shards)
                self._shards.append(_ShardView(self.folder, self._writer.stem))
            view = self._shards[self._shard_numbers[self._writer.stem]]
            start = len(view.rows)
            view.reread_index(self._writer.index_fd)  # the adopted shard's rows so far, through our locked handle
            self._add_rows(self._shard_numbers[self._writer.stem], start)
        return self._writer


class _ShardView:
    """What a reader knows of one shard: its index rows so far and a map of its data file."""

    def __init__(self, folder: Path, stem: str):
        self.data_path, self.index_path, self.stem = folder / f"{stem}.data", folder / f"{stem}.index", stem
        self._data_name = str(self.data_path)  # stat'ed on every read: spare pathlib's conversion
        self._buffer, self._count = np.zeros(16, _ROW), 0  # grown by doubling: a writer adds rows one by one
        self._data: mmap.mmap | None = None

    @property
    def rows(self) -> np.ndarray:
        return self._buffer[: self._count]

    def reread_index(self, fd: int | None = None) -> bool:
        """Add the whole rows written since the last read (through `fd`, the writer's own
        handle, if given); whether there were any."""
        known = self._count * _ROW.itemsize
        if fd is not None:
            tail = os.pread(fd, os.fstat(fd).st_size - known, known)
        else:
            try:
                with open(self.index_path, "rb") as handle:
                    handle.seek(known)
                    tail = handle.read()
            except FileNotFoundError:
                return False
        whole = len(tail) // _ROW.itemsize  # a killed writer's partial last row is not a row
        self.add_rows(np.frombuffer(tail[: whole * _ROW.itemsize], _ROW))
        return whole > 0

    def add_rows(self, rows: np.ndarray) -> None:
        needed = self._count + len(rows)
        if needed > len(self._buffer):
            grown = np.zeros(max(needed, 2 * len(self._buffer)), _ROW)
            grown[: self._count] = self.rows
            self._buffer = grown
        self._buffer[self._count : needed] = rows
        self._count = needed

    def checked_array(self, row: int, name: str, salt: str, shape: tuple[int, ...] | None) -> np.ndarray:
        """The array index row `row` points to, after every check; DamagedArray naming the
        shard if one fails (MISSING if the row says the array was dropped)."""
        content = self._buffer[row].tobytes()
        _, _, _, _, start, _, ndim, dtype, *dimensions, checksum, crc, _ = _ROW_STRUCT.unpack(content)
        if zlib.crc32(content[:_CRC_END]) != crc:
            raise DamagedArray(self.data_path, "index row garbled")
        if dtype == _DROPPED:
            raise DamagedArray(self.data_path, MISSING)
        if dtype != _ARRAY_DTYPE_CODE:
            raise DamagedArray(self.data_path, f"dtype {dtype.decode(errors='replace')}, expected float16")
        found = tuple(dimensions[:ndim])
        if shape is not None and found != tuple(shape):
            raise DamagedArray(self.data_path, f"shape {found}, expected {tuple(shape)}")
        body = self._bytes(start, start + math.prod(found) * ARRAY_DTYPE.itemsize)
        if _checksum(salt, name, body) != checksum:
            raise DamagedArray(self.data_path, "checksum mismatch")
        return np.frombuffer(body, ARRAY_DTYPE).reshape(found)

    def _bytes(self, start: int, end: int) -> bytes:
        """A copy of bytes start:end of the data file (a copy: what was checked is what is returned)."""
        try:
            size = os.stat(self._data_name).st_size
        except FileNotFoundError:
            raise DamagedArray(self.data_path, "shard file missing") from None
        except OSError as error:  # unreadable: told like any damage, then recomputed into a shard of ours
            raise DamagedArray(self.data_path, error.strerror or type(error).__name__) from None
        # Checked each time, not only against the map: touching a mapped page past a file's end
        # (cut short by a disk tool or by hand) would kill the process with SIGBUS.
        if size < end:
            raise DamagedArray(self.data_path, f"truncated: {size} bytes, the entry ends at {end}")
        if start == end:
            return b""
        if self._data is None or len(self._data) < end:
            self._data = self._map()
        return self._data[start:end]

    def _map(self) -> mmap.mmap | None:
        try:
            with open(self.data_path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                return mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) if size else None
        except FileNotFoundError:
            raise DamagedArray(self.data_path, "shard file missing") from None
        except OSError as error:
            raise DamagedArray(self.data_path, error.strerror or type(error).__name__) from None


class _Writer:
    """One shard pair this process appends to, holding the flock on its index file."""

    def __init__(self, folder: Path, stem: str, index_handle, data_handle):
        self.stem, self._index, self._data = stem, index_handle, data_handle
        self.index_fd = index_handle.fileno()
        self.data_size = os.fstat(data_handle.fileno()).st_size

    @classmethod
    def open(cls, folder: Path) -> "_Writer":
        """Adopt a shard that is not full and that no other writer holds, else create one."""
        folder.mkdir(parents=True, exist_ok=True)
        for index_file in sorted(folder.glob("*.index")):
            adopted = cls._try_lock(folder, index_file.stem, create=False)
            if adopted is not None:
                return adopted
        while True:  # another writer may lock a new pair between its creation and our flock
            stem = f"{os.getpid()}@{socket.gethostname()}-{os.urandom(4).hex()}"
            created = cls._try_lock(folder, stem, create=True)
            if created is not None:
                return created

    @classmethod
    def _try_lock(cls, folder: Path, stem: str, create: bool) -> "_Writer | None":
        index_path, data_path = folder / f"{stem}.index", folder / f"{stem}.data"
        flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0)
        try:
            index = os.fdopen(os.open(index_path, flags, 0o666), "a+b")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(index.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another writer holds it
            index.close()
            return None
        except OSError:  # a file system without locks: only a pair of our own making is safe to write
            if not create:
                index.close()
                return None
        data = open(data_path, "ab")
        writer = cls(folder, stem, index, data)
        if not create and writer.full(1):
            writer.close()
            return None
        # A killed writer may have left a partial last row: cut it so that our rows stay aligned.
        size = os.fstat(index.fileno()).st_size
        index.truncate(size - size % _ROW.itemsize)
        return writer

    def full(self, size: int) -> bool:
        return self.data_size > 0 and self.data_size + size > SHARD_BYTES

    def append_body(self, body: bytes) -> int:
        """Write `body` at the data file's end and flush it; returns where it starts."""
        # The file's size, not a running count: bytes a failed write (a full disk) left are skipped.
        offset = os.fstat(self._data.fileno()).st_size
        self._data.write(body)
        self._data.flush()  # before its row: a row never points at bytes still in our buffer
        self.data_size = offset + len(body)
        return offset

    def append_row(self, row: np.ndarray) -> None:
        self._index.write(row.tobytes())
        self._index.flush()

    def close(self) -> None:
        for handle in (self._data, self._index):
            handle.flush()
            os.fsync(handle.fileno())
        self._data.close()
        self._index.close()  # releases the flock


def _stored_tag(tag: str) -> bytes:
    """The tag as a row stores it: itself if it fits (listings show it), else a digest of it."""
    encoded = tag.encode()
    return encoded if len(encoded) <= _TAG_BYTES else b"#" + hashlib.sha256(encoded).hexdigest()[: _TAG_BYTES - 1].encode()


def _digest_array(digest: bytes) -> np.ndarray:
    return np.frombuffer(digest, np.uint8)


def _checksum(salt: str, name: str, body: bytes) -> bytes:
    # The name is hashed too: a row pointing at another array's bytes fails.
    digest = hashlib.sha256(f"{salt}/{name}".encode())
    digest.update(body)
    return digest.digest()
