"""A stand-in second front end over the protocol-neutral drop session (server/core/dropsession.py):
what an HTTP or WebDAV front end would do, with no SFTP anywhere. Like the SFTP edge, it runs
reads, writes and the wait of a close on the event loop and every blocking call in a thread,
and on a lost connection it tells the session first, then closes what the client left open."""

from __future__ import annotations

import asyncio

from sluis.server.core.dropbox import Download
from sluis.server.core.dropsession import DropSession, Incoming
from sluis.server.core.session import Session
from sluis.server.errors import LimitReached


class StandInFrontEnd:
    """One client's connection: opens, writes, reads, closes; `disconnect` as a dropped link."""

    def __init__(self, app, user: str, source: str = "127.0.0.1:40000") -> None:
        self.app = app
        self.session = Session(user=app.directory.user(user), source=source)
        self.breaches: list[LimitReached] = []
        self.drop = DropSession(app.dropbox, self.session, on_limit=self.breaches.append)
        self.open: list[Incoming | Download] = []   # what the client has not closed

    # --- uploads ------------------------------------------------------------------------
    async def open_upload(self, tenant: str, name: str) -> Incoming:
        target = await asyncio.to_thread(self.app.dropbox.active_tenant, tenant)
        incoming = await asyncio.to_thread(self.drop.open_upload, target, name)
        await incoming.begin()      # the key derivation (the SFTP edge does not wait for it)
        self.open.append(incoming)
        return incoming

    async def write(self, incoming: Incoming, offset: int, data: bytes) -> None:
        await self.drop.write(incoming, offset, data)

    async def send(self, incoming: Incoming, data: bytes, chunk: int = 32768) -> None:
        for offset in range(0, len(data), chunk):
            await self.write(incoming, offset, data[offset:offset + chunk])

    async def close_upload(self, incoming: Incoming) -> None:
        self.open.remove(incoming)
        await self.drop.close_upload(incoming)

    async def put(self, tenant: str, name: str, data: bytes) -> Incoming:
        """A whole upload: open, write in order, close."""
        incoming = await self.open_upload(tenant, name)
        await self.send(incoming, data)
        await self.close_upload(incoming)
        return incoming

    async def rename(self, tenant: str, old: str, new: str):
        target = await asyncio.to_thread(self.app.dropbox.active_tenant, tenant)
        return await asyncio.to_thread(self.drop.rename, target, old, new)

    async def delete_upload(self, incoming: Incoming) -> None:
        await asyncio.to_thread(self.drop.discard, incoming)

    # --- downloads ----------------------------------------------------------------------
    async def open_download(self, stored_name: str) -> Download:
        download = await asyncio.to_thread(self.drop.open_download, stored_name)
        self.open.append(download)
        return download

    def read(self, download: Download, offset: int, size: int) -> bytes:
        return self.drop.read(download, offset, size)

    async def close_download(self, download: Download) -> bool:
        self.open.remove(download)
        return await asyncio.to_thread(self.drop.close_download, download)

    async def get(self, stored_name: str, ranges: list[tuple[int, int]]) -> bool:
        """Open, read the (offset, size) ranges in the order given, close: True if collected."""
        download = await self.open_download(stored_name)
        for offset, size in ranges:
            self.read(download, offset, size)
        return await self.close_download(download)

    # --- end of the connection ----------------------------------------------------------
    async def disconnect(self) -> None:
        """The link drops: the session hears it first, then every open handle is closed (errors
        go nowhere: nobody hears them), then the session ends."""
        self.drop.connection_lost()
        for handle in list(self.open):
            self.open.remove(handle)
            if isinstance(handle, Incoming):
                await self.drop.close_upload(handle)
            else:
                await asyncio.to_thread(self.drop.close_download, handle)
        await asyncio.to_thread(self.drop.end)

    async def quit(self) -> int:
        """A clean end of session: what is still open or staged is aborted."""
        return await asyncio.to_thread(self.drop.end)
