"""report/index.html: one offline page of a run's evidence, from real fits and evaluations."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_FIT, run_cli, solid_image
from tlearn.html_report import MAX_LABEL_ISSUES, NOT_AVAILABLE, write_html_report
from tlearn.run import Run

ODD_CLASSES = {"a<b&c": (200, 30, 30), '"quoted" \'class\'': (30, 200, 30), "天气 ☀": (30, 30, 200)}


class _Page(HTMLParser):
    """Every referenced URL of a page, its text per section and its script tags."""

    def __init__(self, text: str):
        super().__init__()
        self.urls: list[str] = []
        self.scripts = 0
        self.sections: dict[str, str] = {}
        self._section: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.urls += [value for name, value in attrs if name in ("src", "href", "srcset", "action") and value]
        self.scripts += tag == "script"
        if tag == "section":
            self._section = attributes["id"]
            self.sections[self._section] = ""

    def handle_data(self, data):
        if self._section is not None:
            self.sections[self._section] += data


def _read_page(path: Path) -> _Page:
    return _Page(path.read_text(encoding="utf-8"))


def _assert_offline_and_whole(index: Path) -> _Page:
    """No URL leaves the folder, and every file the page refers to exists."""
    text = index.read_text(encoding="utf-8")
    page = _Page(text)
    assert '<meta charset="utf-8">' in text
    assert "http:" not in text and "https:" not in text and "url(" not in text and page.scripts == 0
    for url in page.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and not url.startswith("//"), url
        if parts.path:  # "#section" links stay on the page
            assert (index.parent / unquote(parts.path)).is_file(), url
    return page


def test_fit_writes_an_offline_report_page(fitted_run):
    index = fitted_run / "report" / "index.html"
    page = _assert_offline_and_whole(index)
    metrics = json.loads((fitted_run / "report" / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.3f}" in page.sections["summary"]
    assert any(url.endswith("curves.png") for url in page.urls)
    assert "cloudy" in page.sections["confusion"] and "cloudy" in page.sections["per-class"]
    assert "unreadable" in page.sections["data"].lower() or "cannot be used" in page.sections["data"]
    assert "seed" in page.sections["settings"] and "tensorflow" in page.sections["settings"]


@pytest.fixture(scope="module")
def odd_names_run(tmp_path_factory) -> Path:
    """A real fit on classes whose names are HTML, quotes and another script."""
    data = tmp_path_factory.mktemp("odd") / "odd names"
    for index, (name, colour) in enumerate(ODD_CLASSES.items()):
        (data / name).mkdir(parents=True)
        for number in range(10):
            solid_image(colour, 40, seed=index * 100 + number).save(data / name / f"{number}.jpg")
    models = tmp_path_factory.mktemp("models")
    result = run_cli("fit", data, "--models-dir", models, *FAST_FIT, "--epochs", "3")
    assert result.exit_code == 0, result.output
    run = models / "odd names"
    assert f"Report: {run / 'report' / 'index.html'}" in result.output
    return run


def test_class_names_are_escaped_and_shown_as_they_are(odd_names_run):
    text = (odd_names_run / "report" / "index.html").read_text(encoding="utf-8")
    assert "a<b&c" not in text and "a&lt;b&amp;c" in text
    page = _assert_offline_and_whole(odd_names_run / "report" / "index.html")
    for name in ODD_CLASSES:
        assert name in page.sections["confusion"] and name in page.sections["per-class"]


def test_evaluate_writes_its_own_report_page(odd_names_run):
    result = run_cli("evaluate", odd_names_run, "--no-progress")
    assert result.exit_code == 0, result.output
    index = odd_names_run / "report" / "evaluate-test" / "index.html"
    assert f"Report: {index}" in result.output
    page = _assert_offline_and_whole(index)
    metrics = json.loads((index.parent / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.3f}" in page.sections["summary"]
    assert any(url == "../curves.png" for url in page.urls)  # the run's curves, beside the evaluate folder


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _rotated_photo(path: Path) -> None:
    """40 wide x 20 tall as stored, tagged "rotate 90": upright it is 20 wide and 40 tall."""
    image = Image.fromarray(np.full((20, 40, 3), 128, np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif)


def test_report_shows_the_parts_other_steps_write(run_copy, tmp_path):
    """The files of the evidence contract (intervals, calibration, worst errors, label issues)
    rendered from a run that has them, whichever code wrote them."""
    report = run_copy / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    metrics.update(accuracy_ci95=[0.812, 0.975], macro_f1_ci95=[0.70, 0.95],
                   calibration={"temperature": 1.734, "bins": 15, "ece": 0.0213, "ece_uncalibrated": 0.0871})
    (report / "metrics.json").write_text(json.dumps(metrics))
    shutil.copy(report / "curves.png", report / "reliability.png")
    shutil.copy(report / "curves.png", report / "augmentation.png")  # what fit --preview-augment writes
    (report / "errors").mkdir()
    for name in ("01-thumb.jpg", "01-gradcam.jpg"):
        solid_image((90, 90, 90), 32).save(report / "errors" / name)
    _write_csv(report / "worst_errors.csv", [{
        "path": "/data/<script>alert(1)</script>.jpg", "true": "rain", "predicted": "cloudy", "probability": 0.93,
        "thumbnail": "errors/01-thumb.jpg", "gradcam": "errors/01-gradcam.jpg"}])
    rotated = tmp_path / "rotated.jpg"
    _rotated_photo(rotated)
    images = sorted(Path(Run.open(run_copy).data_dir).glob("rain/rain*.jpg"))
    suspects = [rotated, tmp_path / "gone.jpg", *images * 3]
    _write_csv(run_copy / "label_issues.csv", [
        {"path": str(path), "given": "rain", "suggested": "sunrise", "score": 0.01 * number}
        for number, path in enumerate(suspects[: MAX_LABEL_ISSUES + 6])])

    run = Run.open(run_copy)
    write_html_report(report, run.files, run.metadata, title="contract")

    page = _assert_offline_and_whole(report / "index.html")
    assert "95% CI 0.81–0.97" in page.sections["summary"] and "95% CI 0.70–0.95" in page.sections["summary"]
    calibration = page.sections["calibration"]
    assert "1.734" in calibration and "0.087" in calibration and "0.021" in calibration
    assert "reliability.png" in page.urls and "augmentation.png" in page.urls
    assert "errors/01-thumb.jpg" in page.urls and "errors/01-gradcam.jpg" in page.urls
    assert "<script>alert(1)</script>.jpg" in page.sections["errors"] and page.scripts == 0
    assert "0.930" in page.sections["errors"]
    thumbnails = [url for url in page.urls if url.startswith("thumbs/")]
    assert len(thumbnails) == MAX_LABEL_ISSUES - 1  # one of the suspects is gone: "image not found"
    assert "image not found" in page.sections["labels"] and f"{MAX_LABEL_ISSUES + 6} images flagged" in page.sections["labels"]
    assert Image.open(report / thumbnails[0]).size[0] < Image.open(report / thumbnails[0]).size[1]  # EXIF applied
    for section in ("calibration", "errors", "labels"):
        assert NOT_AVAILABLE not in page.sections[section].lower()


def test_missing_parts_are_not_available_rather_than_errors(run_copy):
    report = run_copy / "report"
    for missing in ("worst_errors.csv", "reliability.png", "curves.png"):
        (report / missing).unlink(missing_ok=True)
    (run_copy / "label_issues.csv").unlink(missing_ok=True)
    (run_copy / "data_check.json").unlink()
    (run_copy / "data_check.txt").unlink()
    metrics = json.loads((report / "metrics.json").read_text())
    metrics.pop("calibration", None)
    (report / "metrics.json").write_text(json.dumps(metrics))

    run = Run.open(run_copy)
    write_html_report(report, run.files, run.metadata, title="bare")

    page = _assert_offline_and_whole(report / "index.html")
    for section in ("calibration", "errors", "labels", "data"):
        assert NOT_AVAILABLE in page.sections[section].lower(), section
    assert "no curves.png" in page.sections["curves"].lower()
