"""Encrypted blobs in an S3-compatible bucket (AWS S3, an EU provider, Ceph RGW).

An upload is one multipart upload, created for the blob's final key when the upload starts and
completed by `publish` inside the publishing transaction: until then nothing is listed or
readable, and an abort (or a crash, then the sweep) leaves nothing. Its memory is bounded: the
part being filled and at most one part in flight; there is no local temporary file. A download
is one streaming GET read ahead in a thread; a seek restarts it. Every call blocks, so the core
calls these methods in threads (the at-rest worker, the request threads), never on the loop.
Credentials come the standard AWS way (environment, shared files, instance role).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

from ...config.settings import StorageSettings
from ..errors import LimitReached, NotFound
from .s3reader import S3Reader, error_code, missing, unavailable
from .storage import _KEY, _TEMP, TempBlob

log = logging.getLogger("sluis.storage")

PART_THREADS = 16          # parts in flight, all uploads together (each has at most one)


def make_client(settings: StorageSettings) -> Any:
    """A boto3 S3 client (thread-safe) for the settings; path-style addressing on an own endpoint."""
    import boto3
    from botocore.config import Config

    config = Config(region_name=settings.region or None, retries={"max_attempts": 5, "mode": "standard"},
                    connect_timeout=10, read_timeout=60, max_pool_connections=PART_THREADS + 32,
                    s3={"addressing_style": "path"} if settings.endpoint_url else None,
                    # checksums only where S3 requires them: stores such as Ceph RGW refuse others
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=settings.endpoint_url or None, config=config)


class _S3Temp:
    """One multipart upload being written (in the upload's at-rest worker thread)."""

    def __init__(self, storage: S3Storage, temp_key: str, target: str, upload_id: str) -> None:
        self.key = temp_key
        self.target = target
        self.upload_id = upload_id
        self._storage = storage
        self._object = storage.object_key(target)
        self._buf = bytearray()            # the part being filled
        self._parts: list[dict[str, Any]] = []
        self._inflight: Future[dict[str, Any]] | None = None
        self._inflight_size = 0
        self.peak = 0                      # most bytes this upload held at once (tests, bench)
        self.completed = False

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        size = len(view)
        while view:
            room = self._storage.part_size - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            self._note_peak()
            if len(self._buf) >= self._storage.part_size:
                self._send()
        return size

    def flush(self) -> None:
        """Nothing to hand over early: S3 takes whole parts (at least 5 MiB but the last)."""

    def sync(self) -> None:
        """Send the last part and wait for every part: afterwards `complete` can publish."""
        if self._buf or not self._parts and self._inflight is None:
            self._send()
        self._wait_inflight()

    def close(self) -> None:
        """Drop the filling part and let the part in flight end (an abort follows: discard)."""
        self._buf = bytearray()
        inflight, self._inflight = self._inflight, None
        if inflight is not None and not inflight.cancel():
            try:
                inflight.result()
            except Exception:
                pass    # the upload is being dropped; its abort says whether the store answers

    def complete(self) -> None:
        """CompleteMultipartUpload: from now on the object is whole and readable."""
        if self._inflight is not None or self._buf:
            raise RuntimeError("complete() before sync(): parts are still pending")
        request = {"Bucket": self._storage.bucket, "Key": self._object, "UploadId": self.upload_id,
                   "MultipartUpload": {"Parts": self._parts}}
        try:
            if self._storage.conditional_writes:   # never over another blob (keys are unique anyway)
                try:
                    self._storage.client.complete_multipart_upload(**request, IfNoneMatch="*")
                    self.completed = True
                    return
                except Exception as exc:
                    if error_code(exc) not in ("NotImplemented", "501"):
                        raise
                    self._storage.conditional_writes = False
                    log.warning("object store: no conditional writes (If-None-Match); completing without")
            self._storage.client.complete_multipart_upload(**request)
        except Exception as exc:
            raise unavailable("completing the upload", exc) from exc
        self.completed = True

    def _send(self) -> None:
        """Hand the filled part over (no copy) once the part in flight is done."""
        part, self._buf = self._buf, bytearray()
        self._wait_inflight()
        number = len(self._parts) + 1
        self._inflight_size = len(part)
        self._note_peak()
        self._inflight = self._storage.parts.submit(self._upload_part, number, part)

    def _upload_part(self, number: int, part: bytearray) -> dict[str, Any]:
        response = self._storage.client.upload_part(
            Bucket=self._storage.bucket, Key=self._object, UploadId=self.upload_id, PartNumber=number,
            Body=part, ContentLength=len(part))
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _wait_inflight(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        try:
            self._parts.append(inflight.result())
        except Exception as exc:
            raise unavailable("uploading a part", exc) from exc
        finally:
            self._inflight_size = 0

    def _note_peak(self) -> None:
        self.peak = max(self.peak, len(self._buf) + self._inflight_size)


class S3Storage:
    """Blobs as objects `PREFIX + key` in one bucket; temporaries as multipart uploads there."""

    def __init__(self, settings: StorageSettings, client: Any | None = None, *, max_readers: int = 64) -> None:
        self.bucket = settings.bucket
        # Each open download holds a reader thread and its read-ahead: a process-wide cap
        # ([limits] store_readers), whatever the number of connections, channels and handles.
        self.max_readers = max_readers
        self._readers = threading.BoundedSemaphore(max_readers)
        self.prefix = settings.prefix
        self.part_size = settings.part_size
        self.orphan_grace = float(settings.orphan_grace)
        self.conditional_writes = True   # False once the store answered If-None-Match with 501
        self.client = client if client is not None else make_client(settings)
        self.parts = ThreadPoolExecutor(max_workers=PART_THREADS, thread_name_prefix="sluis-s3-part")
        self._live: dict[str, _S3Temp] = {}     # this process's uploads by temp key
        self._lock = threading.Lock()

    def object_key(self, key: str) -> str:
        if not _KEY.match(key):
            raise ValueError(f"malformed storage key {key!r}")
        return self.prefix + key

    def create_temp(self, temp_key: str, key: str) -> _S3Temp:
        if not _TEMP.match(temp_key) or not key.endswith("/" + temp_key):
            raise ValueError(f"temporary key {temp_key!r} does not name the blob {key!r}")
        obj = self.object_key(key)
        try:
            response = self.client.create_multipart_upload(Bucket=self.bucket, Key=obj)
        except Exception as exc:
            raise unavailable("starting the upload", exc) from exc
        temp = _S3Temp(self, temp_key, key, response["UploadId"])
        with self._lock:
            self._live[temp_key] = temp
        return temp

    def publish(self, temp: TempBlob, key: str) -> None:
        """Complete the multipart upload (the caller's transaction commits only if this worked)."""
        if not isinstance(temp, _S3Temp) or temp.target != key:
            raise ValueError(f"the upload was started for another key than {key!r}")
        temp.complete()
        with self._lock:
            self._live.pop(temp.key, None)

    def discard(self, temp_key: str) -> bool:
        """Abort the temporary's multipart upload(s): nothing of it stays in the bucket."""
        with self._lock:
            temp = self._live.pop(temp_key, None)
        if temp is not None:
            temp.close()
            targets = [(self.object_key(temp.target), temp.upload_id)]
        else:
            targets = [(key, upload) for key, upload, _ in self._uploads() if key.endswith("/" + temp_key)]
        aborted = False
        for key, upload_id in targets:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                aborted = True
            except Exception as exc:
                if not missing(exc):
                    raise unavailable("aborting an upload", exc) from exc
        return aborted

    def open_read(self, key: str) -> S3Reader:
        """A streaming reader, if a reader slot is free: else LimitReached (the front end audits
        it as `sftp.limit`; the client may try again once another download has closed)."""
        if not self._readers.acquire(blocking=False):
            allowed = self.max_readers
            raise LimitReached(f"too many downloads from the file store at once on this server (at most "
                               f"{allowed}); try again shortly ([limits] store_readers)",
                               limit="store_readers", value=allowed + 1, allowed=allowed)
        try:
            return S3Reader(self.client, self.bucket, self.object_key(key), on_end=self._readers.release)
        except BaseException:
            self._readers.release()
            raise

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))["ContentLength"])
        except Exception as exc:
            if missing(exc):
                raise NotFound("the file is no longer stored") from None
            raise unavailable("reading a file's size", exc) from exc

    def delete(self, key: str) -> bool:
        """Delete the object; False if it was not there (S3's DELETE itself does not say)."""
        obj = self.object_key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=obj)
        except Exception as exc:
            if missing(exc):
                return False
            raise unavailable("looking up a file", exc) from exc
        try:
            self.client.delete_object(Bucket=self.bucket, Key=obj)
        except Exception as exc:
            raise unavailable("deleting a file", exc) from exc
        return True

    def temp_keys(self) -> list[str]:
        """Temporary keys of the multipart uploads in progress under the prefix (any node's)."""
        return sorted({key.rsplit("/", 1)[1] for key, _, _ in self._uploads()})

    def keys(self) -> list[str]:
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                               Prefix=self.prefix):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix):]
                    if _KEY.match(key):
                        keys.append(key)
        except Exception as exc:
            raise unavailable("listing files", exc) from exc
        return sorted(keys)

    def _uploads(self) -> Iterator[tuple[str, str, Any]]:
        """(object key, upload id, initiated) of every multipart upload under the prefix."""
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                     Prefix=self.prefix):
                for item in page.get("Uploads", []):
                    if _KEY.match(item["Key"][len(self.prefix):]):
                        yield item["Key"], item["UploadId"], item.get("Initiated")
        except Exception as exc:
            raise unavailable("listing uploads", exc) from exc
