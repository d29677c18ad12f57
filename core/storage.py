"""Object storage behind one small interface: `file://DIR` (default) or `s3://bucket/prefix`.

Writers take bytes in pieces, so an export or archive never holds a whole file in memory:
files are appended to, S3 objects are sent as a multipart upload (8 MiB parts). Download links:
S3 presigned URLs; for files, links to our own API signed with HMAC and an expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlparse

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from core.settings import Settings

PART_BYTES = 8 * 1024 * 1024
log = logging.getLogger(__name__)


class Writer(Protocol):
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...
    async def abort(self) -> None: ...


class Storage(Protocol):
    async def writer(self, key: str) -> Writer: ...
    async def read(self, key: str) -> bytes: ...
    async def exists(self, key: str) -> bool: ...
    async def delete(self, key: str) -> None: ...
    async def delete_older_than(self, prefix: str, age: timedelta) -> int: ...
    def download_url(self, key: str, expires: datetime) -> str: ...


LINK_LIFETIME_S = 7 * 86400  # the platform's spec: report links live 7 days
CLOCK_SKEW_S = 300


def _safe(key: str) -> str:
    if key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"bad object key {key!r}")
    return key


class FileStorage:
    def __init__(self, root: Path, signing_key: bytes, public_base: str) -> None:
        self.root = root.resolve()
        self._key = signing_key
        self._base = public_base.rstrip("/")

    def path(self, key: str) -> Path:
        return self.root / _safe(key)

    async def writer(self, key: str) -> Writer:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        handle = await asyncio.to_thread(partial.open, "wb")
        return _FileWriter(handle, partial, target)

    async def read(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path(key).read_bytes)

    async def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path(key).unlink, True)

    async def delete_older_than(self, prefix: str, age: timedelta) -> int:
        cutoff = time.time() - age.total_seconds()

        def sweep() -> int:
            removed = 0
            base = self.path(prefix)
            for file in base.rglob("*") if base.exists() else []:
                if file.is_file() and file.stat().st_mtime < cutoff:
                    file.unlink()
                    removed += 1
            return removed

        return await asyncio.to_thread(sweep)

    def signature(self, key: str, expires: int) -> str:
        return hmac.new(self._key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def download_url(self, key: str, expires: datetime) -> str:
        stamp = min(int(expires.timestamp()), int(time.time()) + LINK_LIFETIME_S)
        return (
            f"{self._base}/v1/analytics/downloads/{quote(key)}"
            f"?expires={stamp}&signature={self.signature(key, stamp)}"
        )

    def verify(self, key: str, expires: str, signature: str) -> bool:
        """A link is good until `expires` (Unix seconds, ASCII digits), never more than
        LINK_LIFETIME_S ahead: a link signed for longer was not made by us."""
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
            return False
        stamp = int(expires)
        now = time.time()
        if stamp < now or stamp > now + LINK_LIFETIME_S + CLOCK_SKEW_S:
            return False
        return hmac.compare_digest(self.signature(key, stamp).encode(), signature.encode())


class _FileWriter:
    def __init__(self, handle: Any, partial: Path, target: Path) -> None:
        self._handle, self._partial, self._target = handle, partial, target

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._handle.write, data)

    async def close(self) -> None:
        await asyncio.to_thread(self._handle.close)
        # Readers never see half a file. Off the loop: replacing an existing file makes ext4
        # write the new one out first (auto_da_alloc), 0.1 s for a 100 MB export.
        await asyncio.to_thread(os.replace, self._partial, self._target)

    async def abort(self) -> None:
        await asyncio.to_thread(self._handle.close)
        self._partial.unlink(missing_ok=True)


class S3Storage:
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = boto3.client("s3", endpoint_url=endpoint_url or None)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{_safe(key)}" if self.prefix else _safe(key)

    async def ensure_bucket(self) -> bool:
        """Create the bucket when it is missing (S3_CREATE_BUCKET); True if this call made it.
        Several processes starting at once may race: the loser finds it owned and goes on."""
        try:
            await asyncio.to_thread(self._client.head_bucket, Bucket=self.bucket)
            return False
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
        region = self._client.meta.region_name
        where = (
            {"CreateBucketConfiguration": {"LocationConstraint": region}}
            if region and region != "us-east-1"
            else {}
        )
        try:
            await asyncio.to_thread(self._client.create_bucket, Bucket=self.bucket, **where)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise
            return False
        return True

    async def writer(self, key: str) -> Writer:
        full = self._key(key)
        upload = await asyncio.to_thread(
            self._client.create_multipart_upload, Bucket=self.bucket, Key=full
        )
        return _S3Writer(self._client, self.bucket, full, upload["UploadId"])

    async def read(self, key: str) -> bytes:
        answer = await asyncio.to_thread(
            self._client.get_object, Bucket=self.bucket, Key=self._key(key)
        )
        body: bytes = await asyncio.to_thread(answer["Body"].read)
        return body

    async def exists(self, key: str) -> bool:
        try:
            await asyncio.to_thread(
                self._client.head_object, Bucket=self.bucket, Key=self._key(key)
            )
        except ClientError:
            return False
        return True

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._client.delete_object, Bucket=self.bucket, Key=self._key(key))

    async def delete_older_than(self, prefix: str, age: timedelta) -> int:
        cutoff = datetime.now(UTC) - age

        def sweep() -> int:
            removed = 0
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                old = [o["Key"] for o in page.get("Contents", []) if o["LastModified"] < cutoff]
                for batch in _chunks(old, 1000):
                    self._client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch]}
                    )
                    removed += len(batch)
            return removed

        return await asyncio.to_thread(sweep)

    def download_url(self, key: str, expires: datetime) -> str:
        seconds = max(1, int((expires - datetime.now(UTC)).total_seconds()))
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=seconds
        )
        return url


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for at in range(0, len(items), size):
        yield items[at : at + size]


class _S3Writer:
    def __init__(self, client: Any, bucket: str, key: str, upload_id: str) -> None:
        self._client, self._bucket, self._key, self._upload = client, bucket, key, upload_id
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= PART_BYTES:
            await self._send()

    async def _send(self) -> None:
        number = len(self._parts) + 1
        answer = await asyncio.to_thread(
            self._client.upload_part,
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload,
            PartNumber=number,
            Body=bytes(self._buffer),
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._buffer.clear()

    async def close(self) -> None:
        if self._buffer or not self._parts:
            await self._send()
        await asyncio.to_thread(
            self._client.complete_multipart_upload,
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload,
            MultipartUpload={"Parts": self._parts},
        )

    async def abort(self) -> None:
        await asyncio.to_thread(
            self._client.abort_multipart_upload,
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload,
        )


def open_storage(url: str, *, endpoint_url: str, signing_key: bytes, public_base: str) -> Storage:
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Storage(parsed.netloc, parsed.path, endpoint_url)
    path = Path(url.removeprefix("file://"))
    return FileStorage(path, signing_key, public_base)


def storage_for(settings: Settings) -> Storage:
    """The storage of `settings` (its bucket is made at start by `prepare_storage`)."""
    return open_storage(
        settings.storage_url,
        endpoint_url=settings.s3_endpoint_url,
        signing_key=settings.require_download_key(),
        public_base=settings.base_url,
    )


async def prepare_storage(settings: Settings, storage: Storage) -> None:
    """With S3_CREATE_BUCKET, the bucket is created when missing; an unreachable or forbidden
    bucket stops the start-up with the reason, rather than failing every export later."""
    if settings.s3_create_bucket and isinstance(storage, S3Storage):
        try:
            if await storage.ensure_bucket():
                log.info("created bucket %s", storage.bucket)
        except (ClientError, BotoCoreError) as error:
            raise StorageError(
                f"S3_CREATE_BUCKET: cannot create bucket {storage.bucket!r}: {error}"
            ) from error


class StorageError(Exception):
    """The object storage cannot be used as configured."""
