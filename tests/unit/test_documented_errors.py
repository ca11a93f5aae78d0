"""Answers docs/api.md documents, as the code gives them: the too-short limit in its message,
an unknown model named as such (not as a missing alias), and documentation pages that load
nothing from another origin."""

from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient

from services.core.errors import ApiError
from services.core.jobstore import Principal
from services.core.modelref import ModelNotFound, check
from services.core.settings import Settings
from services.gateway.app import create_app
from services.jobs.submit import submit_job
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import make_context


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    (home / "models" / "tiny").mkdir(parents=True)
    (home / "models" / "tiny" / "config.json").write_text("{}")  # a name to submit to
    return make_context(home)


def test_audio_too_short_says_how_long_it_was_and_the_limit(ctx) -> None:
    data = encode(*stereo_tone(0.05), 44_100, "wav")
    principal = Principal("k1", "acme", ("jobs",))
    with pytest.raises(ApiError) as caught:
        submit_job(ctx, principal, io.BytesIO(data), len(data), "caption", None, None, None, 0.0)
    assert caught.value.status == 422 and caught.value.code == "audio_too_short"
    assert caught.value.message == "the audio lasts 0.050 s; the minimum is 0.1 s"


def test_an_unknown_model_is_named_unknown_not_a_missing_alias(tmp_path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        check("whisper-1", Settings(home=tmp_path))
    assert str(caught.value).startswith("unknown model 'whisper-1': not a model of this platform")
    assert "GET /v1/models" in str(caught.value) and "alias" not in str(caught.value)


def test_the_docs_pages_load_nothing_from_a_cdn(ctx) -> None:
    app = create_app(ctx.settings, ctx, worker_queues=lambda: {"encode"}, run_sweeper=False)
    with TestClient(app) as client:
        for page in ("/docs", "/redoc"):
            for asset in re.findall(r'(?:src|href)="([^"]+)"', client.get(page).text):
                body = client.get(asset)
                assert body.status_code == 200, asset
                assert not re.search(rb"https?://cdn\.", body.content), asset  # the ReDoc logo
        redoc = client.get("/docs-assets/redoc.standalone.js")
        assert redoc.headers["content-type"].startswith("text/javascript")
        assert b"Redocly" in redoc.content  # still the whole bundle, less one address
