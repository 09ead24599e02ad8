"""The lake heals itself (issue 13, findings 1 and 4), through the CLI, the real SDK and the emulator:
- outside damage (a row object deleted, truncated or edited by hand; a `latest.json` deleted or damaged) is
  repaired by `sync --full`, a damaged pointer is named, and `status` names it instead of crashing;
- a state that is lost (a second machine, a fresh container) does not leave duplicates or deleted rows: a
  reconciling run compares Encord's listing with the lake's own keys, and a run without state takes the
  row index up from the lake instead of sending every row again;
- `encord-mirror verify` reports lake vs state vs Encord and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from test_cli_sync import Mirror, _first_sync, serve_mirror

from encord_mirror.domain.lake import partition_of
from encord_mirror.verify import assert_lake_matches, snapshot_differences

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    with serve_mirror(tmp_path, extra_images=8) as served:
        yield served


def _row_path(mirror: Mirror, label_hash: str) -> Path:
    (key,) = [k for k in mirror.lake.list_keys("labels/") if k.endswith(f"/{label_hash}.json")]
    return Path(mirror.dest) / key


def _label_keys(mirror: Mirror) -> list[str]:
    return sorted(k for k in mirror.lake.list_keys(f"labels/project={mirror.project}/"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _snapshots_in_step(mirror: Mirror) -> list[str]:
    return snapshot_differences(mirror.lake, mirror.project, mirror.fixture.ontology, encord_compatible=False)


def _damage_three_rows(mirror: Mirror) -> tuple[str, str, str]:
    """One row object deleted, one truncated, one edited by hand (its `mirror` block left as it was)."""
    gone, cut, edited = (r.label_hash for r in mirror.fixture.main_rows()[:3])
    _row_path(mirror, gone).unlink()
    path = _row_path(mirror, cut)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    path = _row_path(mirror, edited)
    doc = orjson.loads(path.read_bytes())
    doc["data_title"] = "edited by hand"
    path.write_bytes(orjson.dumps(doc))
    return gone, cut, edited


def test_a_full_sync_rewrites_row_objects_deleted_truncated_or_edited_outside_the_mirror(
    mirror: Mirror,
) -> None:
    # Given a lake in step, then three row objects damaged behind the mirror's back
    _first_sync(mirror)
    damaged = _damage_three_rows(mirror)

    # When a reconciling sync runs
    run = mirror.sync("--full")

    # Then the lake equals Encord again, only those three rows were initialised and written, and the
    # snapshots hold the rows as they are
    assert run.code == 0, run.out + run.err
    mirror.assert_in_step()
    assert mirror.initialised() == 3
    written = {r["label_hash"] for r in mirror.manifest(run)["rows"] if r["status"] == "written"}
    assert written == set(damaged)
    assert "3 damaged" in run.err
    assert _snapshots_in_step(mirror) == []


def test_a_deleted_or_damaged_latest_json_is_named_and_rebuilt_by_the_next_plain_sync(mirror: Mirror) -> None:
    # Given a lake in step with snapshots in several partitions, then one latest.json deleted and one
    # overwritten with garbage
    _first_sync(mirror)
    latest = sorted(k for k in mirror.lake.list_keys("coco/") if k.endswith("/latest.json"))
    assert len(latest) >= 2
    (Path(mirror.dest) / latest[0]).unlink()
    (Path(mirror.dest) / latest[1]).write_bytes(b"{not json")

    # When status and `coco latest` run, then a plain (incremental) sync
    status = mirror.status()
    coco = mirror.cli("coco", "latest", "--lake", mirror.dest, "--project", mirror.project)
    run = mirror.sync()

    # Then status names both pointers (exit 1, no traceback); the sync names both and rebuilds them
    assert status.code == 1, status.out + status.err
    for key in latest[:2]:
        assert f"{Path(mirror.dest) / key} is missing or damaged" in status.out
    assert coco.code == 2 and f"{Path(mirror.dest) / latest[1]} is damaged" in coco.err
    assert run.code == 0, run.out + run.err
    assert f"{Path(mirror.dest) / latest[0]} is missing" in run.err
    assert f"{Path(mirror.dest) / latest[1]} is damaged" in run.err
    assert _snapshots_in_step(mirror) == []
    assert mirror.status().code == 0


def test_a_sync_with_no_state_removes_old_copies_and_deleted_rows_and_sends_only_what_changed(
    mirror: Mirror, tmp_path: Path
) -> None:
    # Given a lake synced from machine A, then five stage moves and three deletions in Encord
    _first_sync(mirror, "--state", str(tmp_path / "a.sqlite"))
    rows = mirror.fixture.main_rows()
    moved = [r for r in rows[3:] if r.row["data_title"].startswith("bulk-")][:5]
    for row in moved:
        mirror.emu.move_stage(mirror.project, row.data_hash, "Complete")
    deleted = rows[:3]
    for row in deleted:
        mirror.emu.delete_row(mirror.project, row.label_hash)
    assert len(moved) == 5

    # When machine B, with a state of its own (none yet), syncs the same lake
    run = mirror.sync("--state", str(tmp_path / "b.sqlite"))

    # Then every row is once in its partition, the deleted rows are gone, only the moved rows were
    # initialised, and the snapshots agree
    assert run.code == 0, run.out + run.err
    mirror.assert_in_step()
    keys = _label_keys(mirror)
    assert not any(r.label_hash in k for r in deleted for k in keys)
    assert mirror.initialised() == 5
    assert _snapshots_in_step(mirror) == []

    # And machine A's next reconciling run finds nothing to do either
    mirror.emu.clear_log()
    again = mirror.sync("--state", str(tmp_path / "a.sqlite"), "--full")
    assert again.code == 0, again.out + again.err
    mirror.assert_in_step()
    assert mirror.initialised() == 0


def test_a_second_machine_with_other_filters_and_no_state_removes_the_rows_they_exclude(
    mirror: Mirror, tmp_path: Path
) -> None:
    # Given a lake synced from machine A with every stage
    _first_sync(mirror, "--state", str(tmp_path / "a.sqlite"))
    assert any("/stage=complete" in k for k in _label_keys(mirror))

    # When machine B, with no state, syncs it without the Complete stage
    run = mirror.sync("--state", str(tmp_path / "b.sqlite"), "--exclude-stage", "Complete")

    # Then the Complete rows left the lake, the others stayed without being sent again
    assert run.code == 0, run.out + run.err
    assert_lake_matches(
        mirror.lake, mirror.truth(), mirror.project, include=lambda r: r["stage"] != "Complete"
    )
    assert not any("/stage=complete" in k for k in _label_keys(mirror))
    assert mirror.initialised() == 0


def test_a_reconciling_run_removes_a_copy_left_in_another_partition_and_an_object_of_no_row(
    mirror: Mirror,
) -> None:
    # Given a lake in step, then a copy of a row planted in another stage's partition and an object of a
    # object that is no row of Encord's, in the same partition
    _first_sync(mirror)
    row = mirror.fixture.main_rows()[0]
    source = _row_path(mirror, row.label_hash)
    planted = next(k for k in _label_keys(mirror) if "/stage=complete" in k).rsplit("/", 1)[0]
    copy = Path(mirror.dest) / planted / f"{row.label_hash}.json"
    if copy == source:
        planted = next(k for k in _label_keys(mirror) if "/stage=annotate" in k).rsplit("/", 1)[0]
        copy = Path(mirror.dest) / planted / f"{row.label_hash}.json"
    copy.write_bytes(source.read_bytes())
    stranger = Path(mirror.dest) / planted / "not-a-row-of-encord.json"
    stranger.write_bytes(b'{"hello": "world"}')

    # When a reconciling sync runs
    run = mirror.sync("--full")

    # Then both are gone, and nothing else changed
    assert run.code == 0, run.out + run.err
    mirror.assert_in_step()
    assert not copy.exists() and not stranger.exists()
    assert mirror.initialised() == 0
    assert _snapshots_in_step(mirror) == []


def test_verify_reports_lake_state_and_encord_differences_without_writing(mirror: Mirror) -> None:
    # Given a lake in step
    _first_sync(mirror)
    verify = ("verify", "--project", mirror.project, "--lake", mirror.dest)
    key = ("--ssh-key", str(mirror.key_path), "--encord-domain", mirror.emu.url)
    clean = mirror.cli(*verify, *key)
    assert clean.code == 0, clean.out + clean.err

    # When rows are damaged, a row deleted in Encord and a latest.json removed, and verify runs
    gone, cut, edited = _damage_three_rows(mirror)
    deleted = mirror.fixture.main_rows()[4]
    mirror.emu.delete_row(mirror.project, deleted.label_hash)
    pointer = sorted(k for k in mirror.lake.list_keys("coco/") if k.endswith("/latest.json"))[0]
    (Path(mirror.dest) / pointer).unlink()
    before = _files(Path(mirror.dest))
    text = mirror.cli(*verify, *key)
    as_json = mirror.cli(*verify, *key, "--json")

    # Then it names each difference, exits 1, and the lake and its state are byte for byte as they were
    assert text.code == 1 and as_json.code == 1, text.out + text.err
    assert "missing: " in text.out and gone in text.out
    assert cut in text.out and edited in text.out
    assert deleted.label_hash in text.out
    assert f"snapshot main/{partition_of(pointer).stage}: no latest.json" in text.out
    report = orjson.loads(as_json.out)
    kinds = {d["kind"] for d in report[0]["differences"]}
    assert {"missing", "damaged", "extra", "snapshot"} <= kinds
    assert _files(Path(mirror.dest)) == before
    assert mirror.emu.writes() == []

    # And after a reconciling sync, verify is satisfied
    assert mirror.sync("--full").code == 0
    assert mirror.cli(*verify, *key).code == 0


def test_verify_with_bad_input_exits_2_naming_it(mirror: Mirror, tmp_path: Path) -> None:
    _first_sync(mirror)
    key = ("--ssh-key", str(mirror.key_path), "--encord-domain", mirror.emu.url)
    missing = mirror.cli("verify", "--project", mirror.project, "--lake", str(tmp_path / "nowhere"), *key)
    assert missing.code == 2 and "nowhere" in missing.err
    no_key = mirror.cli(
        "verify", "--project", mirror.project, "--lake", mirror.dest, "--ssh-key", str(tmp_path / "nokey")
    )
    assert no_key.code == 2 and "--ssh-key" in no_key.err
