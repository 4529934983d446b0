"""Keeping `sluis serve`'s resident memory near what it uses (glibc's malloc).

glibc keeps memory that Python frees for reuse instead of giving it back, and gives each thread
that allocates an arena of its own (up to 8 per core): the event loop, the at-rest workers and
the database threads each keep their own freed megabytes. A 256 MiB upload frees tens of MiB of
1 MiB batches and 255 KiB writes; without these knobs the process grew from 51 to 72 MiB over
ten uploads and stayed there (bench, 2026-11-30); with them it stays within about 6 MiB of idle.

- `limit_arenas()`, once at start: at most ARENAS arenas (one), so threads share their freed memory.
- `release()`, after each upload and download ends (in a worker thread, never on the event
  loop): malloc_trim(0) hands every arena's free pages back to the kernel, 2 µs when there is
  nothing to give back and under 0.1 ms after a transfer.

Both do nothing where the C library has no such function (musl, macOS).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

M_ARENA_MAX = -8   # <malloc.h>
# One heap for every thread: the GIL lets one thread run Python at a time, and what the at-rest
# and database threads allocate while it is released (output buffers) is little, so they hardly
# contend for it; freed memory is reused by whichever thread allocates next. Against 2 arenas
# (the event loop's and one for the threads), 2026-12-01: the peak of a 256 MiB upload in the
# bench's sequence 0.3 MiB lower with OpenSSH's sftp, 0.8 with PuTTY, at the same speed.
ARENAS = 1


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None)


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap malloc's arenas (call before the threads start); False where unsupported."""
    mallopt = getattr(_libc(), "mallopt", None)
    return bool(mallopt is not None and mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arenas)) == 1)


def release() -> None:
    """Give freed memory back to the kernel (blocks for up to a fraction of a millisecond)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(ctypes.c_size_t(0))
