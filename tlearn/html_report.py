"""report/index.html: every piece of a run's evidence on one page that opens offline.

The page reads the report folder's own files (metrics.json, the PNGs, worst_errors.csv) and
the run's (data_check.json, label_issues.csv) plus the run's metadata, and shows whatever of
them exists: a part that is missing is "not available for this run", never an error.

Pictures are referenced by relative paths to files inside the report folder rather than
embedded as data URIs: the page stays small and quick to open, the PNGs stay ordinary files
beside it, and the folder keeps working wherever it is moved (finetune moves the previous
report to stages/<stage>/report/). No external URL, script, font or stylesheet is used.
"""

from __future__ import annotations

import csv
import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from .atomic import write_text_atomically
from .data.images import UnreadableImage, decode_rgb
from .metadata import RunMetadata, StageRecord
from .run import RunFiles

INDEX = "index.html"
THUMBS = "thumbs"  # report/thumbs/: the label-issue thumbnails this page shows
MAX_LABEL_ISSUES = 24  # the most suspect; the CSV has them all
THUMB_PIXELS = 192  # longest side of a thumbnail: sharp at the 96-px display size on high-DPI screens
NOT_AVAILABLE = "not available for this run"


@dataclass
class _Section:
    anchor: str
    title: str
    body: str
    hint: str = ""  # one line: what the section tells the reader


def write_html_report(report_dir: Path, run_files: RunFiles, metadata: RunMetadata, *, title: str,
                      evaluated: str | None = None) -> Path:
    """Write `report_dir/index.html` (and its thumbnails in `report_dir/thumbs/`); returns its path.

    `run_files` locate the run-level files (data_check.json, label_issues.csv: the staging
    folder while fit writes a new run, the run itself for finetune and evaluate); `metadata`
    is the run's, with the stage being written last. `evaluated` names the data an evaluate
    report is about (None: the stage's own test split).
    """
    report_dir = Path(report_dir)
    metrics = _read_json(report_dir / "metrics.json") or {}
    class_names = metadata.model.class_names
    sections = [
        _summary(metrics, metadata, evaluated, report_dir),
        _confusion_section(metrics, class_names, report_dir),
        _per_class_section(metrics, class_names),
        _curves_section(metadata.stages, report_dir),
        _calibration_section(metrics, report_dir),
        _errors_section(report_dir, Path(metadata.data_dir)),
        _label_issues_section(run_files.label_issues, Path(metadata.data_dir), report_dir),
        _data_check_section(run_files, metadata),
        _settings_section(metadata),
    ]
    page = _page(title, sections)
    write_text_atomically(report_dir / INDEX, page)
    return report_dir / INDEX


# ---- sections ---------------------------------------------------------------------------

def _summary(metrics: dict, metadata: RunMetadata, evaluated: str | None, report_dir: Path) -> _Section:
    stage = metadata.stages[-1]
    cards = [
        _card("accuracy", _number(metrics.get("accuracy")), _interval(metrics.get("accuracy_ci95"))),
        _card("macro-F1", _number(metrics.get("macro_avg", {}).get("f1-score")),
              _interval(metrics.get("macro_f1_ci95"))),
        _card("images", _e(metrics.get("images", "?")), "the test split" if evaluated in (None, "test") else _e(evaluated)),
        _card("classes", str(len(metadata.model.class_names)), ""),
    ]
    facts = {
        "classes": ", ".join(metadata.model.class_names),
        "model": f"{stage.name} (stage {len(metadata.stages)} of {len(metadata.stages)})",
        "evaluated on": "the run's test split" if evaluated in (None, "test") else evaluated,
        "data folder" if evaluated in (None, "test") else "the run's data folder": metadata.data_dir,
        "run created": metadata.created or "unknown",
        "report written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),  # as tlearn.json writes "created"
    }
    files = " · ".join(filter(None, (_link_if_exists(report_dir, name, name) for name in _DATA_FILES)))
    body = (f'<div class="cards">{"".join(cards)}</div>{_facts_table(facts)}'
            + (f'<p class="note">The numbers as files: {files}</p>' if files else ""))
    return _Section("summary", "Summary", body,
                    "Intervals are 95%: with few test images a model's true accuracy can lie well away from the point value.")


