import csv
import json
import shutil


from conftest import make_class_folders, run_cli, solid_image


def test_evaluate_reproduces_the_test_metrics(run_copy):
    result = run_cli("evaluate", run_copy, "--no-progress")
    assert result.exit_code == 0, result.output
    report = run_copy / "report" / "evaluate-test"
    evaluated = json.loads((report / "metrics.json").read_text())
    recorded = json.loads((run_copy / "report" / "metrics.json").read_text())
    assert evaluated["accuracy"] == recorded["accuracy"]
    assert evaluated["confusion_matrix"] == recorded["confusion_matrix"]
    assert f"accuracy {recorded['accuracy']:.4f}" in result.output
    for name in ("classification_report.txt", "confusion_matrix.png", "confidently_wrong.csv"):
        assert (report / name).is_file()


def test_evaluate_on_other_data_lists_confident_mistakes_and_ignored_classes(run_copy, tmp_path):
    data = make_class_folders(tmp_path / "new-photos", per_class=3)
    # a mislabelled picture: a rain image filed as cloudy
    shutil.copy(data / "rain" / "rain0.jpg", data / "cloudy" / "actually_rain.jpg")
    (data / "rain" / "rain0.jpg").unlink()
    (data / "snow").mkdir()
    solid_image((250, 250, 250), seed=99).save(data / "snow" / "snow0.jpg")
    result = run_cli("evaluate", run_copy, "--data", data, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "ignored folders of classes the model does not know: snow" in result.output
    assert "cloudy -> rain" in result.output and "actually_rain.jpg" in result.output
    rows = list(csv.DictReader(open(run_copy / "report" / "evaluate-new-photos" / "confidently_wrong.csv")))
    assert rows[0]["path"].endswith("actually_rain.jpg") and rows[0]["predicted"] == "rain"
    metrics = json.loads((run_copy / "report" / "evaluate-new-photos" / "metrics.json").read_text())
    assert metrics["images"] == 9


def test_evaluate_data_without_known_classes_is_a_clear_error(run_copy, tmp_path):
    (tmp_path / "data" / "snow").mkdir(parents=True)
    solid_image((250, 250, 250)).save(tmp_path / "data" / "snow" / "a.jpg")
    result = run_cli("evaluate", run_copy, "--data", tmp_path / "data", "--no-progress")
    assert result.exit_code == 2
    assert "none of the class folders" in result.output
