"""The COCO modes a deployment or a sync chooses, spelled once (the CLI declares its flags from this
without importing the converter; template.yaml's CocoMode parameter is held equal to it by a test)."""

from __future__ import annotations

from typing import Literal, get_args

# corrected: the converter's documented corrections; encord-compatible: CocoExporter's output exactly;
# off: no snapshots.
CocoMode = Literal["corrected", "encord-compatible", "off"]
COCO_MODES: tuple[CocoMode, ...] = get_args(CocoMode)
DEFAULT_COCO_MODE: CocoMode = "corrected"
