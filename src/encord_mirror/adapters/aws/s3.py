"""The lake on S3: conditional writes with `If-Match` / `If-None-Match: *` (S3 supports both on PutObject,
and `If-None-Match` on CompleteMultipartUpload, which `put_stream` uses for objects of any size)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO, cast

from botocore.exceptions import ClientError

from encord_mirror.domain.models import StoredObject
from encord_mirror.domain.ports import PreconditionFailedError

# 412 is the lost condition; 409 ConditionalRequestConflict is a concurrent conditional write on the
# same key in flight; a 404 on an `If-Match` write means the object we matched against is gone.
_LOST_CONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}


def _error_code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: Any) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _bare_etag(etag: str) -> str:
    return etag.strip('"')


# A multipart upload's parts are 5 MiB at least (but the last); 16 MiB keeps a 10 GB object within the
# 10,000-part limit while a streamed write holds one part at a time.
PART_SIZE = 16 * 1024 * 1024


def _raise_lost_condition(error: Any, key: str, *, if_match: bool) -> None:
    code, status = _error_code(error), _status(error)
    if code in _LOST_CONDITION_CODES or status in {409, 412}:
        raise PreconditionFailedError(key) from error
    if if_match and (code == "NoSuchKey" or status == 404):
        raise PreconditionFailedError(key) from error


def _parts(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The chunks regrouped into parts of `size` bytes (the last may be smaller)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


RETRY_MODES = ("legacy", "standard", "adaptive")


class S3ClientConfigError(ValueError):
    """`AWS_RETRY_MODE` or `AWS_MAX_ATTEMPTS` holds a value botocore does not take."""


def s3_client(environ: Mapping[str, str] = os.environ) -> Any:
    """The S3 client of the CLI and the reader: botocore's `standard` retry mode with 10 attempts (a lake
    run makes thousands of requests, and botocore's default of 3 legacy attempts lets a burst of 503 Slow
    Down fail a sync), 10 s to connect, 60 s to read. `AWS_RETRY_MODE` and `AWS_MAX_ATTEMPTS` (botocore's
    own variables) override the retries; credentials, region and `AWS_ENDPOINT_URL` come from boto3's usual
    places."""
    return cli_client("s3", environ)


def cli_client(service: str, environ: Mapping[str, str] = os.environ) -> Any:
    """A boto3 client of the CLI for `service` (`s3`, or `dynamodb` for `--state dynamodb://TABLE`),
    configured as `s3_client` says."""
    import boto3
    from botocore.config import Config

    mode = environ.get("AWS_RETRY_MODE") or "standard"
    attempts = environ.get("AWS_MAX_ATTEMPTS") or "10"
    if mode not in RETRY_MODES:
        raise S3ClientConfigError(f"AWS_RETRY_MODE={mode!r}: botocore takes {', '.join(RETRY_MODES)}")
    if not attempts.isdigit() or int(attempts) < 1:
        raise S3ClientConfigError(f"AWS_MAX_ATTEMPTS={attempts!r}: a whole number of attempts, at least 1")
    config = Config(
        retries={"mode": mode, "total_max_attempts": int(attempts)},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client(service, config=config)


class S3ObjectStore:
    """ObjectStore port over one bucket and key prefix. Encryption follows the bucket's default (SSE)."""

    def __init__(
        self, bucket: str, prefix: str, client: Any, *, page_size: int = 1000, part_size: int = PART_SIZE
    ) -> None:
        if not bucket:
            raise ValueError("S3ObjectStore needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self._page_size = page_size  # ListObjectsV2's own maximum; smaller only to test paging
        self._part_size = part_size  # smaller only to test multipart writes with small bodies

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _get_object(self, key: str) -> dict[str, Any] | None:
        try:
            return cast(dict[str, Any], self._client.get_object(Bucket=self.bucket, Key=self._full(key)))
        except ClientError as error:
            if _error_code(error) in {"NoSuchKey", "404"} or _status(error) == 404:
                return None
            raise

    def get(self, key: str) -> StoredObject | None:
        response = self._get_object(key)
        if response is None:
            return None
        body: bytes = response["Body"].read()
        return StoredObject(body=body, etag=_bare_etag(str(response["ETag"])))

    def open(self, key: str) -> BinaryIO | None:
        response = self._get_object(key)
        return None if response is None else cast(BinaryIO, response["Body"])

    def put(
        self,
        key: str,
        body: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": self._full(key),
            "Body": body,
            "ContentType": content_type,
        }
        if if_match is not None:
            kwargs["IfMatch"] = f'"{_bare_etag(if_match)}"'
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        try:
            response = self._client.put_object(**kwargs)
        except ClientError as error:
            _raise_lost_condition(error, key, if_match=if_match is not None)
            raise
        return _bare_etag(str(response["ETag"]))

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        if_none_match: bool = False,
        content_type: str = "application/json",
    ) -> str:
        parts = _parts(chunks, self._part_size)
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:  # small enough for one PutObject
            return self.put(key, first, if_none_match=if_none_match, content_type=content_type)
        full = self._full(key)
        upload_id = self._client.create_multipart_upload(
            Bucket=self.bucket, Key=full, ContentType=content_type
        )["UploadId"]
        try:
            done = []
            for number, body in enumerate(itertools.chain((first, second), parts), start=1):
                part = self._client.upload_part(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=body
                )
                done.append({"PartNumber": number, "ETag": part["ETag"]})
            kwargs: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
            response = self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": done}, **kwargs
            )
        except BaseException as exc:
            # An abandoned upload costs storage until the bucket's lifecycle rule aborts it: abort now.
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            if isinstance(exc, ClientError):
                _raise_lost_condition(exc, key, if_match=False)
            raise
        return _bare_etag(str(response["ETag"]))

    def delete(self, key: str) -> None:
        # S3 answers 204 for a missing key too, so the port's idempotence comes for free.
        self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def list_keys(self, prefix: str) -> Iterator[str]:
        for key, _etag in self.list_etags(prefix):
            yield key

    def list_etags(self, prefix: str) -> Iterator[tuple[str, str]]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self._full(prefix), PaginationConfig={"PageSize": self._page_size}
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield self._relative(str(item["Key"])), _bare_etag(str(item["ETag"]))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"
