"""The state store on DynamoDB: one table, `pk` = `P#<project_hash>`, `sk` by kind.

| sk                               | item                                                           |
|----------------------------------|----------------------------------------------------------------|
| `LEASE`                          | the planner lease: `owner`, `acquired_us`, `expires_us`, `ttl` |
| `WATERMARK`                      | `wm_us` (condition: only forward) and `wm_iso`                 |
| `FILTERS`                        | `fingerprint`: the filters the lake was last synced with       |
| `COUNTER`                        | `run_number` (UpdateItem ADD)                                  |
| `FAILURE`                        | a sync that ended unfinalized: `run_id`, `at_us`, `reason`     |
| `IDX#<label_hash>`               | the row index (newer-wins on `edited_us`)                      |
| `GAP#<label_hash>`               | a row that failed for good                                     |
| `RUN#<run_id>`                   | the run record (`blob`), `total`, `done`, the finalize claim   |
|                                  | (`fin_token`, `fin_expires_us`) and `finalized_at` when closed |
| `RUN#<run_id>#CHUNK#<chunk_id>`  | a chunk result (`blob`), `final`                               |
| `OUTBOX#<event_id>`              | a snapshot event recorded, not yet sent (`event`: its JSON)    |
| `SENT#<event_id>`                | a snapshot event sent (moved here from OUTBOX# atomically)     |
|                                  | (an older release keyed both by the `event_key`: `OUTBOX#` ones |
|                                  | are re-keyed when read, `SENT#` ones are checked, and age out) |
| `DEBT#<branch>/<stage>`          | a partition whose snapshot is owed: `branch`, `stage`,         |
|                                  | `run_id`, `reason` (branch percent-encoded in the key)         |
| `BLOB#<sha256>#<n>`              | a part of a blob too large for one item (content-addressed)    |

and one item outside the projects: `pk` = `LAKE`, `sk` = `BINDING`, the lake the table's state belongs to
(`lake_id`, `location`, `projects`), written by the CLI (`--state dynamodb://TABLE`) as it binds a SQLite
state; the Lambda deployment neither writes nor reads it.

Run records and chunk results are zlib-compressed JSON in one binary attribute; above
`INLINE_LIMIT` they go to content-addressed part items, so a 1000-row chunk or a run with 100k
unlabelled data units never hits DynamoDB's 400 KB item limit, and two deliveries of the same
chunk writing at once can't interleave their parts. Ledger items and sent-event markers carry a `ttl`
(the table's TTL attribute) so finished runs age out; the index, gaps, watermark, filters, counter,
snapshot debts and pending events never expire. Pending and sent events are separate kinds so that
reading the outbox reads only what is pending.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from botocore.exceptions import ClientError

from encord_mirror.domain.codec import (
    decode_event,
    decode_outcomes,
    decode_run,
    encode_event,
    encode_outcomes,
    encode_run,
)
from encord_mirror.domain.models import (
    ChunkResult,
    Gap,
    IndexEntry,
    LakeBinding,
    Lease,
    Partition,
    RunFailure,
    RunProgress,
    RunRecord,
    SnapshotDebt,
    SnapshotEvent,
)
from encord_mirror.domain.ports import FinalizeClaim
from encord_mirror.domain.watermark import iso_utc, parse_time, require_time

INLINE_LIMIT = 300_000  # bytes of compressed blob kept in the item itself (the item limit is 400 KB)
PART_SIZE = 300_000
TTL_ATTRIBUTE = "ttl"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BATCH_WRITE_MAX = 25
_TRANSACT_MAX = 100


class RunNotFoundError(LookupError):
    """A chunk result or finalize claim names a run the ledger does not hold (create_run never ran)."""

    def __init__(self, project_hash: str, run_id: str) -> None:
        super().__init__(f"run {run_id!r} of project {project_hash!r} is not in the ledger")
        self.project_hash = project_hash
        self.run_id = run_id


def _micros(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the state store only takes timezone-aware UTC")
    return (value - _EPOCH) // timedelta(microseconds=1)


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _condition_failed(error: ClientError) -> bool:
    """Whether a transaction was cancelled because one of its conditions did not hold."""
    if _code(error) != "TransactionCanceledException":
        return False
    return "ConditionalCheckFailed" in [r.get("Code") for r in error.response.get("CancellationReasons", [])]


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


class DynamoStateStore:
    """StateStore port over one DynamoDB table (partition key `pk`, sort key `sk`, both strings)."""

    def __init__(self, table_name: str, client: Any, *, ledger_ttl_days: int = 30) -> None:
        if not table_name:
            raise ValueError("DynamoStateStore needs a table name")
        self.table_name = table_name
        self._client = client
        self._ledger_ttl_s = ledger_ttl_days * 86_400

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _key(project_hash: str, sk: str) -> dict[str, Any]:
        return {"pk": _s(f"P#{project_hash}"), "sk": _s(sk)}

    def _get(self, project_hash: str, sk: str) -> dict[str, Any] | None:
        response = self._client.get_item(
            TableName=self.table_name, Key=self._key(project_hash, sk), ConsistentRead=True
        )
        item: dict[str, Any] | None = response.get("Item")
        return item

    def _query(self, project_hash: str, sk_prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self._client.get_paginator("query")
        pages = paginator.paginate(
            TableName=self.table_name,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": _s(f"P#{project_hash}"), ":prefix": _s(sk_prefix)},
            ConsistentRead=True,
        )
        for page in pages:
            yield from page.get("Items", [])

    def _ledger_ttl(self) -> dict[str, str]:
        return _n(int(time.time()) + self._ledger_ttl_s)

    def _store_blob(self, project_hash: str, raw: bytes) -> dict[str, Any]:
        """The attributes that hold `raw` in its item: inline, or a reference to part items."""
        packed = zlib.compress(raw, 6)
        if len(packed) <= INLINE_LIMIT:
            return {"blob": {"B": packed}}
        sha = hashlib.sha256(packed).hexdigest()
        parts = [packed[i : i + PART_SIZE] for i in range(0, len(packed), PART_SIZE)]
        for index, part in enumerate(parts):
            item = self._key(project_hash, f"BLOB#{sha}#{index:04d}")
            item.update({"data": {"B": part}, TTL_ATTRIBUTE: self._ledger_ttl()})
            self._client.put_item(TableName=self.table_name, Item=item)
        return {"blob_sha": _s(sha), "blob_parts": _n(len(parts))}

    def _load_blob(self, project_hash: str, item: dict[str, Any]) -> bytes:
        if "blob" in item:
            return zlib.decompress(item["blob"]["B"])
        sha, count = item["blob_sha"]["S"], int(item["blob_parts"]["N"])
        chunks: list[bytes] = []
        for index in range(count):
            part = self._get(project_hash, f"BLOB#{sha}#{index:04d}")
            if part is None:
                raise RuntimeError(f"blob part {index} of {sha} is missing (expired by TTL?)")
            chunks.append(part["data"]["B"])
        return zlib.decompress(b"".join(chunks))

    @staticmethod
    def _blob_update(attrs: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """SET and REMOVE clauses that replace whichever blob form the item held."""
        if "blob" in attrs:
            return "#blob = :blob", "REMOVE blob_sha, blob_parts", {":blob": attrs["blob"]}
        return (
            "blob_sha = :blob_sha, blob_parts = :blob_parts",
            "REMOVE #blob",
            {":blob_sha": attrs["blob_sha"], ":blob_parts": attrs["blob_parts"]},
        )

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        for start in range(0, len(requests), _BATCH_WRITE_MAX):
            pending: dict[str, Any] = {self.table_name: requests[start : start + _BATCH_WRITE_MAX]}
            for attempt in range(8):
                response = self._client.batch_write_item(RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 2.0))
            if pending:
                raise RuntimeError(f"DynamoDB left {len(pending[self.table_name])} writes unprocessed")

    def close(self) -> None:
        """Nothing to close (each call is a request); here so the CLI closes either kind of state."""

    # -- the lake this state belongs to (the CLI's check; see the module docstring) --------------

    _BINDING_KEY = {"pk": {"S": "LAKE"}, "sk": {"S": "BINDING"}}

    def lake_binding(self) -> LakeBinding | None:
        response = self._client.get_item(
            TableName=self.table_name, Key=self._BINDING_KEY, ConsistentRead=True
        )
        item = response.get("Item")
        if item is None:
            return None
        projects = tuple(sorted(item.get("projects", {}).get("SS", [])))
        return LakeBinding(item["lake_id"]["S"], item.get("location", {}).get("S", ""), projects)

    def bind_lake(self, binding: LakeBinding) -> None:
        item: dict[str, Any] = {
            **self._BINDING_KEY,
            "lake_id": _s(binding.lake_id),
            "location": _s(binding.location),
        }
        if binding.projects:
            item["projects"] = {"SS": sorted(set(binding.projects))}
        self._client.put_item(TableName=self.table_name, Item=item)

    # -- lease -----------------------------------------------------------------------------------

    def acquire_lease(self, project_hash: str, owner: str, now: datetime, ttl_s: int) -> bool:
        expires = now + timedelta(seconds=ttl_s)
        item = self._key(project_hash, "LEASE")
        item.update(
            {
                "owner": _s(owner),
                "expires_us": _n(_micros(expires)),
                "acquired_us": _n(_micros(now)),
                # DynamoDB's TTL sweeps late (up to days): the condition below, not TTL, decides expiry.
                TTL_ATTRIBUTE: _n(int(expires.timestamp()) + 1),
            }
        )
        try:
            self._client.put_item(
                TableName=self.table_name,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR #exp <= :now OR #owner = :owner",
                ExpressionAttributeNames={"#exp": "expires_us", "#owner": "owner"},
                ExpressionAttributeValues={":now": _n(_micros(now)), ":owner": _s(owner)},
            )
        except ClientError as error:
            if _code(error) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def release_lease(self, project_hash: str, owner: str) -> None:
        try:
            self._client.delete_item(
                TableName=self.table_name,
                Key=self._key(project_hash, "LEASE"),
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": _s(owner)},
            )
        except ClientError as error:
            # Someone else holds it now (ours expired) or nobody does: nothing of ours to release.
            if _code(error) != "ConditionalCheckFailedException":
                raise

    def get_lease(self, project_hash: str) -> Lease | None:
        item = self._get(project_hash, "LEASE")
        if item is None:
            return None
        acquired = _from_micros(int(item["acquired_us"]["N"])) if "acquired_us" in item else None
        return Lease(project_hash, item["owner"]["S"], acquired, _from_micros(int(item["expires_us"]["N"])))

    # -- watermark and run counter ---------------------------------------------------------------

    def get_watermark(self, project_hash: str) -> datetime | None:
        item = self._get(project_hash, "WATERMARK")
        return None if item is None else require_time(item["wm_iso"]["S"])

    def set_watermark(
        self, project_hash: str, value: datetime, *, rewind_from: datetime | None = None
    ) -> None:
        """Move the watermark to `value` unless it already stands later (a backwards move is a no-op), or
        stands exactly at `rewind_from`."""
        micros = _micros(value)
        condition = "attribute_not_exists(wm_us) OR wm_us <= :v"
        values = {":v": _n(micros), ":iso": _s(iso_utc(value))}
        if rewind_from is not None:
            condition += " OR wm_us = :from"
            values[":from"] = _n(_micros(rewind_from))
        try:
            self._client.update_item(
                TableName=self.table_name,
                Key=self._key(project_hash, "WATERMARK"),
                UpdateExpression="SET wm_us = :v, wm_iso = :iso",
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if _code(error) != "ConditionalCheckFailedException":
                raise

    def get_filters(self, project_hash: str) -> str | None:
        item = self._get(project_hash, "FILTERS")
        return None if item is None else str(item["fingerprint"]["S"])

    def set_filters(self, project_hash: str, fingerprint: str) -> None:
        item = self._key(project_hash, "FILTERS")
        item["fingerprint"] = _s(fingerprint)
        self._client.put_item(TableName=self.table_name, Item=item)

    def get_failure(self, project_hash: str) -> RunFailure | None:
        item = self._get(project_hash, "FAILURE")
        if item is None:
            return None
        run_id = item.get("run_id", {}).get("S")
        return RunFailure(project_hash, run_id, _from_micros(int(item["at_us"]["N"])), item["reason"]["S"])

    def set_failure(self, project_hash: str, failure: RunFailure | None) -> None:
        if failure is None:
            self._client.delete_item(TableName=self.table_name, Key=self._key(project_hash, "FAILURE"))
            return
        item = self._key(project_hash, "FAILURE")
        item.update({"at_us": _n(_micros(failure.at)), "reason": _s(failure.reason)})
        if failure.run_id is not None:
            item["run_id"] = _s(failure.run_id)
        self._client.put_item(TableName=self.table_name, Item=item)

    def next_run_number(self, project_hash: str) -> int:
        response = self._client.update_item(
            TableName=self.table_name,
            Key=self._key(project_hash, "COUNTER"),
            UpdateExpression="ADD run_number :one",
            ExpressionAttributeValues={":one": _n(1)},
            ReturnValues="UPDATED_NEW",
        )
        return int(response["Attributes"]["run_number"]["N"])

    # -- row index -------------------------------------------------------------------------------

    def _index_item(self, entry: IndexEntry) -> dict[str, Any]:
        item = self._key(entry.project_hash, f"IDX#{entry.label_hash}")
        item.update(
            {
                "label_hash": _s(entry.label_hash),
                "data_hash": _s(entry.data_hash),
                "branch": _s(entry.branch),
                "key": _s(entry.key),
                "partition_stage": _s(entry.partition_stage),
                "sha256": _s(entry.sha256),
                "etag": _s(entry.etag),
                "synced_at": _s(iso_utc(entry.synced_at)),
            }
        )
        if entry.task_status is not None:
            item["task_status"] = _s(entry.task_status)
        if entry.stage_uuid is not None:
            item["stage_uuid"] = _s(entry.stage_uuid)
        if entry.last_edited_at is not None:
            item["edited_us"] = _n(_micros(entry.last_edited_at))
            item["last_edited_at"] = _s(iso_utc(entry.last_edited_at))
        return item

    @staticmethod
    def _index_entry(project_hash: str, item: dict[str, Any]) -> IndexEntry:
        return IndexEntry(
            project_hash=project_hash,
            label_hash=item["label_hash"]["S"],
            data_hash=item["data_hash"]["S"],
            branch=item["branch"]["S"],
            key=item["key"]["S"],
            partition_stage=item["partition_stage"]["S"],
            last_edited_at=parse_time(item["last_edited_at"]["S"]) if "last_edited_at" in item else None,
            sha256=item["sha256"]["S"],
            etag=item["etag"]["S"],
            synced_at=require_time(item["synced_at"]["S"]),
            task_status=item["task_status"]["S"] if "task_status" in item else None,
            stage_uuid=item["stage_uuid"]["S"] if "stage_uuid" in item else None,
        )

    def get_index(self, project_hash: str, label_hash: str) -> IndexEntry | None:
        item = self._get(project_hash, f"IDX#{label_hash}")
        return None if item is None else self._index_entry(project_hash, item)

    def put_index(self, entry: IndexEntry) -> bool:
        # An unknown last_edited_at sorts before every known one: it never replaces a dated entry.
        condition = "attribute_not_exists(pk) OR attribute_not_exists(edited_us)"
        values: dict[str, Any] = {}
        if entry.last_edited_at is not None:
            condition += " OR edited_us <= :edited"
            values[":edited"] = _n(_micros(entry.last_edited_at))
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "Item": self._index_item(entry),
            "ConditionExpression": condition,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = values
        try:
            self._client.put_item(**kwargs)
        except ClientError as error:
            if _code(error) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def delete_index(self, project_hash: str, label_hash: str) -> None:
        self._client.delete_item(TableName=self.table_name, Key=self._key(project_hash, f"IDX#{label_hash}"))

    def scan_index(self, project_hash: str) -> Iterator[IndexEntry]:
        for item in self._query(project_hash, "IDX#"):
            yield self._index_entry(project_hash, item)

    # -- run ledger ------------------------------------------------------------------------------

    def create_run(self, run: RunRecord) -> None:
        if self._get(run.project_hash, f"RUN#{run.run_id}") is not None:
            return
        item = self._key(run.project_hash, f"RUN#{run.run_id}")
        item.update(self._store_blob(run.project_hash, encode_run(run)))
        item.update(
            {
                "kind": _s("run"),
                "total": _n(len(run.chunk_ids)),
                "done": _n(0),
                TTL_ATTRIBUTE: self._ledger_ttl(),
            }
        )
        try:
            self._client.put_item(
                TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        except ClientError as error:
            if _code(error) != "ConditionalCheckFailedException":  # the first create won: keep it
                raise

    def get_run(self, project_hash: str, run_id: str) -> RunRecord | None:
        item = self._get(project_hash, f"RUN#{run_id}")
        return None if item is None else decode_run(self._load_blob(project_hash, item))

    def _progress(self, project_hash: str, run_id: str) -> RunProgress:
        item = self._get(project_hash, f"RUN#{run_id}")
        if item is None:
            raise RunNotFoundError(project_hash, run_id)
        return RunProgress(done=int(item["done"]["N"]), total=int(item["total"]["N"]))

    def record_chunk(self, project_hash: str, result: ChunkResult) -> RunProgress:
        """Store the chunk's result; the run's `done` counter moves in the same transaction that
        first marks the chunk final, so redeliveries and concurrent deliveries count it once."""
        chunk_key = self._key(project_hash, f"RUN#{result.run_id}#CHUNK#{result.chunk_id}")
        set_blob, remove_blob, blob_values = self._blob_update(
            self._store_blob(project_hash, encode_outcomes(result.outcomes))
        )
        values = {
            **blob_values,
            ":kind": _s("chunk"),
            ":final": {"BOOL": result.final},
            ":false": {"BOOL": False},
            ":ttl": self._ledger_ttl(),
        }
        update = f"SET {set_blob}, #kind = :kind, #final = :final, #ttl = :ttl {remove_blob}"
        not_final = "attribute_not_exists(#final) OR #final = :false"
        # Several of these attribute names are DynamoDB reserved words (FINAL, TTL, BLOB).
        names = {"#ttl": TTL_ATTRIBUTE, "#blob": "blob", "#kind": "kind", "#final": "final"}
        if not result.final:
            try:
                self._client.update_item(
                    TableName=self.table_name,
                    Key=chunk_key,
                    UpdateExpression=update,
                    ConditionExpression=not_final,
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                )
            except ClientError as error:
                # A final result already closed this chunk: a late non-final delivery must not reopen it.
                if _code(error) != "ConditionalCheckFailedException":
                    raise
            return self._progress(project_hash, result.run_id)
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self.table_name,
                            "Key": chunk_key,
                            "UpdateExpression": update,
                            "ConditionExpression": not_final,
                            "ExpressionAttributeNames": names,
                            "ExpressionAttributeValues": values,
                        }
                    },
                    {
                        "Update": {
                            "TableName": self.table_name,
                            "Key": self._key(project_hash, f"RUN#{result.run_id}"),
                            "UpdateExpression": "ADD #done :one",
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeNames": {"#done": "done"},
                            "ExpressionAttributeValues": {":one": _n(1)},
                        }
                    },
                ]
            )
        except ClientError as error:
            if _code(error) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code") for r in error.response.get("CancellationReasons", [])]
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                raise RunNotFoundError(project_hash, result.run_id) from error
            if not reasons or reasons[0] != "ConditionalCheckFailed":
                raise
            # Already final (a redelivery): replace the stored result, leave the count alone.
            self._client.update_item(
                TableName=self.table_name,
                Key=chunk_key,
                UpdateExpression=update,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={k: v for k, v in values.items() if k != ":false"},
            )
        return self._progress(project_hash, result.run_id)

    def chunk_results(self, project_hash: str, run_id: str) -> list[ChunkResult]:
        prefix = f"RUN#{run_id}#CHUNK#"
        return [
            ChunkResult(
                run_id=run_id,
                chunk_id=item["sk"]["S"][len(prefix) :],
                outcomes=decode_outcomes(self._load_blob(project_hash, item)),
                final=bool(item["final"]["BOOL"]),
            )
            for item in self._query(project_hash, prefix)
        ]

    def begin_finalize(
        self, project_hash: str, run_id: str, token: str, now: datetime, ttl_s: int
    ) -> FinalizeClaim:
        """The claim lives on the run item (`fin_token`, `fin_expires_us`); `finalized_at` ends the run."""
        try:
            self._client.update_item(
                TableName=self.table_name,
                Key=self._key(project_hash, f"RUN#{run_id}"),
                UpdateExpression="SET fin_token = :token, fin_expires_us = :expires",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(finalized_at) AND"
                " (attribute_not_exists(fin_token) OR fin_token = :token OR fin_expires_us <= :now)",
                ExpressionAttributeValues={
                    ":token": _s(token),
                    ":expires": _n(_micros(now + timedelta(seconds=ttl_s))),
                    ":now": _n(_micros(now)),
                },
            )
        except ClientError as error:
            if _code(error) != "ConditionalCheckFailedException":
                raise
            item = self._get(project_hash, f"RUN#{run_id}")
            if item is None:
                raise RunNotFoundError(project_hash, run_id) from error
            return "finished" if "finalized_at" in item else "busy"
        return "claimed"

    def end_finalize(self, project_hash: str, run_id: str, token: str, *, finished: bool) -> None:
        key = self._key(project_hash, f"RUN#{run_id}")
        if finished:
            self._client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression="SET finalized_at = if_not_exists(finalized_at, :now)"
                " REMOVE fin_token, fin_expires_us",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":now": _s(iso_utc(datetime.now(UTC)))},
            )
            return
        try:
            self._client.update_item(
                TableName=self.table_name,
                Key=key,
                UpdateExpression="REMOVE fin_token, fin_expires_us",
                ConditionExpression="fin_token = :token",
                ExpressionAttributeValues={":token": _s(token)},
            )
        except ClientError as error:
            # Our claim expired and another finalizer holds the run now: nothing of ours to drop.
            if _code(error) != "ConditionalCheckFailedException":
                raise

    # -- outbox ----------------------------------------------------------------------------------------

    def _absent(self, project_hash: str, sk: str) -> dict[str, Any]:
        return {
            "ConditionCheck": {
                "TableName": self.table_name,
                "Key": self._key(project_hash, sk),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    def stage_events(self, project_hash: str, events: Sequence[SnapshotEvent]) -> None:
        for event in events:
            item = self._key(project_hash, f"OUTBOX#{event.event_id}")
            item.update(
                {
                    "snapshot_id": _s(event.snapshot_id),
                    "event": _s(encode_event(event).decode()),
                }
            )
            try:
                self._client.transact_write_items(
                    TransactItems=[
                        self._absent(project_hash, f"SENT#{event.event_id}"),
                        # Sent by a release that keyed events by their `event_key` (its marker ages out).
                        self._absent(project_hash, f"SENT#{event.event_key}"),
                        {
                            "Put": {
                                "TableName": self.table_name,
                                "Item": item,
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        },
                    ]
                )
            except ClientError as error:
                # Already pending or already sent: a retried finalizer records nothing new.
                if not _condition_failed(error):
                    raise

    def pending_events(self, project_hash: str) -> list[SnapshotEvent]:
        items = list(self._query(project_hash, "OUTBOX#"))
        older = [i for i in items if "/" in i["sk"]["S"]]  # ids hold no `/`, event keys do
        for item in older:
            self._rekey_pending(project_hash, item)
        if older:
            items = list(self._query(project_hash, "OUTBOX#"))
        items.sort(key=lambda i: (i["snapshot_id"]["S"], i["sk"]["S"]))
        return [decode_event(item["event"]["S"]) for item in items]

    def _rekey_pending(self, project_hash: str, item: dict[str, Any]) -> None:
        """Move an event an older release recorded under `OUTBOX#<event_key>` to `OUTBOX#<event_id>`, so
        it is published, and marked sent, under today's id; if it is pending or sent under its id already
        (a retry of its finalizer recorded it again), only the old entry goes."""
        event = decode_event(item["event"]["S"])
        old = {"TableName": self.table_name, "Key": self._key(project_hash, item["sk"]["S"])}
        moved = {**item, **self._key(project_hash, f"OUTBOX#{event.event_id}")}
        try:
            self._client.transact_write_items(
                TransactItems=[
                    self._absent(project_hash, f"SENT#{event.event_id}"),
                    {
                        "Put": {
                            "TableName": self.table_name,
                            "Item": moved,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {"Delete": old},
                ]
            )
        except ClientError as error:
            if not _condition_failed(error):
                raise
            self._client.delete_item(**old)

    def mark_events_sent(self, project_hash: str, event_ids: Sequence[str]) -> None:
        # Two writes per event in one transaction: never pending and sent, never neither.
        ids = sorted(set(event_ids))
        per_call = _TRANSACT_MAX // 2
        for start in range(0, len(ids), per_call):
            actions: list[dict[str, Any]] = []
            for event_id in ids[start : start + per_call]:
                sent = self._key(project_hash, f"SENT#{event_id}")
                sent[TTL_ATTRIBUTE] = self._ledger_ttl()
                actions.append({"Put": {"TableName": self.table_name, "Item": sent}})
                actions.append(
                    {
                        "Delete": {
                            "TableName": self.table_name,
                            "Key": self._key(project_hash, f"OUTBOX#{event_id}"),
                        }
                    }
                )
            self._client.transact_write_items(TransactItems=actions)

    # -- snapshot debts ---------------------------------------------------------------------------

    @staticmethod
    def _debt_sk(partition: Partition) -> str:
        return f"DEBT#{quote(partition.branch, safe='')}/{partition.stage}"

    def owe_snapshots(self, debts: Sequence[SnapshotDebt]) -> None:
        for debt in debts:
            item = self._key(debt.partition.project_hash, self._debt_sk(debt.partition))
            item.update(
                {
                    "branch": _s(debt.partition.branch),
                    "stage": _s(debt.partition.stage),
                    "run_id": _s(debt.run_id),
                    "reason": _s(debt.reason),
                }
            )
            self._client.put_item(TableName=self.table_name, Item=item)

    def owed_snapshots(self, project_hash: str) -> list[SnapshotDebt]:
        debts = [
            SnapshotDebt(
                Partition(project_hash, item["branch"]["S"], item["stage"]["S"]),
                item["run_id"]["S"],
                item["reason"]["S"],
            )
            for item in self._query(project_hash, "DEBT#")
        ]
        return sorted(debts, key=lambda d: d.partition)

    def settle_snapshots(self, debts: Sequence[SnapshotDebt]) -> None:
        for debt in debts:
            try:
                self._client.delete_item(
                    TableName=self.table_name,
                    Key=self._key(debt.partition.project_hash, self._debt_sk(debt.partition)),
                    ConditionExpression="run_id = :run",
                    ExpressionAttributeValues={":run": _s(debt.run_id)},
                )
            except ClientError as error:
                # Owed again since it was read (or already settled): what is there now stays.
                if _code(error) != "ConditionalCheckFailedException":
                    raise

    # -- gaps ------------------------------------------------------------------------------------

    def add_gaps(self, gaps: Sequence[Gap]) -> None:
        latest: dict[tuple[str, str], Gap] = {(g.project_hash, g.label_hash): g for g in gaps}
        requests = []
        for gap in latest.values():
            item = self._key(gap.project_hash, f"GAP#{gap.label_hash}")
            item.update(
                {
                    "label_hash": _s(gap.label_hash),
                    "run_id": _s(gap.run_id),
                    "reason": _s(gap.reason),
                }
            )
            if gap.last_edited_at is not None:
                item["last_edited_at"] = _s(iso_utc(gap.last_edited_at))
            requests.append({"PutRequest": {"Item": item}})
        self._batch_write(requests)

    def clear_gaps(self, project_hash: str, label_hashes: Sequence[str]) -> None:
        keys = sorted(set(label_hashes))
        self._batch_write(
            [{"DeleteRequest": {"Key": self._key(project_hash, f"GAP#{label_hash}")}} for label_hash in keys]
        )

    def list_gaps(self, project_hash: str) -> list[Gap]:
        return [
            Gap(
                project_hash=project_hash,
                label_hash=item["label_hash"]["S"],
                last_edited_at=parse_time(item["last_edited_at"]["S"]) if "last_edited_at" in item else None,
                run_id=item["run_id"]["S"],
                reason=item["reason"]["S"],
            )
            for item in self._query(project_hash, "GAP#")
        ]