_DATA_FILES = ("metrics.json", "classification_report.txt", "history.csv", "predictions.csv", "confidently_wrong.csv")


def _confusion_section(metrics: dict, class_names: list[str], report_dir: Path) -> _Section:
    matrix = metrics.get("confusion_matrix")
    if not matrix:
        return _Section("confusion", "Confusion matrix", _na())
    head = "".join(f'<th class="pred" scope="col">{_e(name)}</th>' for name in class_names)
    rows = []
    for true_index, (name, row) in enumerate(zip(class_names, matrix)):
        total = sum(row)
        cells = "".join(_matrix_cell(count, total, column == true_index) for column, count in enumerate(row))
        rows.append(f'<tr><th scope="row">{_e(name)}</th>{cells}<td class="total">{total}</td></tr>')
    table = (f'<table class="matrix"><thead><tr><th class="corner">true \\ predicted</th>{head}'
             f'<th class="total">images</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    picture = _link_if_exists(report_dir, "confusion_matrix.png", "as a picture")
    body = f'<div class="scroll">{table}</div><p class="note">Each cell: images, and the share of its true class (row). {picture}</p>'
    return _Section("confusion", "Confusion matrix", body,
                    "Rows are true classes: off-diagonal cells show which classes the model mixes up, and how often.")


def _matrix_cell(count: int, row_total: int, diagonal: bool) -> str:
    share = count / row_total if row_total else 0.0
    hue = "9, 105, 218" if diagonal else "207, 34, 46"  # blue for right, red for wrong
    strength = share if diagonal or not count else min(1.0, 0.12 + 3 * share)  # errors are rarer: show even one
    colour = "#fff" if strength > 0.55 else "inherit"
    css = ' class="zero"' if not count else ""
    return (f'<td{css} style="background: rgba({hue}, {0.85 * strength:.2f}); color: {colour}">'
            f'<span class="count">{count}</span><span class="share">{share:.0%}</span></td>')


def _per_class_section(metrics: dict, class_names: list[str]) -> _Section:
    per_class = metrics.get("per_class")
    if not per_class:
        return _Section("per-class", "Per-class precision, recall and F1", _na())
    rows = [_score_row(_e(name), per_class[name]) for name in class_names if name in per_class]
    if "macro_avg" in metrics:
        rows.append(_score_row("macro average", {**metrics["macro_avg"], "support": metrics.get("images", "")},
                               css="average"))
    table = ('<table class="scores"><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>'
             f'<th>support</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return _Section("per-class", "Per-class precision, recall and F1", f'<div class="scroll">{table}</div>',
                    "Low recall: the class's images get other labels. Low precision: other images get this label. "
                    "Support is how many test images the class has: few means an unsteady score.")


def _score_row(label: str, scores: dict, css: str = "") -> str:
    cells = "".join(_bar_cell(scores.get(key)) for key in ("precision", "recall", "f1-score"))
    support = scores.get("support", "")
    support = int(support) if isinstance(support, (int, float)) else support
    return f'<tr class="{css}"><th scope="row">{label}</th>{cells}<td>{_e(support)}</td></tr>'


def _bar_cell(value) -> str:
    if not isinstance(value, (int, float)):
        return "<td>–</td>"
    return f'<td class="bar"><span style="width: {100 * value:.0f}%"></span><b>{value:.3f}</b></td>'


def _curves_section(stages: list[StageRecord], report_dir: Path) -> _Section:
    picture = _image_if_exists(report_dir, "curves.png", "loss and accuracy per epoch") or _image_if_exists(
        report_dir, "../curves.png", "loss and accuracy per epoch")  # an evaluate report sits inside report/
    rows = "".join(_stage_row(stage) for stage in stages)
    table = ('<table class="stages"><thead><tr><th>stage</th><th>epochs run</th><th>kept epoch</th>'
             '<th>validation loss</th><th>validation accuracy</th><th>test accuracy</th><th>test macro-F1</th>'
             f'<th>time</th></tr></thead><tbody>{rows}</tbody></table>')
    augmented = _image_if_exists(report_dir, "augmentation.png", "training images beside augmented views of them")
    body = ((picture or _na("no curves.png in this report")) + f'<div class="scroll">{table}</div>'
            + (f"<details><summary>Augmented views (--preview-augment)</summary>{augmented}</details>" if augmented else ""))
    return _Section("curves", "Training curves", body,
                    "Validation loss rising while training loss falls is overfitting: the star marks the epoch "
                    "each stage kept. Curves still falling at the end: more epochs may help.")


def _stage_row(stage: StageRecord) -> str:
    best = stage.best_epoch - 1 if stage.best_epoch >= 1 else None  # best_epoch counts from 1

    def at_best(key: str) -> str:
        values = stage.history.get(key) or []
        return _number(values[best]) if best is not None and best < len(values) else "–"

    return (f'<tr><th scope="row">{_e(stage.name)}</th><td>{stage.epochs_run}</td><td>{stage.best_epoch}</td>'
            f'<td>{at_best("val_loss")}</td><td>{at_best("val_accuracy")}</td><td>{_number(stage.test_accuracy)}</td>'
            f'<td>{_number(stage.test_macro_f1)}</td><td>{stage.wall_seconds:.0f} s</td></tr>')


def _calibration_section(metrics: dict, report_dir: Path) -> _Section:
    calibration = metrics.get("calibration")
    picture = _image_if_exists(report_dir, "reliability.png", "reliability diagram before and after temperature scaling")
    if not calibration and not picture:
        return _Section("calibration", "Calibration", _na())
    facts = {}
    if isinstance(calibration, dict):
        facts = {
            "temperature": _number(calibration.get("temperature"), 3)
            + (f' <span class="note">({_e(calibration["temperature_reason"])})</span>'
               if calibration.get("temperature_reason") else ""),
            "ECE before scaling": _number(calibration.get("ece_uncalibrated"), 3),
            "ECE after scaling (served)": _number(calibration.get("ece"), 3),
            "bins": _e(calibration.get("bins", "–")),
        }
    body = _facts_table(facts, escape=False) + (picture or "")
    return _Section("calibration", "Calibration", body,
                    "Expected calibration error: how far the stated probabilities are from how often the model "
                    "is right. Near 0 means a probability of 0.9 is right about 9 times in 10.")


def _errors_section(report_dir: Path, data_dir: Path) -> _Section:
    rows = _read_csv(report_dir / "worst_errors.csv")
    links = " ".join(filter(None, (_link_if_exists(report_dir, name, name)
                                   for name in ("predictions.csv", "confidently_wrong.csv"))))
    more = f'<p class="note">All of them: {links}</p>' if links else ""
    if rows is None:
        return _Section("errors", "Worst errors", _na() + more)
    if not rows:
        return _Section("errors", "Worst errors", '<p>No test image is wrongly classified.</p>' + more)
    figures = "".join(_error_figure(number, row, report_dir, data_dir) for number, row in enumerate(rows, 1))
    return _Section("errors", "Worst errors", f'<div class="gallery">{figures}</div>{more}',
                    "The test images the model is most confidently wrong about. Grad-CAM shows where it looked: "
                    "on the background or a watermark rather than the subject, the model learned a shortcut; "
                    "a picture that is really of the predicted class is a label error.")


def _error_figure(number: int, row: dict, report_dir: Path, data_dir: Path) -> str:
    pictures = "".join(
        f'<div>{_image_if_exists(report_dir, row.get(key, ""), alt, css="thumb") or _missing_picture(alt)}'
        f'<span class="under">{alt}</span></div>' for key, alt in (("thumbnail", "image"), ("gradcam", "Grad-CAM"))
    )
    return (f'<figure class="error"><div class="pair">{pictures}</div><figcaption>'
            f'<b>{number}.</b> true <b>{_e(row.get("true", "?"))}</b> → predicted <b>{_e(row.get("predicted", "?"))}</b>'
            f' <span class="prob">p = {_number(_float(row.get("probability")))}</span>'
            f'{_path(row.get("path", ""), data_dir)}</figcaption></figure>')


def _label_issues_section(csv_path: Path, data_dir: Path, report_dir: Path) -> _Section:
    title = "Suspected label errors"
    rows = _read_csv(csv_path)
    if rows is None:
        return _Section("labels", title, _na())
    if not rows:
        return _Section("labels", title, "<p>No image of the data looks mislabelled.</p>")
    shown = rows[:MAX_LABEL_ISSUES]
    figures = "".join(_label_figure(number, row, data_dir, report_dir) for number, row in enumerate(shown, 1))
    count = (f'<p class="note">{len(rows)} images flagged; the {len(shown)} most suspect are shown. '
             f'All of them: {csv_path.name} in the run folder.</p>')
    return _Section("labels", title, f'{count}<div class="gallery labels">{figures}</div>',
                    "Images of the data whose label disagrees with what the other images say, most suspect first "
                    "(lower score = more suspect). Look at each: move a wrong one to its right class folder, "
                    "or delete it, and fit again.")


def _label_figure(number: int, row: dict, data_dir: Path, report_dir: Path) -> str:
    source = Path(row.get("path", ""))
    thumbnail = _write_thumbnail(source if source.is_absolute() else data_dir / source,
                                 report_dir / THUMBS / f"label-{number:02d}.jpg")
    picture = (f'<img class="thumb" src="{THUMBS}/{thumbnail.name}" alt="{_e(source.name)}">' if thumbnail
               else _missing_picture("image not found"))
    return (f'<figure class="label">{picture}<figcaption><b>{number}.</b> labelled <b>{_e(row.get("given", "?"))}</b>'
            f', looks like <b>{_e(row.get("suggested", "?"))}</b> <span class="prob">score '
            f'{_number(_float(row.get("score")))}</span>{_path(row.get("path", ""), data_dir)}'
            '</figcaption></figure>')


def _write_thumbnail(source: Path, target: Path) -> Path | None:
    """A small JPEG of `source`, decoded the way tlearn decodes (EXIF rotation, any mode); None if unreadable."""
    try:
        image = Image.fromarray(decode_rgb(source))
    except (UnreadableImage, OSError, ValueError):
        return None
    image.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, "JPEG", quality=85)
    return target


