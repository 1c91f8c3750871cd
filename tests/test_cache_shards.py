"""The shard files behind the activation cache: crashes, concurrent writers, file count.

Pure numpy: writers are real processes (killed for real where a crash is the point), which
import only tlearn.train.shards, so each starts in well under a second.
"""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tlearn.train import shards
from tlearn.train.shards import MISSING, DamagedArray, ShardStore

REPO = Path(__file__).resolve().parents[1]
SALT = "cache-folder"


def sha(number: int) -> str:
    return hashlib.sha256(str(number).encode()).hexdigest()


def array(number: int, shape=(4, 4, 8)) -> np.ndarray:
    return np.random.default_rng(number).normal(size=shape).astype(np.float16)


def run_writer(folder: Path, body: str, wait: bool = True) -> subprocess.Popen:
    """A real process that opens a ShardStore on `folder` as `store` and runs `body`."""
    code = textwrap.dedent(f"""
        import hashlib, os, signal, sys, time
        import numpy as np
        from tlearn.train import shards
        from tlearn.train.shards import ShardStore
        def sha(number): return hashlib.sha256(str(number).encode()).hexdigest()
        def array(number): return np.random.default_rng(number).normal(size=(4, 4, 8)).astype(np.float16)
        store = ShardStore({str(folder)!r}, {SALT!r})
    """) + textwrap.dedent(body)
    process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        _, errors = process.communicate(timeout=60)
        assert process.returncode in (0, -signal.SIGKILL), errors
    return process


def assert_all_sound(store: ShardStore, numbers) -> None:
    for number in numbers:
        np.testing.assert_array_equal(store.read(sha(number), "plain", (4, 4, 8)), array(number))


# A writer killed at the worst moment: after its bytes, in the middle of the row that would make them an entry.
KILLED_MID_ROW = """
    for number in range(5):
        store.append(sha(number), "plain", array(number))
    def half_a_row(row):
        store._writer._index.write(row.tobytes()[: shards._ROW.itemsize // 2])
        store._writer._index.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    store._writer_for(0).append_row = half_a_row
    store.append(sha(5), "plain", array(5))
"""

# ... or in the middle of the bytes themselves, before any row points at them.
KILLED_MID_BYTES = """
    for number in range(5):
        store.append(sha(number), "plain", array(number))
    def half_the_bytes(body):
        store._writer._data.write(body[: len(body) // 2])
        store._writer._data.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    store._writer_for(0).append_body = half_the_bytes
    store.append(sha(5), "plain", array(5))
"""


@pytest.mark.parametrize("killed", [KILLED_MID_ROW, KILLED_MID_BYTES], ids=["mid-row", "mid-bytes"])
def test_a_writer_killed_mid_write_leaves_nothing_read_as_valid(tmp_path, killed):
    run_writer(tmp_path, killed)
    index = next(tmp_path.glob("*.index"))
    store = ShardStore(tmp_path, SALT)
    assert_all_sound(store, range(5))
    with pytest.raises(DamagedArray) as missing:
        store.read(sha(5), "plain", (4, 4, 8), refresh=True)
    assert missing.value.problem == MISSING  # half-written: not there, so recomputed

    store.append(sha(5), "plain", array(5))  # the next writer adopts the killed one's shard (its lock died with it)
    store.append(sha(6), "plain", array(6))
    store.finish_writing()
    assert sorted(path.name for path in tmp_path.iterdir()) == [index.with_suffix(".data").name, index.name]
    assert index.stat().st_size == 7 * shards._ROW.itemsize  # the partial row was cut off, ours line up
    assert_all_sound(ShardStore(tmp_path, SALT), range(7))


def test_a_writer_killed_at_any_moment_leaves_only_sound_entries(tmp_path):
    writer = run_writer(tmp_path, """
        for number in range(100000):
            store.append(sha(number), "plain", array(number))
            if number == 50:
                print("writing", flush=True)
    """, wait=False)
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)  # wherever it is: in a body, in a row, between them
    writer.wait(timeout=30)
    written = ShardStore(tmp_path, SALT).locations()
    assert len(written) > 50
    assert_all_sound(ShardStore(tmp_path, SALT), [number for number in range(len(written))])


