"""The lake heals itself through the Lambda handlers (issue 13, findings 1 and 4): real boto3 against moto's
server, the real SDK against the emulator, the queues fed to the handlers by the local poller of
test_lambda_e2e (whose `deployment` fixture these tests reuse).
"""

from __future__ import annotations

import uuid
from dataclasses import replace

import orjson
import pytest
from awsenv import create_state_table
from test_lambda_e2e import Deployment, _first_sync, _redeploy, deployment

from encord_mirror.verify import snapshot_differences

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

__all__ = ["deployment"]  # the fixture, imported for pytest


def _key_of(deployment: Deployment, label_hash: str) -> str:
    (key,) = [k for k in deployment.lake.list_keys("labels/") if k.endswith(f"/{label_hash}.json")]
    return key


def test_a_full_sync_request_rewrites_row_objects_damaged_in_s3_and_rebuilds_a_damaged_latest_json(
    deployment: Deployment,
) -> None:
    # Given a lake in step, then one row object deleted, one truncated, one edited by hand, and one
    # partition's latest.json overwritten with garbage, all in the bucket behind the mirror's back
    _first_sync(deployment)
    lake = deployment.lake
    gone, cut, edited = (r.label_hash for r in deployment.fixture.main_rows()[:3])
    lake.delete(_key_of(deployment, gone))
    body = lake.get(_key_of(deployment, cut))
    assert body is not None
    lake.put(_key_of(deployment, cut), body.body[: len(body.body) // 2])
    body = lake.get(_key_of(deployment, edited))
    assert body is not None
    doc = orjson.loads(body.body)
    doc["data_title"] = "edited by hand"
    lake.put(_key_of(deployment, edited), orjson.dumps(doc))
    pointer = sorted(k for k in lake.list_keys("coco/") if k.endswith("/latest.json"))[0]
    lake.put(pointer, b"{not json")

    # When a full sync is requested on the sync-request queue
    deployment.request_sync(full=True)
    deployment.drain()

    # Then the lake equals Encord, only those three rows were initialised, and every snapshot is right
    deployment.assert_in_step()
    assert deployment.initialised() == 3
    manifest = deployment.manifests()[-1]
    assert {r["label_hash"] for r in manifest["rows"] if r["status"] == "written"} == {gone, cut, edited}
    assert (
        snapshot_differences(lake, deployment.project, deployment.fixture.ontology, encord_compatible=False)
        == []
    )


def test_a_new_state_table_over_a_synced_lake_removes_old_copies_and_deleted_rows(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a lake synced by the stack, then stage moves and deletions in Encord, and the stack pointed at
    # a new, empty state table (the old one lost)
    _first_sync(deployment)
    rows = deployment.fixture.main_rows()
    moved = [r for r in rows if r.row["data_title"].startswith("bulk-")][:3]
    for row in moved:
        deployment.emu.move_stage(deployment.project, row.data_hash, "Complete")
    deleted = rows[:2]
    for row in deleted:
        deployment.emu.delete_row(deployment.project, row.label_hash)
    table = f"state-{uuid.uuid4().hex[:10]}"
    create_state_table(deployment.client("dynamodb"), table)
    _redeploy(monkeypatch, STATE_TABLE=table)
    deployment.aws = replace(deployment.aws, table=table)

    # When the schedule fires (a first run for this state: it reconciles)
    deployment.schedule()
    deployment.drain()

    # Then the lake equals Encord: the moved rows in their new partition only, the deleted ones nowhere;
    # only the moved rows were initialised (the index was taken up from the lake), the snapshots agree
    deployment.assert_in_step()
    assert deployment.initialised() == len(moved)
    keys = list(deployment.lake.list_keys("labels/"))
    assert not any(r.label_hash in k for r in deleted for k in keys)
    entries = {e.label_hash for e in deployment.state.scan_index(deployment.project)}
    assert entries == {r.label_hash for r in rows} - {r.label_hash for r in deleted}
    assert (
        snapshot_differences(
            deployment.lake, deployment.project, deployment.fixture.ontology, encord_compatible=False
        )
        == []
    )
