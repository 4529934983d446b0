"""Freed memory goes back to the kernel after each transfer (server/memory.py): the helper itself
on this C library, and its wiring, an upload's publish or abort and a download's close."""

from __future__ import annotations

import asyncio
import os
import platform
import re
from pathlib import Path

import pytest

from sluis.server import memory
from sluis.server.core.deliveries import fetch
from tests.support.frontend import StandInFrontEnd

GLIBC = platform.libc_ver()[0] == "glibc"


def rss_kib() -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    assert match
    return int(match.group(1))


@pytest.mark.skipif(not GLIBC, reason="malloc_trim and M_ARENA_MAX are glibc's")
def test_release_hands_freed_heap_pages_back() -> None:
    # 64 KiB blocks (under malloc's mmap threshold, so they live in the heap) interleaved with
    # small ones that stay: freeing the big ones leaves holes that glibc keeps, until trimmed.
    memory.release()
    kept, freed = [], []
    for _ in range(1600):
        freed.append(bytearray(os.urandom(64 * 1024)))
        kept.append(bytearray(1024))
    del freed
    before = rss_kib()
    memory.release()
    after = rss_kib()
    assert before - after > 50 * 1024, f"RSS {before} -> {after} KiB: 100 MiB freed, little given back"
    assert len(kept) == 1600


@pytest.mark.skipif(not GLIBC, reason="malloc_trim and M_ARENA_MAX are glibc's")
def test_limit_arenas_is_accepted() -> None:
    assert memory.limit_arenas(memory.ARENAS)


def test_every_transfer_end_releases(lib) -> None:
    _, app, _ = lib
    assert app.dropbox.after_transfer is memory.release   # wired once, in server/app.py
    ended: list[str] = []
    app.dropbox.after_transfer = lambda: ended.append("released")   # stand-in for the libc call
    sender, recipient = StandInFrontEnd(app, "agency"), StandInFrontEnd(app, "genk-clerk")
    data = os.urandom(100_000)

    async def main() -> None:
        dropped = await sender.open_upload("genk", "eerst.csv")
        await sender.write(dropped, 0, data[:5000])
        await sender.delete_upload(dropped)               # an abort
        assert ended == ["released"]
        await sender.put("genk", "lijst.csv", data)       # a publish
        assert len(ended) == 2
        [delivery] = fetch(app.db, "tenant_id = ?", (app.directory.tenant("genk").id,))
        assert await recipient.get(delivery.stored_name, [(0, delivery.stored_size)])   # a close
        assert len(ended) == 3
    asyncio.run(main())
