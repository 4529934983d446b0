"""The SFTP side of `sluis send` (paramiko): a pinned connection and one verified upload.

The host key is checked against known_hosts or a pinned SHA256 fingerprint, never trusted on
first use; a mismatch raises HostKeyError, which stops everything. An upload is verified three
ways: the server's status on CLOSE (paramiko's own close() discards it, and that is where sluis
reports a refused list), the size the server reports afterwards, and the SHA-256 of the bytes
sent (reported, so the sender can compare it with the server's receipt).
"""

from __future__ import annotations

import base64
import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko
from paramiko.sftp import CMD_CLOSE

CHUNK = 32 * 1024
CONNECT_TIMEOUT = 30


class HostKeyError(Exception):
    """The server's host key is unknown or changed: nothing more may be sent anywhere."""


class Refused(Exception):
    """The server refused the file (its status message says why); retrying will not help."""


# Failures of the connection rather than verdicts on the file: worth reconnecting and retrying.
TRANSIENT = (EOFError, ConnectionError, socket.timeout, socket.gaierror, paramiko.SSHException)


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect, and how the host key is pinned."""

    host: str
    port: int
    user: str
    identity: Path
    known_hosts: Path | None = None
    fingerprint: str | None = None

    @property
    def known_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def fingerprint(key: paramiko.PKey) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def check_host_key(endpoint: Endpoint, key: paramiko.PKey) -> None:
    """Raise HostKeyError unless `key` is the pinned or known key for this server."""
    seen = fingerprint(key)
    if endpoint.fingerprint:
        if seen != endpoint.fingerprint:
            raise HostKeyError(f"the host key of {endpoint.host}:{endpoint.port} is {seen}, not the pinned "
                               f"{endpoint.fingerprint}: it changed, or this is not your server. Nothing "
                               "was sent; ask the server's operator for its fingerprint before going on.")
        return
    path = endpoint.known_hosts
    known = paramiko.HostKeys(str(path)) if path and path.exists() else paramiko.HostKeys()
    entry = known.lookup(endpoint.known_name)
    if entry is None:
        raise HostKeyError(f"{endpoint.known_name} is not in {path} (its key is {seen}); nothing was sent. "
                           "Check the fingerprint with the operator, then add the server's key to that "
                           "file or pass --host-key-fingerprint.")
    if not known.check(endpoint.known_name, key):
        raise HostKeyError(f"the host key of {endpoint.known_name} CHANGED: it is now {seen}, which is not the "
                           f"key recorded in {path}. Nothing was sent. This may be an attack; ask the "
                           "server's operator before going on.")


class Connection:
    """One authenticated SFTP session; `reconnect` after a transient failure."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: paramiko.Transport | None = None
        self.sftp: paramiko.SFTPClient | None = None

    def open(self) -> paramiko.SFTPClient:
        if self.sftp is not None:
            return self.sftp
        transport = paramiko.Transport((self.endpoint.host, self.endpoint.port))
        try:
            transport.start_client(timeout=CONNECT_TIMEOUT)
            check_host_key(self.endpoint, transport.get_remote_server_key())
            transport.auth_publickey(self.endpoint.user, paramiko.PKey.from_path(str(self.endpoint.identity)))
            self.sftp = paramiko.SFTPClient.from_transport(transport)
        except BaseException:
            transport.close()
            raise
        self.transport = transport
        assert self.sftp is not None
        return self.sftp

    def close(self) -> None:
        if self.sftp is not None:
            self.sftp.close()
        if self.transport is not None:
            self.transport.close()
        self.sftp = self.transport = None

    def reconnect(self) -> paramiko.SFTPClient:
        self.close()
        return self.open()

    # --- what the server tells a sender ------------------------------------------------------
    def folders(self) -> list[str]:
        """The municipalities' folders (tenant names) this sender may upload to."""
        return sorted(self.open().listdir("/"))

    def tenant_for(self, name_or_nis: str) -> str | None:
        """The tenant name for a folder name or NIS code (realpath resolves codes), or None."""
        try:
            path = self.open().normalize(f"/{name_or_nis}")
            self.open().stat(path)
        except IOError:
            return None
        return path.strip("/") or None

    def upload(self, source: Path, target: str, progress: Callable[[int], None]) -> tuple[int, str]:
        """Send `source` to `target`; returns (size, SHA-256 hex) once the server has accepted it.
        Raises Refused with the server's message, or a TRANSIENT error (the connection failed)."""
        try:
            return self._upload(source, target, progress)
        except Refused:
            if self.transport is None or not self.transport.is_active():
                raise ConnectionError("the connection was lost during the upload") from None
            raise

    def _upload(self, source: Path, target: str, progress: Callable[[int], None]) -> tuple[int, str]:
        client = self.open()
        digest = hashlib.sha256()
        size = 0
        try:
            handle = client.open(target, "wb")
        except TRANSIENT:
            raise
        except IOError as exc:
            raise Refused(_server_text(exc)) from None
        handle.set_pipelined(True)
        try:
            with open(source, "rb") as data:
                while chunk := data.read(CHUNK):
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    progress(len(chunk))
            handle.flush()
        except BaseException as exc:
            _quietly(handle.close)
            if isinstance(exc, IOError) and not isinstance(exc, TRANSIENT):
                raise Refused(_server_text(exc)) from None
            raise
        # paramiko's close() swallows the server's status, so the CLOSE is sent by hand through
        # its private API (the stubs rightly leave it out): hence the two ignores.
        handle._closed = True  # type: ignore[attr-defined]
        try:
            client._request(CMD_CLOSE, handle.handle)  # type: ignore[attr-defined]
        except TRANSIENT:
            raise
        except IOError as exc:
            raise Refused(_server_text(exc)) from None
        stored = client.stat(target).st_size
        if stored != size:
            raise Refused(f"the server reports {stored} bytes for {target}, but {size} were sent")
        return size, digest.hexdigest()


def _quietly(func: Callable[[], object]) -> None:
    try:
        func()
    except Exception:  # the connection may be gone; the original error is what matters
        pass


def _server_text(exc: IOError) -> str:
    """paramiko puts the server's status message in args[-1] (or strerror)."""
    text = exc.strerror or (exc.args[-1] if exc.args else "") or str(exc)
    return str(text)
