"""Where encrypted blobs live. The core talks only to `Storage`; LocalStorage is the default.

Keys are made by the core from ids (`t000001/u-...`), never from names a client sent. The key a
blob is published under is chosen when its upload starts (`create_temp`): an S3 multipart upload
is created for its final key and completed on publish (s3storage.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import mmap
import os
import re
from pathlib import Path
from typing import Any, Iterator, Protocol

from ..errors import NotFound, StorageFull

_KEY = re.compile(r"^[a-z0-9]{1,32}/[A-Za-z0-9_-]{1,64}$")
_TEMP = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# A temporary's written bytes are handed to the disk every WRITEBACK_STEP bytes while the upload
# runs, so the fsync that makes it durable at the close waits only for the last step. Without it
# the kernel starts writing back only when dirty pages age or pile up, and the close's fsync
# writes the whole file (about 70 ms for 256 MiB here, on every upload's critical path).
WRITEBACK_STEP = 8 << 20
# A temporary's blocks are reserved PREALLOCATE_STEP bytes ahead of its writes (fallocate with
# FALLOC_FL_KEEP_SIZE; the reserve past the end is given back at `sync`): ext4 then maps each page
# written to a block already allocated instead of reserving a delayed allocation for it (256 MiB
# written in the age writer's batches and fsynced: 0.23 s of CPU per GiB without, 0.16 with; the
# whole machine's CPU 0.27 against 0.21; issue 12), and a large file lies in fewer extents.
PREALLOCATE_STEP = 8 << 20
# The temporary's write buffer. The age writer hands over whole batches of sealed chunks (up to
# 1 MiB), which pass it straight to the file; it only gathers the header and the zip format's
# small pieces. At 1 MiB it copied every batch once more and held a megabyte per upload.
TEMP_BUFFER = 64 << 10
# Large writes reach the file cut at a page boundary, the rest held for the next write: the age
# writer's batches (3 chunks, 196,656 bytes) end mid-page, and a page the kernel fills in two
# writes costs it more than one filled once (ext4, 256 MiB written and fsynced: 0.30 s of CPU per
# GiB in batches of that size, 0.25 in page-aligned ones; issue 12).
PAGE = mmap.PAGESIZE


def is_storage_full(exc: OSError) -> bool:
    return exc.errno in _FULL


class TempBlob(Protocol):
    """A blob being written, invisible until published."""

    key: str

    def write(self, data: bytes | memoryview) -> int: ...
    def flush(self) -> None: ...   # hand buffered bytes to the store (not durable: that is sync)
    def sync(self) -> None: ...
    def close(self) -> None: ...


class BlobReader(Protocol):
    def read_at(self, offset: int, size: int) -> bytes: ...   # may block (network): not on the loop
    def read_now(self, offset: int, size: int) -> bytes | None: ...  # None: read_at would wait
    async def read_async(self, offset: int, size: int) -> bytes: ...   # on the loop, waiting for them
    def removed(self) -> bool: ...  # the blob was deleted since it was opened (cheap: no I/O)
    def close(self) -> None: ...


class Storage(Protocol):
    """The small surface the drop-box core needs from a blob store.

    `orphan_grace`: seconds a blob no record refers to must stay unreferenced before the sweep
    removes it (0 where publish runs under the sweep's own lock, as LocalStorage with SQLite).
    """

    orphan_grace: float

    def create_temp(self, temp_key: str, key: str) -> TempBlob: ...
    def publish(self, temp: TempBlob, key: str) -> None: ...
    def discard(self, temp_key: str) -> bool: ...
    def open_read(self, key: str) -> BlobReader: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> bool: ...
    def temp_keys(self) -> list[str]: ...
    def keys(self) -> list[str]: ...


@contextlib.contextmanager
def _full_is_storage_full() -> Iterator[None]:
    """A write, sync or give-back that finds the disk full (or the quota, or the file size
    limit) raises StorageFull, which the upload reports as such; other OSErrors pass as they are."""
    try:
        yield
    except OSError as exc:
        raise StorageFull("no space left for the upload") if is_storage_full(exc) else exc


class _LocalTemp:
    """A temporary file being written: small writes gathered up to TEMP_BUFFER, large ones
    written at once up to the last page boundary they reach (PAGE), with what was held before
    them in the same system call (writev); the bytes past that boundary wait for the next
    write, `flush` or `sync`."""

    def __init__(self, key: str, path: Path) -> None:
        self.key = key
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._held = bytearray()   # taken, not yet written: under TEMP_BUFFER + PAGE
        self._written = 0    # bytes taken in all (written or held)
        self._handed = 0     # bytes whose write-back has been started
        self._reserved = 0   # the end of the blocks allocated ahead (PREALLOCATE_STEP)
        self._preallocating = True

    def write(self, data: bytes | memoryview) -> int:
        size = len(data)
        with _full_is_storage_full():
            held = len(self._held)
            if held + size < TEMP_BUFFER:
                self._held += data
            else:
                keep = (self._written + size) % PAGE   # past the last page boundary
                if keep <= size:
                    self._write_all((self._held, memoryview(data)[:size - keep]))
                    self._held = bytearray(memoryview(data)[size - keep:])
                else:   # a small write after many held bytes: the boundary lies in what was held
                    cut = held - (keep - size)
                    self._write_all((memoryview(self._held)[:cut],))
                    self._held = self._held[cut:] + data
            self._written += size
            if self._on_file - self._handed >= WRITEBACK_STEP:
                self._start_writeback()
            return size

    @property
    def _on_file(self) -> int:
        """Bytes written to the file so far (taken, less those held)."""
        return self._written - len(self._held)

    def _write_all(self, pieces: tuple[bytes | bytearray | memoryview, ...]) -> None:
        """Write every byte of `pieces`, in order: writev again after a short write."""
        end = self._on_file + sum(map(len, pieces))
        while self._preallocating and self._reserved < end:
            if not preallocate(self._fd, self._reserved, PREALLOCATE_STEP):
                self._preallocating = False   # the file system cannot, or the disk is nearly full: the writes decide
                break
            self._reserved += PREALLOCATE_STEP
        views = [memoryview(piece) for piece in pieces if len(piece)]
        while views:
            done = os.writev(self._fd, views)
            while done:
                if done >= len(views[0]):
                    done -= len(views.pop(0))
                else:
                    views[0] = views[0][done:]
                    done = 0

    def _start_writeback(self) -> None:
        """Start (not wait for) writing the bytes written since the last step to disk: Linux's
        sync_file_range(SYNC_FILE_RANGE_WRITE). The pages stay cached, and the final fsync
        still decides what is durable."""
        on_file = self._on_file
        start_writeback(self._fd, self._handed, on_file - self._handed)
        self._handed = on_file

    def flush(self) -> None:
        with _full_is_storage_full():
            self._write_all((self._held,))
            self._held = bytearray()

    def sync(self) -> None:
        self.flush()
        with _full_is_storage_full():
            if self._reserved > self._on_file:
                os.ftruncate(self._fd, self._on_file)   # gives back the blocks reserved past the end
                self._reserved = self._on_file
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.flush()
        except (OSError, StorageFull):
            pass  # a failed flush of a temp that is being discarded anyway
        finally:
            os.close(self._fd)
            self._fd = -1


class _LocalReader:
    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def read_now(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)   # the page cache: microseconds, as it always was

    async def read_async(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)   # never called: read_now always answers

    def removed(self) -> bool:
        return os.fstat(self._fd).st_nlink == 0

    def close(self) -> None:
        os.close(self._fd)


SYNC_FILE_RANGE_WRITE = 2   # <fcntl.h>
FALLOC_FL_KEEP_SIZE = 1     # <linux/falloc.h>: allocate blocks, leave the file's size as it is


@functools.cache
def _libc(name: str, *argtypes: Any) -> Any:
    """The C library's function `name` with its argument types, errno kept; None where the
    library has no such function (not Linux)."""
    function = getattr(ctypes.CDLL(None, use_errno=True), name, None)
    if function is not None:
        function.argtypes = argtypes
    return function


def preallocate(fd: int, offset: int, size: int) -> bool:
    """Allocate a file's blocks for a range without changing its size (Linux fallocate with
    FALLOC_FL_KEEP_SIZE); False where that is not possible (no such call, a file system without
    it, no space for the whole range): the writes then allocate as they go, as without it."""
    function = _libc("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    return function is not None and function(fd, FALLOC_FL_KEEP_SIZE, offset, size) == 0


def start_writeback(fd: int, offset: int, size: int) -> None:
    """Ask the kernel to start writing a file's range to disk, without waiting (Linux; elsewhere
    nothing happens and the fsync does it all). POSIX_FADV_DONTNEED would start it too, but drops
    the pages already written back from the cache: a download soon after would read the disk."""
    function = _libc("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    if function is not None and function(fd, offset, size, SYNC_FILE_RANGE_WRITE) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """Blobs as files under DATA_DIR/boxes, temporaries under DATA_DIR/tmp (same filesystem)."""

    orphan_grace = 0.0   # publish renames inside its transaction, under the sweep's write lock

    def __init__(self, data_dir: Path) -> None:
        self.boxes = data_dir / "boxes"
        self.tmp = data_dir / "tmp"
        for directory in (self.boxes, self.tmp):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"malformed storage key {key!r}")
        return self.boxes / key

    def _temp_path(self, temp_key: str) -> Path:
        if not _TEMP.match(temp_key):
            raise ValueError(f"malformed temporary key {temp_key!r}")
        return self.tmp / f"{temp_key}.part"

    def create_temp(self, temp_key: str, key: str) -> _LocalTemp:
        self._path(key)   # checked now, as S3 does; the rename comes at publish
        return _LocalTemp(temp_key, self._temp_path(temp_key))

    def publish(self, temp: TempBlob, key: str) -> None:
        """Atomically move a synced temporary into place and make the rename durable."""
        target = self._path(key)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        os.rename(self._temp_path(temp.key), target)
        fsync_dir(target.parent)

    def discard(self, temp_key: str) -> bool:
        try:
            os.unlink(self._temp_path(temp_key))
        except FileNotFoundError:
            return False
        return True

    def open_read(self, key: str) -> _LocalReader:
        try:
            return _LocalReader(self._path(key))
        except FileNotFoundError:
            raise NotFound("the file is no longer stored") from None

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> bool:
        """Unlink and fsync the directory, so the removal survives a crash."""
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        fsync_dir(path.parent)
        return True

    def temp_keys(self) -> list[str]:
        return sorted(p.name[:-5] for p in self.tmp.glob("*.part"))

    def keys(self) -> list[str]:
        return sorted(f"{p.parent.name}/{p.name}" for p in self.boxes.glob("*/*") if p.is_file())
