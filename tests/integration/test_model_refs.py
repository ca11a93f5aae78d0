"""Model references against a real MLflow registry: a name the platform has never heard of
(`whisper-1`, what OpenAI clients send) is an unknown model, and only a registered model that
lacks the alias is told about the alias."""

from __future__ import annotations

import uuid

import pytest

from services.core.modelref import ModelNotFound, check
from services.core.registry import Registry
from services.core.settings import Settings

pytestmark = pytest.mark.integration


def test_unknown_names_and_missing_aliases_say_which(mlflow_uri, tmp_path) -> None:
    settings = Settings(home=tmp_path, mlflow_uri=mlflow_uri)
    with pytest.raises(ModelNotFound) as caught:
        check("whisper-1", settings)
    assert str(caught.value).startswith("unknown model 'whisper-1': not a model of this platform")
    assert "alias" not in str(caught.value)
    name = f"moss-audio-refs-{uuid.uuid4().hex[:6]}"
    Registry(mlflow_uri).client.create_registered_model(name)  # registered, no version yet
    with pytest.raises(ModelNotFound, match=f"no version of '{name}' holds alias 'staging'"):
        check(f"{name}@staging", settings)
    with pytest.raises(ModelNotFound, match="holds alias 'production'"):
        check(name, settings)  # a bare name means @production
