"""`mossctl submit` and `mossctl jobs get` on the real stack (issue 11: `jobs get` raised a
TypeError on a segment without a time and printed an empty line for an annotation job): a
failed, a cancelled and a timestamped job are made, then `jobs get` shows every job the stack
has, whatever its shape, exits 0 and shows what the job holds. An annotation job is made with
`mossctl annotate` (a tone and a broken file: its result has datasets and a failed item)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from pipelines.data import SAMPLE_RATE, wav_bytes
from services.cli import app
from services.core.settings import get_settings
from tests.audio_files import encode, stereo_tone
from tests.result_shapes import NEVER_SHOWN, must_show

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture
def mossctl(stack, monkeypatch):
    """mossctl in this process, pointed at the stack (settings are read once per process)."""
    monkeypatch.setenv("MOSS_URL", stack.url)
    monkeypatch.setenv("MOSS_API_KEY", stack.api_key)
    get_settings.cache_clear()
    yield lambda *args: runner.invoke(app, list(args))
    get_settings.cache_clear()  # the next reader sees the environment as it is restored


def test_jobs_get_shows_every_job_of_the_stack(mossctl, api, tmp_path) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(encode(*stereo_tone(2.0, freq=550.0), 44_100, "wav"))
    # The test model's context is 8192 tokens: the prompt and 8192 new ones cannot fit.
    failed = mossctl("submit", str(path), "--max-new-tokens", "8192")
    assert failed.exit_code == 1, failed.output
    assert [line for line in failed.stderr.splitlines() if "failed" in line] == [
        line for line in failed.stderr.splitlines() if line.strip()
    ] and "[context_exceeded]" in failed.stderr
    long = api.post("/v1/jobs", files={"file": ("c.wav", path.read_bytes())},
                    data={"task": "caption", "max_new_tokens": "6000"}).json()  # fmt: skip
    assert api.delete(f"/v1/jobs/{long['id']}").json()["status"] == "cancelled"
    timed = mossctl("submit", str(path), "--task", "transcribe_timestamps")
    assert timed.exit_code == 0, timed.output
    assert "(no timestamp)" in timed.stdout  # the test model writes no time markers
    folder = tmp_path / "cli-shapes"
    folder.mkdir()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE)
    (folder / "tone.wav").write_bytes(wav_bytes(tone))
    (folder / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt truncated")
    annotated = mossctl("annotate", str(folder), "--out", str(tmp_path / "out"))
    assert annotated.exit_code == 1, annotated.output  # one item failed
    assert "annotated 1 of 2 clips (1 failed)" in annotated.stdout
    assert "dataset cli-shapes-sft" in annotated.stdout and "broken.wav" in annotated.stderr

    jobs, offset = [], 0
    while page := api.get("/v1/jobs", params={"limit": 200, "offset": offset}).json()["jobs"]:
        jobs, offset = jobs + page, offset + len(page)
    assert {"failed", "cancelled", "succeeded"} <= {j["status"] for j in jobs}
    assert "annotate" in {j["task"] for j in jobs}
    for listed in jobs:
        job = api.get(f"/v1/jobs/{listed['id']}").json()
        shown = mossctl("jobs", "get", job["id"])
        assert shown.exit_code == 0, (job, shown.output)
        assert shown.stdout.strip() and not shown.exception, (job, shown.output)
        assert not [w for w in NEVER_SHOWN if w in shown.output], (job, shown.output)
        words = " ".join(shown.output.split())  # rich prints a tab in the model's text as spaces
        assert all(" ".join(text.split()) in words for text in must_show(job)), (job, shown.output)
