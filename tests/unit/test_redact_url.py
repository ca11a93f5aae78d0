"""services.core.logs.redact_url: credentials in a configured URL never reach a message."""

from __future__ import annotations

import pytest

from services.core.logs import redact_url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:pw@mlflow:5000", "http://***@mlflow:5000"),
        ("https://token@kfp.example/pipeline", "https://***@kfp.example/pipeline"),
        ("http://u:p@ss@host:80/x", "http://***@host:80/x"),  # a raw @ in the password
        (
            "the registry at http://ops:s3cret@10.0.0.5:5000 does not answer: API request to "
            "http://ops:s3cret@10.0.0.5:5000/api/2.0/mlflow/experiments/search failed",
            "the registry at http://***@10.0.0.5:5000 does not answer: API request to "
            "http://***@10.0.0.5:5000/api/2.0/mlflow/experiments/search failed",
        ),
    ],
)
def test_userinfo_is_replaced(text: str, expected: str) -> None:
    assert redact_url(text) == expected
    assert "pw" not in redact_url(text) and "s3cret" not in redact_url(text)


@pytest.mark.parametrize(
    "text",
    [
        "http://mlflow:5000",
        "http://host/path/user@example.com",  # an @ in the path is no userinfo
        "http://host?mail=a@b.c",  # nor one in the query
        "mail ops@example.com about it",  # no URL at all
    ],
)
def test_text_without_userinfo_is_kept(text: str) -> None:
    assert redact_url(text) == text
