"""docs/configuration.md and `Settings` describe the same variables with the same defaults."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr

from services.core.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
# Read outside Settings on purpose: the model library's own cache (it imports nothing of ours)
# and the test suite's switches.
NOT_SETTINGS = {"MOSS_CACHE_DIR", "MOSS_TEST_DATABASE_URL"}


def documented() -> dict[str, str]:
    """`MOSS_X` -> the default column, for every table row of the page."""
    rows: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`MOSS_"):
            continue
        for name in re.findall(r"`(MOSS_[A-Z0-9_]+)`", cells[0]):
            rows.setdefault(name, cells[1] if len(cells) > 2 else "")
    return rows


def env_names() -> dict[str, object]:
    prefix = Settings.model_config["env_prefix"]
    return {f"{prefix}{name}".upper(): f.default for name, f in Settings.model_fields.items()}


def test_every_setting_is_documented_and_every_documented_variable_exists() -> None:
    docs, fields = documented(), env_names()
    missing = sorted(set(fields) - set(docs))
    assert not missing, f"docs/configuration.md lacks {missing}"
    unknown = sorted(set(docs) - set(fields) - NOT_SETTINGS)
    assert not unknown, f"docs/configuration.md documents {unknown}, which Settings does not read"


def test_documented_defaults_match_the_code() -> None:
    docs = documented()
    for name, default in env_names().items():
        cell = docs[name]
        if default is None or isinstance(default, SecretStr | Path) or "," in cell:
            continue  # "unset" and derived defaults are prose; a shared row lists several
        shown = cell.strip("`")
        if isinstance(default, bool):
            assert shown == str(default).lower(), name
        elif isinstance(default, int | float):
            assert float(shown) == float(default), f"{name}: doc {shown}, code {default}"
        elif isinstance(default, str) and default:
            assert shown == default, f"{name}: doc {shown!r}, code {default!r}"