def _data_check_section(run_files: RunFiles, metadata: RunMetadata) -> _Section:
    check = _read_json(run_files.data_check_json)
    text = _read_text(run_files.data_check_text)
    skipped = metadata.skipped
    if check is None and text is None:
        return _Section("data", "Data check", _na())
    parts = []
    if check is not None:
        facts = {"images": check.get("images", "?"), "imbalance (largest / smallest class)": check.get("imbalance", "?"),
                 "images per class": ", ".join(f"{name} {count}" for name, count in check.get("classes", {}).items())}
        parts.append(_facts_table(facts))
        found = [(title, len(check.get(key) or [])) for key, title in _FINDINGS.items() if check.get(key)]
        parts.append('<ul class="findings">' + "".join(f"<li><b>{count}</b> {_e(title)}</li>" for title, count in found)
                     + "</ul>" if found else '<p class="ok">Nothing needs attention.</p>')
    if skipped:
        items = "".join(f'<li>{_path(item.get("path", ""), Path(metadata.data_dir))}: {_e(item.get("reason", ""))}</li>'
                        for item in skipped)
        parts.append(f"<details><summary>{len(skipped)} files skipped by training</summary><ul>{items}</ul></details>")
    if text is not None:
        parts.append(f"<details><summary>Full data check</summary><pre>{_e(text)}</pre></details>")
    return _Section("data", "Data check", "".join(parts),
                    "What tlearn check found in the data folder when the run was fitted: "
                    "duplicates across classes and leakage between given subsets make the test scores unreliable.")


