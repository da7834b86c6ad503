"""Import a script of benchmarks/ as a module for its tests (benchmarks/ is a folder of scripts, not a package).

    bench = load_benchmark("video")      # benchmarks/video.py as the module "bench_video"
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(name: str):
    """``benchmarks/<name>.py``, executed once per call as the module ``bench_<name>`` (the folder goes on
    ``sys.path`` so the script's own sibling imports resolve)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
