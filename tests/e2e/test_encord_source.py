"""EncordLabelSource: the real `encord` SDK against the emulator on loopback (each test starts its own)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_key

from encord_emulator.generate import generate
from encord_emulator.keys import generate_keypair
from encord_emulator.server import Emulator
from encord_emulator.testing import build_fixture, corrupt_row
from encord_mirror.adapters.encord_source import (
    EncordAuthError,
    EncordCredentialsError,
    EncordLabelSource,
    EncordProjectAccessError,
)
from encord_mirror.domain.codec import ChunkBody, chunk_rows_from_json, chunk_rows_to_json, encode_chunk
from encord_mirror.domain.models import BranchSelection, ChunkMessage, Media, RowMeta, RowQuery
from encord_mirror.domain.watermark import NaiveDatetimeError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@dataclass
class Env:
    emu: Emulator
    project: str
    key_path: Path
    source: EncordLabelSource

    def truth(self) -> dict[str, dict[str, Any]]:
        return {item["label_hash"]: item for item in self.emu.state(self.project)}

    def main_hashes(self) -> list[str]:
        return sorted(h for h, item in self.truth().items() if item["branch_name"] == "main")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    project = build_fixture(tmp_path / "fixture", extra_images=12).project_hash
    key_path, public_line = generate_keypair(tmp_path / "keys")
    with Emulator(tmp_path / "fixture", authorized_keys=[public_line]) as emu:
        source = EncordLabelSource.from_key_file(key_path, domain=emu.url)
        yield Env(emu, project, key_path, source)


def _legacy(emu: Emulator, query_type: str, query_method: str = "GET") -> list[dict[str, Any]]:
    return [
        e for e in emu.request_log() if e["query_type"] == query_type and e["query_method"] == query_method
    ]


def test_project_info_gives_title_ontology_and_stages_and_is_fetched_once(env: Env) -> None:
    # Given a generated workflow project
    # When the source describes it twice
    first = env.source.project_info(env.project)
    requests_after_first = len(env.emu.request_log())
    second = env.source.project_info(env.project)

    # Then it has the project's stages and ontology, and the second call costs no request
    assert first == second
    assert first.project_hash == env.project
    assert first.stages, "a workflow project has stages"
    truth_stage_uuids = {item["stage_uuid"] for item in env.emu.state(env.project)}
    assert truth_stage_uuids <= {stage.uuid for stage in first.stages}
    assert first.ontology["objects"], "ontology structure as OntologyStructure.to_dict()"
    assert first.ontology_hash
    assert len(env.emu.request_log()) == requests_after_first


def test_list_rows_maps_metadata_with_aware_utc_times_stage_and_task_status(env: Env) -> None:
    # Given the emulator's truth for main
    truth = env.truth()

    # When the source lists every main row
    rows = env.source.list_rows(env.project, RowQuery())

    # Then every labelled main row comes back with its stage, task status and an aware UTC edit time
    labelled = [r for r in rows if r.label_hash is not None]
    assert sorted(r.label_hash for r in labelled if r.label_hash) == env.main_hashes()
    for row in labelled:
        assert row.label_hash is not None
        item = truth[row.label_hash]
        assert row.branch == "main"
        assert row.stage_uuid == item["stage_uuid"]
        assert row.stage_title == item["stage"]
        assert row.task_status == item["task_status"]
        assert row.last_edited_at is not None and row.last_edited_at.tzinfo == UTC
        assert row.data_hash == item["data_hash"]
    # And data units without a main label row come back unlabelled (label_hash None), never initialised
    unlabelled = {r.data_hash for r in rows if r.label_hash is None}
    assert unlabelled == set(env.emu.unlabelled(env.project))
    assert not env.emu.writes()


def test_list_rows_selects_branches_all_or_named(env: Env) -> None:
    # Given a project whose data units have consensus branches beside main
    truth = env.truth()
    branches = {item["branch_name"] for item in truth.values()}
    other = sorted(branches - {"main"})
    assert other, "the generated project has consensus branches"

    # When listing all branches, and one named branch
    every = env.source.list_rows(env.project, RowQuery(branches=BranchSelection("all")))
    named = env.source.list_rows(env.project, RowQuery(branches=BranchSelection("named", other[0])))

    # Then all branches give every live row; the named branch only that branch's rows
    assert {r.label_hash for r in every if r.label_hash} == set(truth)
    assert {r.branch for r in named} == {other[0]}
    assert {r.label_hash for r in named if r.label_hash} == {
        h for h, item in truth.items() if item["branch_name"] == other[0]
    }


def test_list_branches_names_main_and_every_branch_with_a_label_row(env: Env) -> None:
    # Given a project with label rows on main and on a consensus branch
    branches = {item["branch_name"] for item in env.truth().values()}
    # When the source lists its branches / Then it names each once, the way the listing spells them
    listed = env.source.list_branches(env.project)
    assert "main" in listed and len(branches) > 1
    assert sorted(listed) == sorted(branches)


def test_list_rows_filters_by_hashes_and_edit_window(env: Env) -> None:
    # Given two rows and the edit times of the project
    hashes = env.main_hashes()[:2]
    all_rows = [r for r in env.source.list_rows(env.project, RowQuery()) if r.last_edited_at]
    times = sorted({r.last_edited_at for r in all_rows if r.last_edited_at})
    middle = times[len(times) // 2]

    # When listing by label hash, and by a window [middle, +inf) with aware datetimes
    by_hash = env.source.list_rows(env.project, RowQuery(label_hashes=tuple(hashes)))
    recent = env.source.list_rows(
        env.project, RowQuery(edited_after=middle - timedelta(microseconds=1), edited_before=None)
    )
    nothing = env.source.list_rows(env.project, RowQuery(label_hashes=()))

    # Then the server filtered exactly those
    assert sorted(r.label_hash for r in by_hash if r.label_hash) == hashes
    assert recent and all(r.last_edited_at and r.last_edited_at >= middle for r in recent)
    assert {r.label_hash for r in recent} == {r.label_hash for r in all_rows if r.last_edited_at >= middle}
    assert nothing == []


def test_list_rows_refuses_naive_datetimes_before_any_request(env: Env) -> None:
    # Given a naive datetime (its meaning would depend on the server's timezone)
    env.emu.clear_log()

    # When / Then listing with it is refused and nothing is sent
    with pytest.raises(NaiveDatetimeError, match="edited_after"):
        env.source.list_rows(env.project, RowQuery(edited_after=datetime(2025, 1, 1)))
    assert [e for e in env.emu.request_log() if e["query_type"] == "labelrowmetadata"] == []


def test_load_rows_initialises_a_chunk_in_one_bundle_with_content_equal_to_encord(env: Env) -> None:
    # Given ten rows of main and one of a consensus branch
    truth = env.truth()
    consensus = next(h for h, i in truth.items() if i["branch_name"] != "main")
    wanted = [*env.main_hashes()[:10], consensus]
    env.source.project_info(env.project)
    env.emu.clear_log()

    # When the source loads them
    result = env.source.load_rows(env.project, wanted, bundle_size=100)

    # Then one listing and ONE bundled labelrow GET carried all of them, and each row equals Encord's
    assert result.failed == {} and result.gone == ()
    assert sorted(r.meta.label_hash for r in result.loaded if r.meta.label_hash) == sorted(wanted)
    gets = _legacy(env.emu, "labelrow")
    assert [e["uids"] for e in gets] == [len(wanted)]
    assert len(_legacy(env.emu, "labelrowmetadata")) == 1
    for row in result.loaded:
        assert row.meta.label_hash is not None
        item = truth[row.meta.label_hash]
        assert row.labels == item["row"]
        assert row.meta.branch == item["branch_name"]
        assert row.meta.stage_uuid == item["stage_uuid"]
    assert not env.emu.writes()


def test_load_rows_reports_deleted_rows_as_gone(env: Env) -> None:
    # Given a row deleted in Encord
    victim, *rest = env.main_hashes()[:4]
    env.emu.delete_row(env.project, victim)

    # When the source loads it with others
    result = env.source.load_rows(env.project, [victim, *rest], bundle_size=100)

    # Then it is gone, the others load
    assert result.gone == (victim,)
    assert sorted(r.meta.label_hash for r in result.loaded if r.meta.label_hash) == sorted(rest)
    assert result.failed == {}


def test_rows_left_out_of_a_bundle_response_fail_instead_of_vanishing(env: Env) -> None:
    # Given a bundle answer that silently leaves out two rows (the SDK does not notice)
    wanted = env.main_hashes()[:6]
    env.emu.inject_fault("omit_rows", query_type="labelrow", query_method="GET", omit=2)

    # When the source loads the chunk
    result = env.source.load_rows(env.project, wanted, bundle_size=100)

    # Then two rows fail with a reason, four load, none is skipped
    assert len(result.failed) == 2 and len(result.loaded) == 4
    assert all("left the row out" in reason for reason in result.failed.values())
    assert set(result.failed) | {r.meta.label_hash for r in result.loaded} == set(wanted)


def test_a_429_storm_past_the_sdks_retries_fails_every_row_of_the_bundle(env: Env) -> None:
    # Given a 429 on every attempt the SDK makes (Retry-After: 1 replaces its 3 s and 6 s backoff)
    wanted = env.main_hashes()[:5]
    env.emu.inject_fault("status", status=429, retry_after=1, count=4, query_type="labelrow")

    # When the source loads the chunk
    result = env.source.load_rows(env.project, wanted, bundle_size=100)

    # Then every row failed with the rate limit's text, after the SDK's 4 attempts
    assert result.loaded == ()
    assert set(result.failed) == set(wanted)
    assert all("RateLimitExceededError" in reason for reason in result.failed.values())
    assert len(_legacy(env.emu, "labelrow")) == 4


def test_a_429_answered_within_the_sdks_retries_loads_everything(env: Env) -> None:
    # Given two rate limit answers, then normal service
    wanted = env.main_hashes()[:5]
    env.emu.inject_fault("status", status=429, retry_after=1, count=2, query_type="labelrow")

    # When the source loads the chunk
    result = env.source.load_rows(env.project, wanted, bundle_size=100)

    # Then the SDK's retries absorbed the storm
    assert result.failed == {} and len(result.loaded) == 5


def test_a_corrupt_row_fails_alone_and_the_rest_of_its_bundle_loads(env: Env) -> None:
    # Given a row whose stored labels reference a feature the ontology does not have
    truth = env.truth()
    wanted = env.main_hashes()[:6]
    poison = wanted[0]
    broken = _corrupt(truth[poison]["row"])
    env.emu.edit_row(env.project, poison, broken)

    # When the source loads the chunk
    result = env.source.load_rows(env.project, wanted, bundle_size=100)

    # Then the poison row fails with a reason, every other row loads
    assert set(result.failed) == {poison}
    assert "corrupt label row" in result.failed[poison]
    assert sorted(r.meta.label_hash for r in result.loaded if r.meta.label_hash) == sorted(wanted[1:])


def test_bundle_size_splits_the_chunk_into_requests(env: Env) -> None:
    # Given nine rows and a bundle size of 4
    wanted = env.main_hashes()[:9]
    env.emu.clear_log()

    # When loaded
    result = env.source.load_rows(env.project, wanted, bundle_size=4)

    # Then the SDK sent 3 labelrow requests of at most 4 uids
    assert len(result.loaded) == 9
    assert sorted(e["uids"] for e in _legacy(env.emu, "labelrow")) == [1, 4, 4]


def test_an_unknown_key_is_refused_naming_the_key_file_and_domain(env: Env, tmp_path: Path) -> None:
    # Given a valid ed25519 key that is not registered with the emulator
    stranger, _ = generate_keypair(tmp_path / "stranger")
    source = EncordLabelSource.from_key_file(stranger, domain=env.emu.url)

    # When / Then the first call says which key and which domain
    with pytest.raises(EncordAuthError) as caught:
        source.project_info(env.project)
    assert str(stranger) in str(caught.value) and env.emu.url in str(caught.value)


def test_missing_or_invalid_key_files_fail_at_start_without_echoing_the_key(tmp_path: Path) -> None:
    # Given a missing file and a file holding something that is not a key
    garbage = tmp_path / "garbage"
    garbage.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LXRleHQ=\n-----END OPENSSH PRIVATE KEY-----\n"
    )

    # When / Then both fail when the source is built, naming the file but not quoting it
    with pytest.raises(EncordCredentialsError, match="no such file"):
        EncordLabelSource.from_key_file(tmp_path / "missing", domain="http://127.0.0.1:9")
    with pytest.raises(EncordCredentialsError) as caught:
        EncordLabelSource.from_key_file(garbage, domain="http://127.0.0.1:9")
    assert str(garbage) in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)
    rsa = rsa_key.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    with pytest.raises(EncordCredentialsError, match="not an Ed25519"):
        EncordLabelSource.from_private_key(rsa.decode(), key_origin="an RSA key")
    with pytest.raises(EncordCredentialsError, match="empty"):
        EncordLabelSource.from_private_key("  ", key_origin="secret encord/key")


def test_an_unknown_project_is_a_clear_access_error(env: Env) -> None:
    # Given a project hash the emulator does not hold
    unknown = "00000000-0000-4000-8000-000000000000"

    # When / Then
    with pytest.raises(EncordProjectAccessError, match=unknown):
        env.source.project_info(unknown)


def _corrupt(row: dict[str, Any]) -> dict[str, Any]:
    broken = corrupt_row(row)
    broken["object_answers"] = {}
    broken["classification_answers"] = {
        "d": {"classificationHash": "d", "featureHash": "nope", "classifications": [], "range": [[0, 0]]}
    }
    return broken


@pytest.fixture
def every_kind(tmp_path: Path) -> Iterator[Env]:
    """A generated project with every data type and shape the generator writes (and consensus branches)."""
    project = generate(tmp_path / "generated", 120, seed=3)[0]
    key_path, public_line = generate_keypair(tmp_path / "keys")
    with Emulator(tmp_path / "generated", authorized_keys=[public_line]) as emu:
        source = EncordLabelSource.from_key_file(key_path, domain=emu.url)
        yield Env(emu, project, key_path, source)


def test_load_listed_initialises_from_the_listing_alone_with_content_equal_to_encord(every_kind: Env) -> None:
    # Given the listing of every labelled row of every branch, of every data type, sent through a chunk
    # message's encoding
    env = every_kind
    listed = [
        r
        for r in env.source.list_rows(env.project, RowQuery(branches=BranchSelection("all")))
        if r.label_hash
    ]
    assert {r.data_type for r in listed} >= {"image", "video", "img_group", "dicom", "nifti", "pdf", "audio"}
    hashes = [r.label_hash for r in listed if r.label_hash]
    carried = chunk_rows_from_json(
        orjson.loads(orjson.dumps(chunk_rows_to_json(listed))), env.project, hashes
    )
    truth = env.truth()
    env.emu.clear_log()

    # When the source initialises them from that listing
    result = env.source.load_listed(env.project, carried, bundle_size=1000)

    # Then ONE labelrow GET carried them and nothing was listed again; each row equals Encord's content
    # and carries the listing's stage and task status
    assert result.failed == {} and result.gone == ()
    assert [e["uids"] for e in _legacy(env.emu, "labelrow")] == [len(hashes)]
    assert _legacy(env.emu, "labelrowmetadata") == []
    assert sorted(r.meta.label_hash for r in result.loaded if r.meta.label_hash) == sorted(hashes)
    for row in result.loaded:
        assert row.meta.label_hash is not None
        item = truth[row.meta.label_hash]
        assert row.labels == item["row"]
        assert (row.meta.stage_uuid, row.meta.task_status) == (item["stage_uuid"], item["task_status"])
        assert (row.meta.data_hash, row.meta.data_title) == (item["data_hash"], item["data_title"])
    assert not env.emu.writes()


def test_load_listed_lists_again_only_a_row_deleted_since_planning_and_reports_it_gone(env: Env) -> None:
    # Given the listing of four rows, one of them deleted in Encord afterwards
    listed = [r for r in env.source.list_rows(env.project, RowQuery()) if r.label_hash][:4]
    victim = listed[0].label_hash
    assert victim is not None
    env.emu.delete_row(env.project, victim)
    env.emu.clear_log()

    # When the source initialises them from that listing
    result = env.source.load_listed(env.project, listed, bundle_size=100)

    # Then the deleted row is gone and the others load: Encord refused the first bundle (an unknown
    # label hash), one listing by label hash told gone from present, one more bundle loaded the rest
    assert result.gone == (victim,)
    assert sorted(r.meta.label_hash for r in result.loaded if r.meta.label_hash) == sorted(
        r.label_hash for r in listed[1:] if r.label_hash
    )
    assert result.failed == {}
    assert len(_legacy(env.emu, "labelrowmetadata")) == 1
    assert not env.emu.writes()


def test_load_listed_never_initialises_a_row_without_a_label_hash(env: Env) -> None:
    # Given a listing that holds a data unit without a label row
    listed = env.source.list_rows(env.project, RowQuery())
    unlabelled = [r for r in listed if r.label_hash is None]
    assert unlabelled

    # When the source is asked to initialise it with a labelled row
    result = env.source.load_listed(env.project, [*unlabelled, *listed[:1]], bundle_size=100)

    # Then nothing was created in Encord (no labelrow PUT) and only the labelled row loaded
    assert not env.emu.writes()
    assert _legacy(env.emu, "labelrow", "PUT") == []
    assert [r.meta.label_hash for r in result.loaded] == [listed[0].label_hash]


def test_a_1000_row_chunk_message_stays_far_under_the_sqs_cap() -> None:
    # Given a 1000-row chunk of UUID hashes on a long branch name, across every stage of a workflow
    # with long stage titles, every row with its media fields
    project = str(uuid.uuid4())
    stages = [(str(uuid.uuid4()), f"Stage {i} " + "x" * 80) for i in range(8)]
    rows = tuple(
        RowMeta(
            project_hash=project,
            data_hash=str(uuid.uuid4()),
            branch="consensus-" + "b" * 54,
            label_hash=str(uuid.uuid4()),
            last_edited_at=datetime(2026, 12, 3, 10, 11, 12, 123456, tzinfo=UTC) + timedelta(seconds=i),
            stage_uuid=stages[i % 8][0],
            stage_title=stages[i % 8][1],
            task_status="IN_REVIEW",
            data_title="a/long/path/" + "t" * 200 + ".mp4",
            data_type="video",
            media=Media(
                number_of_frames=123456, frames_per_second=29.97, duration=4119.32, is_shadow_data=False
            ),
        )
        for i in range(1000)
    )
    chunk = ChunkMessage(project, "20261203T101112.123Z-abcdef01", "20261203T101112.123Z-abcdef01-00001",
                         tuple(r.label_hash for r in rows if r.label_hash), rows=rows)  # fmt: skip

    # When it is encoded as the SQS body, and parsed back as the worker handler does
    body = encode_chunk(chunk)
    parsed = ChunkBody.model_validate_json(body).message()

    # Then the body is well under SQS's 256 KiB cap (the data title is not carried), and the worker
    # gets the listing back, data title aside
    size = len(body.encode())
    assert size < 200 * 1024, size
    assert parsed.rows == tuple(replace(r, data_title="") for r in rows)
