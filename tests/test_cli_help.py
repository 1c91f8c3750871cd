import pytest
from click.testing import CliRunner

from tlearn.cli import main


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_is_documented_with_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and f"tlearn {command}" in result.output


def test_commands():
    assert set(main.commands) == {"check", "fit", "finetune", "evaluate", "predict", "explain", "export"}


def test_help_does_not_load_tensorflow():
    import subprocess
    import sys

    code = "import sys; from tlearn.cli import main; assert 'tensorflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
