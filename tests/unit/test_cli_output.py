"""What mossctl prints: its help lists what the platform has, and its exit codes are the
documented ones (docs/datasets.md)."""

from __future__ import annotations

from typer.testing import CliRunner

from services.cli import app
from services.core.queue import PIPELINE_NAMES

runner = CliRunner()


def test_pipeline_help_lists_every_pipeline() -> None:
    for command in ("run", "submit"):
        result = runner.invoke(app, ["pipeline", command, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, result.output
        assert all(name in result.output for name in PIPELINE_NAMES), result.output
