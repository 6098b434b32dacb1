"""Every command explains itself, and bad input exits non-zero with one clear line."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from ideogram_pipeline.cli import main

COMMANDS = sorted(main.commands)


def test_the_contract_commands_exist() -> None:
    assert {"run", "query", "simulator", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name: str) -> None:
    command = main.commands[name]
    assert command.help and len(command.help.strip()) > 20, f"{name} lacks a real help text"
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts[0]} has no help"


def test_help_does_not_import_dagster() -> None:
    code = (
        "import sys; from ideogram_pipeline.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'dagster' not in sys.modules, 'dagster imported by --help'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "does-not-exist.csv"], "does not exist"),
        (["query"], "Missing argument"),
        (["query", "SELECT 1", "--format", "xml"], "xml"),
    ],
)
def test_bad_input_exits_non_zero(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and needle in result.output


def test_bad_settings_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEOGRAM_MAX_INFLIGHT", "lots")
    result = CliRunner().invoke(main, ["query", "SELECT 1"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: IDEOGRAM_MAX_INFLIGHT must be a whole number, got 'lots'"
    )
