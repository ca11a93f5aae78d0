"""What mossctl prints: every job shape docs/api.md documents, shown by `submit` and `jobs get`
without a crash or an empty value; its help lists what the platform has; its exit codes are the
documented ones (docs/datasets.md)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.cli.render import show_job
from services.core.queue import PIPELINE_NAMES
from tests.result_shapes import NEVER_SHOWN, all_shapes, check_shapes_documented, must_show

runner = CliRunner()


def test_pipeline_help_lists_every_pipeline() -> None:
    for command in ("run", "submit"):
        result = runner.invoke(app, ["pipeline", command, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, result.output
        assert all(name in result.output for name in PIPELINE_NAMES), result.output


SHAPES = all_shapes()


def test_the_docs_show_every_result_shape() -> None:
    check_shapes_documented()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_jobs_get_and_submit_show_every_result_shape(name, capsys) -> None:
    job = SHAPES[name]
    show_job(job)
    shown = capsys.readouterr()
    both = shown.out + shown.err
    assert shown.out.strip(), "nothing on stdout"
    for text in must_show(job):
        assert text in both, (text, both)
    assert not [word for word in NEVER_SHOWN if word in both], both
    result = job.get("result") or {}
    if job["status"] != "succeeded":
        assert job["status"] in shown.out
    elif not result:
        assert "purged" in shown.out
    if result.get("thinking"):  # apart from the answer: a pipe gets the answer alone
        assert result["thinking"] in shown.err and result["thinking"] not in shown.out
        assert result["text"] in shown.out
    for segment in result.get("segments") or []:
        line = next(x for x in shown.out.splitlines() if x.endswith(segment["text"])
                    or segment["text"] + "  (" in x)  # fmt: skip
        if segment["start"] is None:
            assert line.startswith("[") and "--" in line and "(no timestamp)" in line
        else:
            assert f"{segment['start']:.2f}" in line
    if job["task"] == "annotate" and job["status"] == "succeeded":
        assert result["sft"]["manifest"] in shown.out  # what a pipeline trains on
        assert all(f["message"] in shown.err for f in result["failures"])  # problems: stderr


def test_a_job_that_did_not_succeed_is_one_line_with_its_error(capsys) -> None:
    for status in ("failed", "cancelled"):
        job = next(j for j in SHAPES.values() if j["status"] == status)
        show_job(job)
        error = job["error"]
        assert capsys.readouterr().out == f"job {job['id']} {status}" + (
            f": {error['message']} [{error['code']}]\n" if error else "\n"
        )


def test_bad_manifest_lines_exit_1_in_validate_and_in_upload_strict(tmp_path) -> None:
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        '{"audio": "a.wav", "caption": "a tone"}\n{"audio": "a.wav", "captoin": "x"}\n'
    )
    checked = runner.invoke(app, ["datasets", "validate", str(manifest)])
    assert checked.exit_code == 1 and "captoin" in checked.stderr
    strict = runner.invoke(app, ["datasets", "upload", str(manifest), "--strict"])
    assert strict.exit_code == 1 and "nothing uploaded" in strict.stderr  # before any upload
    missing = runner.invoke(app, ["datasets", "validate", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2 and "no such manifest" in missing.stderr  # called wrong: 2