# data_check.json's lists, in the words `tlearn check` uses
_FINDINGS = {
    "duplicates_across_classes": "groups of the same image under two classes (left out by fit)",
    "leakage": "groups of the same picture in two given subsets (leakage)",
    "unreadable": "files that cannot be used (skipped)",
    "small_classes": "classes with few images",
    "missing_from_subsets": "classes missing from a given subset",
    "subset_like_classes": "class folders named like subset folders",
    "duplicates_within_class": "groups of exact duplicates within a class (kept in one subset)",
    "near_duplicates": "groups of near-duplicates (kept in one subset)",
    "wrong_extension": "files whose content does not match the extension",
    "converted": "images converted to RGB when loaded",
    "tiny": "tiny images",
    "extreme_aspect": "images of extreme aspect ratio",
    "very_large": "very large images",
}


def _settings_section(metadata: RunMetadata) -> _Section:
    model = metadata.model
    general = {
        "tlearn": metadata.tlearn_version or "unknown", "weights": model.weights, "preprocess": model.preprocess,
        "image size": model.image_size, "head": f"{model.dense_units} units, dropout {model.dropout}, L2 {model.head_l2:g}",
        "views per image": metadata.views, "augment": metadata.augment,
        "split": f"seed {metadata.split.seed}, validation {metadata.split.val_split}, test {metadata.split.test_split}; "
                 + ", ".join(f"{name} {size}" for name, size in metadata.split.sizes.items()),
        "duplicate groups kept together": metadata.split.duplicate_groups,
    }
    versions = _facts_table(metadata.versions) if metadata.versions else _na()
    body = (f'<div class="columns"><div><h3>Run</h3>{_facts_table(general)}</div>'
            f'<div><h3>Versions</h3>{versions}</div></div><h3>Stages</h3>{_stage_settings(metadata.stages)}')
    return _Section("settings", "Settings and versions", body, "Everything needed to train this run again.")


