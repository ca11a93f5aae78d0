"""Gateway start-up: seconds to import the app and build it, and peak memory, in fresh processes.

    python benchmarks/gateway_startup.py                       # this checkout
    python benchmarks/gateway_startup.py --baseline /tmp/old   # and another checkout, interleaved

Each run is a new interpreter (what a container start pays): import the gateway, `create_app`,
report wall seconds, peak RSS and whether torch was loaded. Runs of the two trees alternate, so
the noise of a shared machine hits both; medians and the ratio are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, resource, sys, tempfile, time
t = time.perf_counter()
try:
    from services.core.settings import Settings
except ImportError:  # checkouts from before services/core
    from services.settings import Settings
from services.gateway.app import create_app
create_app(Settings(home=tempfile.mkdtemp()), run_sweeper=False)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": "torch" in sys.modules, "modules": len(sys.modules)}))
"""


def measure(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "MOSS_HOME": tempfile.mkdtemp()}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tree, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    trees = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            results[name].append(measure(tree))
    medians = {}
    for name, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        rss = statistics.median(r["rss_mb"] for r in runs)
        medians[name] = (seconds, rss)
        print(
            f"{name:9s} import+create_app {seconds:5.2f} s (median of {len(runs)}), "
            f"peak RSS {rss:4.0f} MB, torch loaded: {runs[0]['torch']}, "
            f"modules: {runs[0]['modules']}"
        )
    if "baseline" in medians:
        (s, m), (bs, bm) = medians["this"], medians["baseline"]
        print(f"ratio this/baseline: time x{s / bs:.2f}, memory x{m / bm:.2f}")


if __name__ == "__main__":
    main()
