"""Where a command works: the lake (a directory or `s3://bucket/prefix`) and the SQLite state beside it.

State (watermark, row index, run ledger, gaps, snapshot debts) lives in SQLite: `--state PATH`, by default
`<lake dir>/.mirror-state.sqlite` for a directory lake (dot names are never listed as lake objects) and
`~/.cache/encord-mirror/<bucket>-<sha256(prefix)[:12]>.sqlite` for an S3 lake (`$XDG_CACHE_HOME` is
honoured). Light to import: no SDK, and boto3 only for an S3 lake.

`--state dynamodb://TABLE` keeps the state in a DynamoDB table instead (the Lambda deployment's, or one
created like it: `pk`/`sk` strings): machines that name the same table share the watermark, row index,
gaps and lease, so a second concurrent run is skipped by the lease. A lease in a table is never taken over
early (its holder may be another host): it lapses at its expiry. Never the default: an S3 lake's state
stays in the user's cache unless a table is named.

A lake knows its own id (`_lake.json` at its root, written by the first sync: a `_` name, so Hive and
Athena skip it), and a state records the id of the lake it was synced with: a state file of another lake
is refused (it would make the new lake look in step while it stays empty), naming both. `_lake.json` is
`{"format_version": 2, "lake_id", "created_at", "by"}` on one line ending with a newline (version 1, no
`format_version`, was indented: a sync rewrites it as version 2, keeping its id).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from encord_mirror.cli.errors import CliError
from encord_mirror.domain.ports import ObjectStore, PreconditionFailedError

if TYPE_CHECKING:
    from encord_mirror.adapters.aws.dynamodb import DynamoStateStore
    from encord_mirror.adapters.local.state import SqliteStateStore

STATE_FILENAME = ".mirror-state.sqlite"
LAKE_ID_KEY = "_lake.json"
LAKE_ID_FORMAT_VERSION = 2


@dataclass(frozen=True, slots=True)
class LakeTarget:
    """Where a sync writes: the lake, where a user finds it, and the state that goes with it: a SQLite
    file (`state_path`), or a DynamoDB table (`state_table`, for `--state dynamodb://TABLE`)."""

    lake: ObjectStore
    location: str
    state_path: Path | None
    state_table: str | None = None

    @property
    def state_location(self) -> str:
        """The state as a user names it with `--state`."""
        return f"{DYNAMODB_SCHEME}{self.state_table}" if self.state_table else str(self.state_path)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
DYNAMODB_SCHEME = "dynamodb://"
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")  # DynamoDB's own rule for a table name


def state_table(state: str | None) -> str | None:
    """The table of `--state dynamodb://TABLE` (the scheme in any case), or None for a state file."""
    if state is None or not state.lower().startswith(DYNAMODB_SCHEME):
        return None
    table = state[len(DYNAMODB_SCHEME) :]
    if not table:
        raise CliError("--state dynamodb://: name the table: --state dynamodb://TABLE")
    if not _TABLE_NAME.match(table):
        raise CliError(
            f"--state {state!r}: {table!r} is not a DynamoDB table name (3-255 of A-Z a-z 0-9 _ - .)"
        )
    return table


def is_s3(dest: str) -> bool:
    """Whether `--lake DEST` names an S3 lake. The scheme is case-insensitive (`S3://` too, as the AWS CLI
    takes it); an empty DEST or another scheme (`gs://`, `https://`) is refused: it is not a directory
    either, and taking it for one would write somewhere the user did not mean."""
    if not dest.strip():
        raise CliError("--lake is empty: give a directory or s3://BUCKET/PREFIX")
    scheme = _SCHEME.match(dest)
    if scheme is None:
        return False
    if scheme.group(1).lower() != "s3":
        raise CliError(
            f"--lake {dest!r}: {scheme.group(1)}:// lakes are not supported; use a directory or "
            "s3://BUCKET/PREFIX"
        )
    return True


def default_state_path(dest: str) -> Path:
    """The state file that goes with a lake when `--state` is not given (see the module docstring)."""
    if is_s3(dest):
        bucket, prefix = parse_s3_uri(dest)
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "encord-mirror"
        digest = hashlib.sha256(prefix.encode("utf-8")).hexdigest()[:12]
        return cache / f"{bucket}-{digest}.sqlite"
    return Path(dest).expanduser() / STATE_FILENAME


def _state_path(dest: str, state: str | None) -> Path | None:
    if state_table(state):
        return None
    return Path(state).expanduser() if state else default_state_path(dest)


def parse_s3_uri(dest: str) -> tuple[str, str]:
    bucket, _, prefix = dest[len("s3://") :].partition("/")
    if not bucket:
        raise CliError(f"--lake {dest!r}: an S3 lake is s3://BUCKET or s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


def open_target(dest: str, state: str | None) -> LakeTarget:
    """The lake for DEST (`s3://bucket/prefix` or a directory, created if missing) and its state path."""
    state_path, table = _state_path(dest, state), state_table(state)
    if is_s3(dest):
        return LakeTarget(_open_s3(dest), dest, state_path, table)
    from encord_mirror.adapters.local import LocalLake

    root = Path(dest).expanduser()
    if root.exists() and not root.is_dir():
        raise CliError(f"--lake {dest}: exists and is not a directory")
    try:
        lake = LocalLake(root)
    except OSError as exc:
        raise CliError(f"--lake {dest}: cannot create the directory ({exc.strerror or exc})") from None
    return LakeTarget(lake, str(lake.root), state_path, table)


def _open_s3(dest: str) -> ObjectStore:
    from botocore.exceptions import BotoCoreError, ClientError

    from encord_mirror.adapters.aws.s3 import S3ClientConfigError, S3ObjectStore, s3_client

    bucket, prefix = parse_s3_uri(dest)
    try:
        client = s3_client()
    except S3ClientConfigError as exc:
        raise CliError(f"--lake {dest}: {exc}") from None
    lake = S3ObjectStore(bucket, prefix, client)
    try:
        next(iter(lake.list_keys("runs/")), None)
    except (BotoCoreError, ClientError) as exc:
        raise CliError(
            f"--lake {dest}: cannot list the bucket ({exc}); check the AWS credentials, region and bucket"
        ) from None
    return lake


def open_state(
    target: LakeTarget, projects: Sequence[str], *, write: bool = True
) -> SqliteStateStore | DynamoStateStore:
    """The state of `target`, checked: a SQLite state of ours (`StateFileError` otherwise), or a DynamoDB
    table that exists with our keys, that belongs to this lake. `write`: a sync, which gives a new lake its
    id and binds a new state to the lake; otherwise the state is only read (a file is opened read-only, and
    nothing is written beside it either)."""
    from encord_mirror.adapters.local.state import SqliteStateStore, StateFileError

    if target.state_table is not None:
        table = _open_table(target.state_table)
        _bind(target, table, projects, write=write)
        return table
    path = target.state_path
    assert path is not None
    try:
        state = SqliteStateStore(path, read_only=not write)
    except StateFileError as exc:
        raise CliError(f"--state {exc}") from None
    except OSError as exc:
        raise CliError(f"--state {path}: cannot open the state file ({exc})") from None
    except sqlite3.Error as exc:
        raise CliError(f"--state {path}: not a usable SQLite state file ({exc})") from None
    try:
        _bind(target, state, projects, write=write)
    except BaseException:
        state.close()
        raise
    return state


def _open_table(table: str) -> DynamoStateStore:
    """The DynamoDB state store over `table`, through the CLI's boto3 client (its retries), checked."""
    from botocore.exceptions import BotoCoreError, ClientError

    from encord_mirror.adapters.aws.dynamodb import DynamoStateStore
    from encord_mirror.adapters.aws.s3 import S3ClientConfigError, cli_client

    flag = f"--state {DYNAMODB_SCHEME}{table}"
    try:
        client = cli_client("dynamodb")
        described = client.describe_table(TableName=table)["Table"]
    except S3ClientConfigError as exc:
        raise CliError(f"{flag}: {exc}") from None
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            region = client.meta.region_name
            raise CliError(
                f"{flag}: no such DynamoDB table in region {region}; create it as template.yaml's StateTable "
                "(pk and sk strings) or name the deployment's table"
            ) from None
        raise CliError(
            f"{flag}: cannot read the table ({exc}); check the AWS credentials and region"
        ) from None
    except BotoCoreError as exc:
        raise CliError(
            f"{flag}: cannot reach DynamoDB ({exc}); check the AWS credentials and region"
        ) from None
    keys = {k["AttributeName"]: k["KeyType"] for k in described.get("KeySchema", [])}
    if keys != {"pk": "HASH", "sk": "RANGE"}:
        raise CliError(
            f"{flag}: not a state table of encord-mirror (its key is {keys}; it should be pk HASH, sk RANGE)"
        )
    return DynamoStateStore(table, client)


