"""The lake as tables: the annotations table kept current by every run (see `annotations`)."""

from __future__ import annotations

from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.history import ChangeLog
from encord_mirror.domain.ports import ObjectStore, RunRecorder
from encord_mirror.tables.annotations import AnnotationsTable


def lake_recorders(lake: ObjectStore, config: MirrorConfig) -> tuple[RunRecorder, ...]:
    """What every run keeps in the lake besides the rows: the change log and the annotations table."""
    return (ChangeLog(lake, keep_runs=config.history_keep_runs), AnnotationsTable(lake))
