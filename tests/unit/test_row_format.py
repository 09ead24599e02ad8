"""The row format is versioned: a lake written in an older format is rewritten by the next run that sees it
(run_local_sync on the real local lake and SQLite state, the fake Encord)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import orjson
import pytest
from conftest import Mirror
from fakes import PROJECT

from encord_mirror.adapters.local import SqliteStateStore
from encord_mirror.domain import config, rowdoc, worker
from encord_mirror.domain.config import MirrorConfig
from encord_mirror.domain.models import JsonDict, LoadedRow
from encord_mirror.domain.rowdoc import MIRROR_KEY, ROW_FORMAT_VERSION, content_sha256
from encord_mirror.domain.watermark import iso_utc

CONFIG = MirrorConfig(projects=(PROJECT,))
ROWS = 5


def _version_1_fingerprint() -> str:
    """What a version without row format versions recorded: the same selection, a content digest of the
    feature filters alone."""
    selection = CONFIG.filters_fingerprint().partition(".")[0]
    content = {"object_feature_hashes": None, "classification_feature_hashes": None}
    return (
        f"{selection}.{hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]}"
    )


def _sync_as_version_1(mirror: Mirror, monkeypatch: pytest.MonkeyPatch, *, fingerprint: str | None) -> None:
    """A first sync the way version 1 wrote rows: no `mirror.format_version`, its sha256 without it, and
    `fingerprint` as the filters the state recorded (None: a state from before they were recorded)."""
    build = worker.build_document

    def build_v1(row: LoadedRow, labels: JsonDict, *, synced_at: datetime) -> tuple[JsonDict, str]:
        document, _ = build(row, labels, synced_at=synced_at)
        block = document[MIRROR_KEY]
        for key in ("format_version", "sha256", "synced_at"):
            del block[key]
        sha = content_sha256(document)
        block.update(sha256=sha, synced_at=iso_utc(synced_at))
        return document, sha

    set_filters = SqliteStateStore.set_filters

    def record(state: SqliteStateStore, project_hash: str, _: str) -> None:
        if fingerprint is not None:
            set_filters(state, project_hash, fingerprint)

    with monkeypatch.context() as patch:
        patch.setattr(worker, "build_document", build_v1)
        patch.setattr(SqliteStateStore, "set_filters", record)
        assert mirror.sync(CONFIG).ok
    assert all(MIRROR_KEY in d and "format_version" not in d[MIRROR_KEY] for d in _documents(mirror))
    assert mirror.state.get_filters(PROJECT) == fingerprint


def _documents(mirror: Mirror) -> list[dict[str, Any]]:
    return [orjson.loads(body) for body in mirror.snapshot().values()]


@pytest.mark.parametrize("fingerprint", [_version_1_fingerprint(), None], ids=["v1-filters", "no-filters"])
def test_the_next_run_rewrites_a_lake_in_an_older_row_format_once(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch, fingerprint: str | None
) -> None:
    # Given a lake synced by version 1 (objects without mirror.format_version)
    mirror.source.add(ROWS)
    _sync_as_version_1(mirror, monkeypatch, fingerprint=fingerprint)
    # When this version syncs, with nothing changed in Encord and no reconciliation due
    mirror.clock.advance(60)
    summary = mirror.sync(CONFIG)
    # Then every row was sent and rewritten in this format, its sha256 recomputable from its content
    (project,) = summary.projects
    assert summary.ok and project.full and project.requested == ROWS and project.written == ROWS
    documents = _documents(mirror)
    assert [d[MIRROR_KEY]["format_version"] for d in documents] == [ROW_FORMAT_VERSION] * ROWS
    assert all(d[MIRROR_KEY]["sha256"] == content_sha256(d) for d in documents)
    # and the run after that rewrites nothing and sends nothing
    before = mirror.snapshot()
    mirror.clock.advance(60)
    again = mirror.sync(CONFIG)
    assert again.projects[0].requested == 0 and not again.projects[0].full
    assert mirror.snapshot() == before


def test_a_new_lake_is_written_in_the_current_row_format(mirror: Mirror) -> None:
    # Given a project never synced
    mirror.source.add(3)
    # When it is synced
    mirror.sync(CONFIG)
    # Then every row object names the current format version
    assert {d[MIRROR_KEY]["format_version"] for d in _documents(mirror)} == {ROW_FORMAT_VERSION}


def test_the_next_run_rewrites_a_lake_of_row_format_2_with_a_final_newline(
    mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a lake synced by a release of row format 2: objects without their final newline
    mirror.source.add(ROWS)
    with monkeypatch.context() as patch:
        patch.setattr(rowdoc, "ROW_FORMAT_VERSION", 2)
        patch.setattr(config, "ROW_FORMAT_VERSION", 2)
        patch.setattr(worker, "encode_document", orjson.dumps)
        assert mirror.sync(CONFIG).ok
    assert all(not body.endswith(b"\n") for body in mirror.snapshot().values())
    # When this release syncs, with nothing changed in Encord
    mirror.clock.advance(60)
    summary = mirror.sync(CONFIG)
    # Then every object was rewritten once: this format, one line ending with a newline
    assert summary.ok and summary.projects[0].written == ROWS
    bodies = list(mirror.snapshot().values())
    assert all(body.endswith(b"}\n") and body.count(b"\n") == 1 for body in bodies)
    assert {orjson.loads(b)[MIRROR_KEY]["format_version"] for b in bodies} == {ROW_FORMAT_VERSION}