def writing_alongside(tmp_path: Path, start: int, other: int) -> str:
    """Store entries start..start+299, holding the shard until the writer of `other` has begun too."""
    return f"""
        for number in range({start}, {start} + 300):
            store.append(sha(number), "plain", array(number))
            if number == {start}:
                open({str(tmp_path / f"started-{start}")!r}, "w").close()
                while not os.path.exists({str(tmp_path / f"started-{other}")!r}):
                    time.sleep(0.01)
    """


def test_two_processes_writing_at_once_each_write_their_own_shard(tmp_path):
    first, second = (run_writer(tmp_path / "cache", writing_alongside(tmp_path, start, other), wait=False)
                     for start, other in ((0, 200), (200, 0)))
    for process in (first, second):
        _, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors
    assert len(list((tmp_path / "cache").glob("*.data"))) == 2  # neither appended to the shard the other held
    store = ShardStore(tmp_path / "cache", SALT)
    assert len(store.locations()) == 500  # 100 names written by both: each read once, from one of them
    assert_all_sound(store, range(500))


def test_a_thousand_entries_make_two_files_and_shards_stay_bounded(tmp_path, monkeypatch):
    store = ShardStore(tmp_path / "one", SALT)
    for number in range(1000):
        store.append(sha(number), "plain", array(number))
    store.finish_writing()
    assert len(list((tmp_path / "one").iterdir())) == 2  # one data file, one index
    for later_command in range(3):  # each adopts the shard the one before released
        again = ShardStore(tmp_path / "one", SALT)
        again.append(sha(1000 + later_command), "plain", array(1000 + later_command))
        again.finish_writing()
    assert len(list((tmp_path / "one").iterdir())) == 2

    entry_bytes = array(0).nbytes
    monkeypatch.setattr(shards, "SHARD_BYTES", 100 * entry_bytes)
    small = ShardStore(tmp_path / "small", SALT)
    for number in range(1000):
        small.append(sha(number), "plain", array(number))
    small.finish_writing()
    assert len(list((tmp_path / "small").glob("*.data"))) == 10  # full shards are closed, new ones opened
    assert_all_sound(ShardStore(tmp_path / "small", SALT), range(1000))


def test_an_entry_stored_again_or_dropped_replaces_the_earlier_one(tmp_path):
    store = ShardStore(tmp_path, SALT)
    store.append(sha(0), "plain", array(0))
    store.append(sha(0), "plain", array(1))
    store.append(sha(2), "plain", array(2))
    store.drop(sha(2), "plain")
    store.finish_writing()
    later = ShardStore(tmp_path, SALT)
    np.testing.assert_array_equal(later.read(sha(0), "plain"), array(1))
    with pytest.raises(DamagedArray, match="missing"):
        later.read(sha(2), "plain")
    assert list(later.locations()) == [f"{sha(0)}-plain"]


def test_the_newest_of_a_name_wins_across_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_BYTES", 3 * array(0).nbytes)
    store = ShardStore(tmp_path, SALT)
    for number, content in [(0, 0), (1, 1), (2, 2), (0, 3), (1, 4)]:  # 0 and 1 again, in the second shard
        store.append(sha(number), "plain", array(content))
    store.finish_writing()
    assert len(list(tmp_path.glob("*.data"))) == 2
    later = ShardStore(tmp_path, SALT)
    for number, content in [(0, 3), (1, 4), (2, 2)]:
        np.testing.assert_array_equal(later.read(sha(number), "plain"), array(content))


def test_a_shard_cut_short_or_deleted_under_a_reader_is_damage_not_a_crash(tmp_path):
    store = ShardStore(tmp_path, SALT)
    for number in range(3):
        store.append(sha(number), "plain", array(number))
    store.finish_writing()
    reader = ShardStore(tmp_path, SALT)
    assert_all_sound(reader, range(3))  # its data file is mapped now
    (data,) = tmp_path.glob("*.data")
    with open(data, "r+b") as shard:
        shard.truncate(array(0).nbytes + 10)  # touching the map past here would be SIGBUS
    with pytest.raises(DamagedArray, match=r"truncated: 266 bytes, the entry ends at 768"):
        reader.read(sha(2), "plain")
    data.unlink()
    with pytest.raises(DamagedArray, match="shard file missing"):
        reader.read(sha(0), "plain")
