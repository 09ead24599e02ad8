"""What a cold start imports: only the finalizer loads the COCO stack (our converter, pycocotools).

numpy is not in the list: the SDK itself imports it (its bitmask operations)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COCO_STACK = ("pycocotools",)
# The COCO mode names the settings check COCO_MODE against: a module that imports nothing.
COCO_NAMES_ONLY = {"encord_mirror.coco", "encord_mirror.coco.modes"}


def _imported_after_loading(handler: str) -> set[str]:
    app = str(ROOT / "functions" / handler / "app.py")
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('app', {app!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print('\\n'.join(sys.modules))\n"
    )
    env = {"POWERTOOLS_METRICS_NAMESPACE": "test", "POWERTOOLS_SERVICE_NAME": "test", "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env, cwd=ROOT
    )
    return set(result.stdout.split())


@pytest.mark.parametrize("handler", ["planner", "worker"])
def test_the_planner_and_worker_cold_starts_skip_the_coco_stack(handler: str) -> None:
    # When the handler module is loaded as Lambda loads it
    modules = _imported_after_loading(handler)
    # Then the SDK is there (they need it) and nothing of the COCO stack is
    assert "encord" in modules
    coco = {m for m in modules if m.split(".")[0] in COCO_STACK or m.startswith("encord_mirror.coco")}
    assert not coco - COCO_NAMES_ONLY


def test_the_finalizer_loads_the_coco_stack_at_init() -> None:
    modules = _imported_after_loading("finalizer")
    assert {"encord_mirror.coco.snapshot", "encord_mirror.coco.raster"} <= modules