def _bind(
    target: LakeTarget, state: SqliteStateStore | DynamoStateStore, projects: Sequence[str], *, write: bool
) -> None:
    from encord_mirror.domain.models import LakeBinding

    lake_id = read_lake_id(target)
    binding = state.lake_binding()
    if binding is not None and binding.lake_id != lake_id:
        this = f"lake {lake_id}" if lake_id else f"a lake without an id (no {LAKE_ID_KEY}: a new lake?)"
        raise CliError(
            f"--state {target.state_location}: belongs to another lake: it is the state of lake "
            f"{binding.lake_id} (last synced at {binding.location}, projects {', '.join(binding.projects)}), "
            f"and --lake {target.location} is {this}. Pass this lake's state with --state, or a new path "
            "to start its state afresh"
        )
    if not write:
        return
    if lake_id is None:
        lake_id = _create_lake_id(target)
    else:
        _upgrade_lake_id(target)
    known = binding.projects if binding is not None else ()
    if binding is None or binding.location != target.location or not set(projects) <= set(known):
        state.bind_lake(LakeBinding(lake_id, target.location, tuple(sorted({*known, *projects}))))


def read_lake_id(target: LakeTarget) -> str | None:
    stored = target.lake.get(LAKE_ID_KEY)
    if stored is None:
        return None
    try:
        lake_id = orjson.loads(stored.body)["lake_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        lake_id = None
    if not isinstance(lake_id, str) or not lake_id:
        raise CliError(
            f"--lake {target.location}: {target.lake.uri(LAKE_ID_KEY)} is damaged (it should be "
            '{"lake_id": "..."}); restore it from a backup or a bucket version'
        )
    return lake_id


def _create_lake_id(target: LakeTarget) -> str:
    from encord_mirror import __version__

    body = {"lake_id": uuid.uuid4().hex, "created_at": datetime.now(UTC).isoformat(), "by": __version__}
    # Create-only: if another first sync gave the lake its id a moment ago, that one stands.
    with contextlib.suppress(PreconditionFailedError):
        target.lake.put(LAKE_ID_KEY, _lake_id_body(body), if_none_match=True)
    lake_id = read_lake_id(target)
    assert lake_id is not None
    return lake_id


def _lake_id_body(fields: Mapping[str, object]) -> bytes:
    body = {
        "format_version": LAKE_ID_FORMAT_VERSION,
        **{k: v for k, v in fields.items() if k != "format_version"},
    }
    return orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE)


