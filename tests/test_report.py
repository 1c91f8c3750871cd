"""Report pictures: class names in any script are drawn, and never with a warning per glyph."""

import shutil
import warnings

import pytest

from conftest import FAST_FIT, make_class_folders, run_cli
from tlearn.report import _fonts_with_glyphs, _glyphs, plot_confusion_matrix

KOREAN = ["맑음", "비", "일출"]


def test_a_fit_on_korean_class_names_writes_its_report_without_glyph_warnings(tmp_path, recwarn):
    data = make_class_folders(tmp_path / "날씨", per_class=4)
    for folder, name in zip(sorted(p for p in data.iterdir()), KOREAN):
        shutil.move(folder, data / name)
    result = run_cli("fit", data, "--out", tmp_path / "run", *FAST_FIT, "--epochs", "1",
                     "--val-split", "0.25", "--test-split", "0.25")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "report" / "confusion_matrix.png").is_file()
    assert "Glyph" not in result.output
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


def test_glyphs_the_default_font_lacks_come_from_an_installed_font_that_has_them(tmp_path):
    # Matplotlib ships STIX fonts, which have these symbols; its default font does not.
    names = ["⌚ watch", "⌭ cylinder"]
    assert _fonts_with_glyphs(frozenset("".join(names))) == ("STIXGeneral",)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_confusion_matrix([[3, 1], [0, 4]], names, tmp_path / "matrix.png", "symbols")
    assert not caught


def test_korean_is_drawn_with_a_korean_font_where_one_is_installed():
    fonts = _fonts_with_glyphs(frozenset("".join(KOREAN)))
    if not fonts:
        pytest.skip("no installed font has Hangul (e.g. apt-get install fonts-noto-cjk)")
    from matplotlib import font_manager

    files = [entry.fname for entry in font_manager.fontManager.ttflist if entry.name in fonts]
    assert set("".join(KOREAN)) <= set().union(*(_glyphs(f) for f in files))
