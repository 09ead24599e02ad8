"""The lake on S3: conditional writes with `If-Match` / `If-None-Match: *` (S3 supports both on PutObject)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


class S3ObjectStore:
    """ObjectStore port over one bucket and key prefix. Encryption follows the bucket's default (SSE)."""

    def __init__(self, bucket: str, prefix: str, client: Any, *, page_size: int = 1000) -> None:
        if not bucket:
            raise ValueError("S3ObjectStore needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self._page_size = page_size  # ListObjectsV2's own maximum; smaller only to test paging

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def get(self, key: str) -> StoredObject | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
        except ClientError as error:
            if _error_code(error) in {"NoSuchKey", "404"} or _status(error) == 404:
                return None
            raise
        body: bytes = response["Body"].read()
        return StoredObject(body=body, etag=_bare_etag(str(response["ETag"])))

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
            code, status = _error_code(error), _status(error)
            if code in _LOST_CONDITION_CODES or status in {409, 412}:
                raise PreconditionFailedError(key) from error
            if if_match is not None and (code == "NoSuchKey" or status == 404):
                raise PreconditionFailedError(key) from error
            raise
        return _bare_etag(str(response["ETag"]))

    def delete(self, key: str) -> None:
        # S3 answers 204 for a missing key too, so the port's idempotence comes for free.
        self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self._full(prefix), PaginationConfig={"PageSize": self._page_size}
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield self._relative(str(item["Key"]))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"