def _stage_settings(stages: list[StageRecord]) -> str:
    """One column per stage, one row per setting any stage has ("–" where a stage has not)."""
    columns = [{**stage.settings, "precision policy": stage.precision_policy,
                **{f"distribution: {key}": value for key, value in stage.distribution.items()},
                "artifacts in": stage.artifacts} for stage in stages]
    keys = list(dict.fromkeys(key for column in columns for key in column))
    head = "".join(f'<th scope="col">{_e(stage.name)}</th>' for stage in stages)
    rows = "".join(f'<tr><th scope="row">{_e(key)}</th>'
                   + "".join(f"<td>{_e(column.get(key, '–'))}</td>" for column in columns) + "</tr>" for key in keys)
    return f'<div class="scroll"><table class="facts stages-settings"><thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


# ---- page and pieces --------------------------------------------------------------------

def _page(title: str, sections: list[_Section]) -> str:
    nav = "".join(f'<a href="#{section.anchor}">{_e(section.title)}</a>' for section in sections)
    body = "".join(
        f'<section id="{section.anchor}"><h2>{_e(section.title)}</h2>'
        + (f'<p class="hint">{_e(section.hint)}</p>' if section.hint else "") + f"{section.body}</section>"
        for section in sections
    )
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><style>{_CSS}</style></head><body>'
            f'<header><div class="wrap"><p class="brand">tlearn report</p><h1>{_e(title)}</h1>'
            f'<nav>{nav}</nav></div></header><main class="wrap">{body}</main></body></html>\n')


def _card(label: str, value: str, note: str) -> str:
    return f'<div class="card"><div class="label">{label}</div><div class="value">{value}</div><div class="note">{note}</div></div>'


def _facts_table(facts: dict, escape: bool = True) -> str:
    rows = "".join(f'<tr><th scope="row">{_e(key)}</th><td>{_e(value) if escape else value}</td></tr>'
                   for key, value in facts.items())
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


def _image_if_exists(report_dir: Path, relative: str, alt: str, css: str = "figure") -> str | None:
    """An <img> of a file in (or, for "../", beside) the report folder; None if it is not there."""
    if not relative or Path(relative).is_absolute() or not (report_dir / relative).is_file():
        return None
    return f'<img class="{css}" src="{_e(quote(relative))}" alt="{_e(alt)}" loading="lazy">'


def _link_if_exists(report_dir: Path, relative: str, text: str) -> str:
    return f'<a href="{_e(quote(relative))}">{_e(text)}</a>' if (report_dir / relative).is_file() else ""


def _path(path: str, data_dir: Path) -> str:
    """`path` as the reader knows it: relative to the data folder where it lies there; in full on hover."""
    try:
        shown = Path(path).relative_to(data_dir).as_posix()
    except ValueError:
        shown = path
    return f'<span class="path" title="{_e(path)}">{_e(shown)}</span>'


def _missing_picture(text: str) -> str:
    return f'<div class="thumb missing">{_e(text)}</div>'


def _na(text: str = NOT_AVAILABLE) -> str:
    return f'<p class="na">{_e(text[:1].upper() + text[1:])}.</p>'


