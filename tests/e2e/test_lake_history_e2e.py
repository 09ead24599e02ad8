"""History and the reader on both kinds of lake: the CLI (`history`, `show --as-of`), the real SDK against
the emulator, and the lake a local directory or a bucket on moto's S3 server reached through boto3."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_cli_sync import Mirror, serve_mirror

from encord_emulator.testing import without_objects
from encord_mirror.adapters.aws.s3 import S3ObjectStore
from encord_mirror.adapters.local import LocalLake
from encord_mirror.domain.ports import ObjectStore
from encord_mirror.reader import open_lake

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture(params=["local", "s3"])
def lake_mirror(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    aws_env: dict[str, str],
    aws_client: Callable[[str], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Mirror, ObjectStore]]:
    with serve_mirror(tmp_path, extra_images=6) as mirror:
        if request.param == "local":
            yield mirror, LocalLake(Path(mirror.dest))
            return
        bucket = f"lake-{uuid.uuid4().hex[:10]}"
        aws_client("s3").create_bucket(Bucket=bucket)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        mirror.dest = f"s3://{bucket}/lake"
        yield mirror, S3ObjectStore(bucket, "lake", aws_client("s3"))


def _row(lake: ObjectStore, label_hash: str) -> bytes:
    key = next(k for k in lake.list_keys("labels/") if k.endswith(f"/{label_hash}.json"))
    stored = lake.get(key)
    assert stored is not None
    return stored.body


def test_a_rows_history_is_listed_and_restored_as_of_the_first_run_on_any_lake(
    lake_mirror: tuple[Mirror, ObjectStore],
) -> None:
    mirror, lake = lake_mirror
    # Given a first sync, then an edit saved in Encord and a second sync
    assert mirror.sync().code == 0
    edited = mirror.fixture.by_title("img2.jpg")
    first_bytes = _row(lake, edited.label_hash)
    mirror.emu.edit_row(mirror.project, edited.label_hash, without_objects(edited.row))
    second = mirror.sync()
    assert second.code == 0, second.err
    runs = sorted(k.rsplit("/", 1)[1].removesuffix(".json") for k in lake.list_keys("runs/"))
    # When the row's history is listed and the row is shown as of the first run
    listed = mirror.cli("history", "--lake", mirror.dest, "--label-hash", edited.label_hash, "--json")
    shown = mirror.cli("show", "--lake", mirror.dest, "--label-hash", edited.label_hash, "--as-of", runs[0])
    # Then it has a version per run that wrote it, and the first one is restored byte for byte
    assert listed.code == 0 and shown.code == 0, listed.err + shown.err
    assert [(v["run_id"], v["status"]) for v in orjson.loads(listed.out)] == [
        (runs[0], "written"),
        (runs[1], "written"),
    ]
    assert shown.out.encode() == first_bytes + b"\n"
    assert first_bytes != _row(lake, edited.label_hash)
    # And the reader opens the same lake read-only: the annotations table follows the edit
    reader = open_lake(mirror.dest)
    records = reader.annotations(project=mirror.project, as_records=True)
    assert not any(r["label_hash"] == edited.label_hash and r["kind"] == "object" for r in records)
    assert reader.row_as_of(edited.label_hash, runs[0]) == orjson.loads(first_bytes)
    # And a time before the first run is an error naming it
    early = mirror.cli(
        "show", "--lake", mirror.dest, "--label-hash", edited.label_hash, "--as-of", "2001-01-01Z"
    )
    assert early.code == 2 and "--as-of 2001-01-01Z" in early.err
