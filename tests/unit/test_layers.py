"""The layers hold at run time too: the gateway starts without torch, the core stays light."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "safetensors", "kserve", "tritonclient", "kfp", "pipelines")


def _loaded_after(code: str, tmp_path) -> set[str]:
    """Top-level packages in sys.modules after running `code` in a fresh interpreter."""
    report = "import json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    script = f"{code}\n{report}"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"MOSS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_gateway_app_starts_without_torch(tmp_path) -> None:
    loaded = _loaded_after(
        "from fastapi.testclient import TestClient\n"
        "from services.core.settings import Settings\n"
        "from services.gateway.app import create_app\n"
        f"app = create_app(Settings(home={str(tmp_path)!r}), run_sweeper=False)\n"
        "with TestClient(app) as client:\n"
        "    assert client.get('/healthz').status_code == 200\n"
        "    assert client.get('/v1/jobs').status_code == 401\n",
        tmp_path,
    )
    assert "services" in loaded and "fastapi" in loaded
    assert not loaded & set(HEAVY), f"the gateway loaded {sorted(loaded & set(HEAVY))}"


def test_the_core_and_the_cli_entry_stay_light(tmp_path) -> None:
    loaded = _loaded_after(
        "import services.core.jobstate, services.core.jobstore, services.core.modelref\n"
        "import services.core.queue, services.core.storage, services.core.lifecycle\n"
        "import services.cli.common\n",
        tmp_path,
    )
    assert not loaded & set(HEAVY), f"the core loaded {sorted(loaded & set(HEAVY))}"