def _upgrade_lake_id(target: LakeTarget) -> None:
    """Rewrite a `_lake.json` of an older format in this one, keeping its fields (compare-and-swap: a
    concurrent upgrade wins); one of this format or a newer one stays as it is."""
    stored = target.lake.get(LAKE_ID_KEY)
    if stored is None:
        return
    fields = orjson.loads(stored.body)
    if fields.get("format_version", 1) >= LAKE_ID_FORMAT_VERSION:
        return
    with contextlib.suppress(PreconditionFailedError):
        target.lake.put(LAKE_ID_KEY, _lake_id_body(fields), if_match=stored.etag)


def open_lake(dest: str) -> ObjectStore:
    """An existing lake, for commands that only read it (a directory must exist; nothing is created)."""
    if is_s3(dest):
        return _open_s3(dest)
    from encord_mirror.adapters.local import LocalLake

    root = Path(dest).expanduser()
    if not root.is_dir():
        raise CliError(f"--lake {dest}: no such directory")
    return LocalLake(root)


def open_existing(dest: str, state: str | None) -> LakeTarget:
    """The lake for DEST and its state, for commands that only read: both must exist."""
    state_path, table = _state_path(dest, state), state_table(state)
    lake = open_lake(dest)
    if state_path is not None and not state_path.is_file():
        raise CliError(
            f"--state {state_path}: no state file; has `encord-mirror sync` run with this lake? "
            "(pass --state if its state is elsewhere)"
        )
    return LakeTarget(lake, dest if is_s3(dest) else str(Path(dest).expanduser()), state_path, table)