def _interval(bounds) -> str:
    if isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds):
        return f"95% CI {bounds[0]:.2f}–{bounds[1]:.2f}"
    return "no interval recorded"


def _number(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _float(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None


def _read_csv(path: Path) -> list[dict] | None:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, ValueError, csv.Error):
        return None


_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --bg: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Helvetica Neue", Arial, sans-serif; }
.wrap { max-width: 1120px; margin: 0 auto; padding: 0 24px; }
header { background: #fff; border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 1; }
header .wrap { padding-top: 12px; }
header .brand { margin: 0; color: var(--muted); font-size: 12px; letter-spacing: .08em; text-transform: uppercase; }
h1 { margin: 0 0 6px; font-size: 22px; overflow-wrap: anywhere; }
nav { display: flex; flex-wrap: wrap; gap: 2px 16px; padding-bottom: 10px; font-size: 13px; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 18px 22px; margin: 18px 0;
  scroll-margin-top: 110px; }
h2 { margin: 0 0 4px; font-size: 18px; }
h3 { margin: 16px 0 6px; font-size: 15px; }
h4 { margin: 10px 0 4px; font-size: 14px; }
.hint { margin: 0 0 14px; color: var(--muted); font-size: 13.5px; }
.na { color: var(--muted); font-style: italic; }
.note { color: var(--muted); font-size: 13px; }
.ok { color: #1a7f37; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; margin-bottom: 14px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; }
.card .label { color: var(--muted); font-size: 13px; }
.card .value { font-size: 28px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .note { min-height: 1.2em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th { font-weight: 600; }
thead th { color: var(--muted); font-size: 13px; font-weight: 600; border-bottom: 2px solid var(--line); }
tbody th, .facts th, thead th:first-child { text-align: left; overflow-wrap: anywhere; }
.facts th { color: var(--muted); font-weight: 500; padding-left: 0; }
.facts td { text-align: left; overflow-wrap: anywhere; }
.stages-settings td, .stages-settings thead th { min-width: 130px; }
.scroll { overflow-x: auto; }
.stages td, .scores td { white-space: nowrap; }
.matrix td { min-width: 76px; text-align: center; border: 1px solid #fff; }
.matrix .count { display: block; font-size: 16px; font-weight: 600; }
.matrix .share { display: block; font-size: 12px; opacity: .85; }
.matrix .pred { text-align: center; }
.matrix tbody th, .matrix td { vertical-align: middle; }
.matrix td.zero { color: #8c959f; }
a { color: var(--accent); }
.matrix .total { color: var(--muted); }
.matrix .corner { text-align: left; font-weight: 500; }
.scores td.bar { position: relative; min-width: 120px; }
.scores td.bar span { position: absolute; left: 0; top: 6px; bottom: 6px; background: rgba(9, 105, 218, .16); }
.scores td.bar b { position: relative; font-weight: 500; }
.scores tr.average th, .scores tr.average td { border-top: 2px solid var(--line); font-style: italic; }
img.figure { display: block; max-width: 100%; height: auto; margin: 6px 0 12px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 14px; }
.gallery.labels { grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }
.pair .under { display: block; text-align: center; color: var(--muted); font-size: 11px; }
img.thumb, .thumb.missing { display: block; width: 100%; aspect-ratio: 1; object-fit: contain; background: #eef1f4;
  border-radius: 4px; }
.thumb.missing { display: flex; align-items: center; justify-content: center; color: var(--muted); font-size: 12px; }
figcaption { font-size: 13px; margin-top: 6px; overflow-wrap: anywhere; }
figcaption .prob { color: var(--muted); white-space: nowrap; }
.path { display: block; color: var(--muted); font-size: 11.5px; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
ul.findings { margin: 8px 0; padding-left: 20px; }
details li .path { display: inline; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
pre { background: var(--bg); padding: 10px; border-radius: 6px; overflow-x: auto; font-size: 12.5px; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 0 28px; }
@media print {
  body { background: #fff; font-size: 12px; }
  header { position: static; }
  nav { display: none; }
  section { border: none; padding: 0; margin: 18px 0; }
  figure, tr, img { break-inside: avoid; }
  h2, h3, h4, .hint { break-after: avoid; }
  .gallery { grid-template-columns: repeat(4, 1fr); }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""
