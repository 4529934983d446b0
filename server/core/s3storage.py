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
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

from ...config.settings import StorageSettings
from ..errors import NotFound, StorageUnavailable
from .storage import _KEY, _TEMP, TempBlob

log = logging.getLogger("sluis.storage")

READ_CHUNK = 256 << 10     # bytes one read of the GET stream takes
READ_AHEAD = 4 << 20       # read ahead of the furthest byte asked for
READ_BEHIND = 1 << 20      # kept behind it, for reads that arrive a little out of order
REMOVED_CHECK = 1.0        # seconds between checks that an open blob still exists
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


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def _missing(exc: BaseException) -> bool:
    return _code(exc) in ("NoSuchKey", "NoSuchUpload", "404", "NotFound")


def _unavailable(what: str, exc: BaseException) -> StorageUnavailable:
    log.warning("object store: %s failed: %s", what, exc)
    return StorageUnavailable(f"the file store is unavailable ({what} failed); nothing was published, "
                              "try again later")


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

    def write(self, data: bytes) -> int:
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
        try:
            self._storage.client.complete_multipart_upload(
                Bucket=self._storage.bucket, Key=self._object, UploadId=self.upload_id,
                MultipartUpload={"Parts": self._parts}, IfNoneMatch="*")   # never over another blob
        except Exception as exc:
            raise _unavailable("completing the upload", exc) from exc
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
            raise _unavailable("uploading a part", exc) from exc
        finally:
            self._inflight_size = 0

    def _note_peak(self) -> None:
        self.peak = max(self.peak, len(self._buf) + self._inflight_size)


