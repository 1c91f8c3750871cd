"""Images changed, replaced or removed after fit, met by real evaluate and finetune commands."""

import csv
import errno
import json
import os
import shutil

import pytest

from conftest import FAST_FIT, cached_activation_entries, make_class_folders, run_cli, solid_image
from tlearn.data.dataset import ImageRecord
from tlearn.data.files import file_sha256
from tlearn.data.images import UnreadableImage, load_rgb, unreadable_reason
from tlearn.data.split import read_split_csv, write_split_csv

NO_SUCH_FILE = unreadable_reason(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))


def decoding_error(path) -> str:
    """Why the one decode path (fit's, evaluate's, check's) cannot read `path`."""
    with pytest.raises(UnreadableImage) as error:
        load_rgb(path, 32)
    return str(error.value)

QUICK_FIT = [*FAST_FIT, "--epochs", "1", "--patience", "1", "--val-split", "0.25", "--test-split", "0.25"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("changed-files")
    data = make_class_folders(root / "colours", per_class=6)
    result = run_cli("fit", data, "--out", root / "run", "--cache-dir", root / "cache", *QUICK_FIT)
    assert result.exit_code == 0, result.output
    return root


@pytest.fixture
def run_on_own_data(fitted, tmp_path):
    """(data, run, cache): copies of a quick fit's, the run pointing at its copy of the data
    (copies keep each file's size and modification time), for the test to change."""
    for name in ("colours", "run", "cache"):
        shutil.copytree(fitted / name, tmp_path / name)
    metadata = json.loads((tmp_path / "run" / "tlearn.json").read_text())
    (tmp_path / "run" / "tlearn.json").write_text(json.dumps({**metadata, "data_dir": str(tmp_path / "colours")}))
    return tmp_path / "colours", tmp_path / "run", tmp_path / "cache"


def split_paths(data, run, subset):
    return [data / row["path"] for row in csv.DictReader(open(run / "split.csv")) if row["subset"] == subset]


def warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Warning:")]


def test_evaluate_takes_test_images_as_they_are_now(run_on_own_data):
    data, run, cache = run_on_own_data
    junk, replaced, touched, deleted, *unchanged = split_paths(data, run, "test")
    junk.write_text("not a picture any more\n")
    solid_image((250, 250, 250), seed=5).save(replaced)  # another picture under the same name
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # same bytes
    deleted.unlink()

    result = run_cli("evaluate", run, "--cache-dir", cache, "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(warnings(result.output)) == sorted([
        f"Warning: skipped {junk}: changed since fit: now not an image",
        f"Warning: skipped {deleted}: {NO_SUCH_FILE}",
        f"Warning: changed since fit, used as it is now: {replaced}",
    ])
    assert f"test: {2 + len(unchanged)} images" in result.output  # the replaced and the touched one, and the rest
    fresh = file_sha256(replaced)
    assert any(name.startswith(fresh) for name in cached_activation_entries(cache, "block5_pool"))
    report = list(csv.DictReader(open(run / "report" / "evaluate-test" / "changed_since_fit.csv")))
    assert report[0] == {"path": str(replaced), "now": "evaluated as it is now"}
    assert sorted(report[1:], key=lambda row: row["path"]) == sorted([
        {"path": str(junk), "now": "skipped: changed since fit: now not an image"},
        {"path": str(deleted), "now": f"skipped: {NO_SUCH_FILE}"},
    ], key=lambda row: row["path"])


def test_finetune_trains_on_changed_images_as_they_are_now(run_on_own_data):
    data, run, cache = run_on_own_data
    train = split_paths(data, run, "train")
    for number, path in enumerate(train):  # new pictures of the same classes, in the same folders
        solid_image({"cloudy": (128, 128, 128), "rain": (20, 40, 200), "sunrise": (230, 120, 20)}[path.parent.name],
                    seed=5000 + number).save(path)
    truncated = split_paths(data, run, "validation")[0]
    truncated.write_bytes(truncated.read_bytes()[:300])

    result = run_cli("finetune", run, "--views", "1", "--epochs", "1", "--cache-dir", cache, "--no-progress")
    assert result.exit_code == 0, result.output
    first = ", ".join(str(path) for path in sorted(train)[:3])
    assert warnings(result.output) == [
        f"Warning: skipped {truncated}: changed since fit: now {decoding_error(truncated)}",
        f"Warning: {len(train)} files changed since fit, used as they are now: {first} and {len(train) - 3} more",
    ]
    assert f"finetune: {len(train)} train / 5 validation / 6 test images, 1 skipped" in result.output
    embedded = {name.split("-")[0] for name in cached_activation_entries(cache, "block4_pool")}
    assert {file_sha256(path) for path in train} <= embedded  # embedded afresh, by their new content


def test_runs_from_before_sizes_were_recorded_hash_every_file_again(run_on_own_data):
    data, run, cache = run_on_own_data
    rows = list(csv.DictReader(open(run / "split.csv")))
    with open(run / "split.csv", "w", newline="") as handle:  # split.csv as tlearn wrote it before
        writer = csv.DictWriter(handle, ["path", "label", "subset", "sha256", "group", "reason"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    replaced = split_paths(data, run, "test")[0]
    solid_image((250, 250, 250), seed=5).save(replaced)

    result = run_cli("evaluate", run, "--cache-dir", cache, "--no-progress")
    assert result.exit_code == 0, result.output
    assert warnings(result.output) == [f"Warning: changed since fit, used as it is now: {replaced}"]


def test_a_moved_dataset_is_still_an_error_that_says_to_pass_data(fitted_run, tmp_path):
    result = run_cli("finetune", fitted_run, "--data", tmp_path / "elsewhere", "--no-progress")
    assert result.exit_code == 2
    assert result.output.startswith("Error: 46 of the 46 images of the run's split are missing, e.g. ")
    assert result.output.rstrip().endswith("if the dataset moved, pass its new place with --data")


def test_split_csv_keeps_each_files_size_and_time_and_reads_runs_without_them(tmp_path):
    record = ImageRecord(tmp_path / "a" / "1.jpg", "a", "ab" * 32, size=2250, mtime_ns=1795830206800619615)
    write_split_csv(tmp_path / "split.csv", tmp_path, {"train": [record], "validation": [], "test": []}, [])
    (read,) = read_split_csv(tmp_path / "split.csv", tmp_path)["train"]
    assert (read.size, read.mtime_ns) == (2250, 1795830206800619615)
    (tmp_path / "old.csv").write_text(f"path,label,subset,sha256,group,reason\na/1.jpg,a,train,{'ab' * 32},,\n")
    (old,) = read_split_csv(tmp_path / "old.csv", tmp_path)["train"]
    assert old == record and (old.size, old.mtime_ns) == (None, None)