class _S3Reader:
    """One streaming GET of a blob, read ahead in its own thread into a bounded buffer."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self._storage = storage
        self._object = storage.object_key(key)
        try:
            response = storage.client.get_object(Bucket=storage.bucket, Key=self._object)
        except Exception as exc:
            if _missing(exc):
                raise NotFound("the file is no longer stored") from None
            raise _unavailable("opening the file", exc) from exc
        self.size: int = response["ContentLength"]
        self._etag: str = response["ETag"]
        self._body: Any = response["Body"]
        self.gets = 1                   # GET requests made (tests: one per stream, not per read)
        self._cond = threading.Condition()
        self._base = 0                  # offset of _buf[0]
        self._buf = bytearray()
        self._eof = self.size == 0
        self._demand = 0                # furthest byte asked for: read ahead of it
        self._served = 0                # furthest byte returned: keep READ_BEHIND behind it
        self._seek: int | None = None   # a restart the reader thread is asked to make
        self._error: BaseException | None = None
        self._removed = False
        self._closed = False
        self._checked = time.monotonic()
        threading.Thread(target=self._run, name="sluis-s3-read", daemon=True).start()

    # --- the request side ------------------------------------------------------------------
    def read_now(self, offset: int, size: int) -> bytes | None:
        """The bytes, if they are buffered already (never waits: callable on the event loop)."""
        with self._cond:
            return self._take(offset, size)

    def read_at(self, offset: int, size: int) -> bytes:
        """The bytes, waiting for the stream (or restarting it at `offset`: a seek)."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                data = self._take(offset, size)
                if data is not None:
                    return data
                if self._seek is None and (offset < self._base or offset > self._end + READ_AHEAD):
                    self._seek = offset
                self._demand = max(self._demand, min(offset + size, self.size))
                self._cond.notify_all()
                self._cond.wait(REMOVED_CHECK)

    def removed(self) -> bool:
        return self._removed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._buf = bytearray()
            self._cond.notify_all()

    @property
    def _end(self) -> int:
        return self._base + len(self._buf)

    def _take(self, offset: int, size: int) -> bytes | None:   # under _cond
        if offset >= self.size:
            return b""
        end = min(offset + size, self.size)
        if self._seek is not None or not (self._base <= offset and end <= self._end):
            return None
        data = bytes(self._buf[offset - self._base:end - self._base])
        self._served = max(self._served, end)
        if end > self._demand:
            self._demand = end
            self._cond.notify_all()     # room ahead: the reader thread may read on
        return data

    # --- the reader thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as exc:   # kept for the next read: never lost
            with self._cond:
                self._error = exc if isinstance(exc, (NotFound, StorageUnavailable)) else \
                    _unavailable("reading the file", exc)
                self._cond.notify_all()
        finally:
            self._body.close()

    def _full(self) -> bool:   # under _cond
        return self._eof or self._end >= self._demand + READ_AHEAD

    def _step(self) -> bool:
        """Read one chunk ahead (or restart the GET, or look whether the blob still exists)."""
        with self._cond:
            while not self._closed and self._seek is None and self._full():
                self._cond.wait(REMOVED_CHECK)
                if time.monotonic() - self._checked >= REMOVED_CHECK:
                    break
            if self._closed:
                return False
            seek, self._seek = self._seek, None
        if time.monotonic() - self._checked >= REMOVED_CHECK:
            self._check_removed()
        if seek is not None:
            self._restart(seek)
        with self._cond:
            if self._closed or self._seek is not None or self._full():
                return not self._closed
            body = self._body
        chunk = body.read(READ_CHUNK)
        with self._cond:
            if self._seek is not None or self._closed:
                return not self._closed    # a seek came meanwhile: this chunk is stale
            if chunk:
                self._buf += chunk
            if not chunk or self._end >= self.size:
                self._eof = True
            behind = min(self._served - READ_BEHIND - self._base, len(self._buf))
            if behind > 0:
                del self._buf[:behind]
                self._base += behind
            self._cond.notify_all()
        return True

    def _restart(self, offset: int) -> Any:
        """A new GET from `offset` (of the same object: If-Match its ETag)."""
        self._body.close()
        try:
            response = self._storage.client.get_object(
                Bucket=self._storage.bucket, Key=self._object, Range=f"bytes={offset}-", IfMatch=self._etag)
        except Exception as exc:
            if _missing(exc) or _code(exc) == "PreconditionFailed":
                self._removed = True
                raise NotFound("the file is no longer stored") from None
            raise
        with self._cond:
            self.gets += 1
            self._body = response["Body"]
            self._base, self._buf, self._eof = offset, bytearray(), offset >= self.size
            self._demand = self._served = offset
            return self._body

    def _check_removed(self) -> None:
        self._checked = time.monotonic()
        try:
            self._storage.client.head_object(Bucket=self._storage.bucket, Key=self._object,
                                             IfMatch=self._etag)
        except Exception as exc:
            if _missing(exc) or _code(exc) in ("PreconditionFailed", "412"):
                self._removed = True
            # any other failure: the stream itself will say whether the store answers


class S3Storage:
    """Blobs as objects `PREFIX + key` in one bucket; temporaries as multipart uploads there."""

    def __init__(self, settings: StorageSettings, client: Any | None = None) -> None:
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.part_size = settings.part_size
        self.orphan_grace = float(settings.orphan_grace)
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
            raise _unavailable("starting the upload", exc) from exc
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
                if not _missing(exc):
                    raise _unavailable("aborting an upload", exc) from exc
        return aborted

    def open_read(self, key: str) -> _S3Reader:
        return _S3Reader(self, key)

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))["ContentLength"])
        except Exception as exc:
            if _missing(exc):
                raise NotFound("the file is no longer stored") from None
            raise _unavailable("reading a file's size", exc) from exc

    def delete(self, key: str) -> bool:
        """Delete the object; False if it was not there (S3's DELETE itself does not say)."""
        obj = self.object_key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=obj)
        except Exception as exc:
            if _missing(exc):
                return False
            raise _unavailable("looking up a file", exc) from exc
        try:
            self.client.delete_object(Bucket=self.bucket, Key=obj)
        except Exception as exc:
            raise _unavailable("deleting a file", exc) from exc
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
            raise _unavailable("listing files", exc) from exc
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
            raise _unavailable("listing uploads", exc) from exc
