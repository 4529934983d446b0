"""Helpers for the SFTP edge tests: state inspection (deliveries, audit, data dir), decryption of
downloaded files and a small paramiko toolbox (raw SFTP requests, a connected transport)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import paramiko
from paramiko.sftp import CMD_STATUS

from sluis.server.formats.age import decrypt
from tests.support.server import SluisServer
from tests.support.waiting import wait_until  # noqa: F401  (used by the test_sftp_* files too)

TIMEOUT = 60  # seconds, the upper bound for any external client run


def blob(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (varied enough that offsets matter)."""
    import random

    return random.Random(seed).randbytes(size)


def decrypt_bytes(encrypted: bytes, passphrase: str) -> bytes:
    out = io.BytesIO()
    decrypt(io.BytesIO(encrypted), out, passphrase)
    return out.getvalue()


def decrypt_file(path: Path, passphrase: str) -> bytes:
    return decrypt_bytes(Path(path).read_bytes(), passphrase)


# --- state ---------------------------------------------------------------------------------------
def deliveries(server: SluisServer, **where: Any) -> list[dict[str, Any]]:
    sql = "SELECT * FROM deliveries"
    if where:
        sql += " WHERE " + " AND ".join(f"{key} = ?" for key in where)
    return [dict(row) for row in server.app().db.query(sql + " ORDER BY created_at", tuple(where.values()))]


def uploads(server: SluisServer) -> list[dict[str, Any]]:
    return [dict(row) for row in server.app().db.query("SELECT * FROM uploads")]


def audit(server: SluisServer, event: str | None = None) -> list[dict[str, Any]]:
    sql, params = "SELECT * FROM audit", ()
    if event:
        sql, params = sql + " WHERE event = ?", (event,)
    rows = [dict(row) for row in server.app().db.query(sql + " ORDER BY seq", params)]
    for row in rows:
        row["detail"] = json.loads(row["detail"])
    return rows


def wait_audit(server: SluisServer, event: str, predicate: Callable[[dict[str, Any]], bool] = lambda r: True,
               timeout: float = 10) -> list[dict[str, Any]]:
    return wait_until(lambda: [r for r in audit(server, event) if predicate(r)], f"audit {event}", timeout)


def data_files(server: SluisServer) -> dict[str, list[str]]:
    """Every regular file under the data dir's boxes/ and tmp/ (relative paths)."""
    found: dict[str, list[str]] = {}
    for area in ("boxes", "tmp"):
        root = server.data_dir / area
        found[area] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) \
            if root.exists() else []
    return found


def assert_nothing_left(server: SluisServer) -> None:
    """No delivery, no upload row, no blob and no temporary: an aborted upload left no trace."""
    assert deliveries(server) == []
    assert uploads(server) == []
    assert data_files(server) == {"boxes": [], "tmp": []}


# --- paramiko ------------------------------------------------------------------------------------
def transport(server: SluisServer, user: str) -> paramiko.Transport:
    t = paramiko.Transport(("127.0.0.1", server.port))
    t.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(str(server.accounts[user].key)))
    return t


def sftp_on(t: paramiko.Transport) -> paramiko.SFTPClient:
    client = paramiko.SFTPClient.from_transport(t)
    assert client is not None
    return client


def raw_request(client: paramiko.SFTPClient, kind: int, msg: paramiko.Message) -> tuple[int, paramiko.Message]:
    """Send one SFTP request whose body (after the request id) is `msg`, exactly as built; return
    the reply's type and body. Only for a client with no other requests outstanding."""
    with client._lock:
        num = client.request_number
        client.request_number += 1
    packet = paramiko.Message()
    packet.add_int(num)
    packet.add_bytes(msg.asbytes())
    client._send_packet(kind, packet)
    while True:
        reply_type, reply = client._read_packet()
        reply_msg = paramiko.Message(reply)
        if reply_msg.get_int() == num:
            return reply_type, reply_msg


def raw_status(client: paramiko.SFTPClient, kind: int, msg: paramiko.Message) -> tuple[int, str]:
    reply_type, reply = raw_request(client, kind, msg)
    assert reply_type == CMD_STATUS, reply_type
    return reply.get_int(), reply.get_text()


def env_without_agent() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    return env


def channel_request(chan: paramiko.Channel, kind: str, *fields: bytes | str | bool | int) -> bool:
    """Send a channel request with want_reply set; True if the server said yes (paramiko closes the
    channel on a refusal). Covers requests paramiko only sends without asking for a reply."""
    from paramiko.common import cMSG_CHANNEL_REQUEST
    from paramiko.ssh_exception import SSHException

    m = paramiko.Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string(kind)
    m.add_boolean(True)
    for value in fields:
        if isinstance(value, bool):
            m.add_boolean(value)
        elif isinstance(value, int):
            m.add_int(value)
        else:
            m.add_string(value)
    chan._event_pending()
    chan.transport._send_user_message(m)
    try:
        chan._wait_for_event()
    except SSHException:
        return False
    return True


@contextlib.contextmanager
def connect(server: SluisServer, user: str) -> Iterator[paramiko.SFTPClient]:
    """A paramiko SFTP session whose transport is closed afterwards (SFTPClient.close alone is not)."""
    t = transport(server, user)
    try:
        yield sftp_on(t)
    finally:
        t.close()


def upload(server: SluisServer, name: str, data: bytes, *, user: str = "agency", tenant: str = "genk") -> None:
    """Upload through paramiko (published when this returns)."""
    with connect(server, user) as client:
        with client.open(f"/{tenant}/{name}", "wb") as handle:
            handle.write(data)


def download(server: SluisServer, stored_name: str, *, user: str = "genk-clerk") -> bytes:
    with connect(server, user) as client:
        with client.open(f"/{stored_name}", "rb") as handle:
            return handle.read()


def close_raw(client: paramiko.SFTPClient, handle: paramiko.SFTPFile) -> tuple[int, str]:
    """Close a handle and return the server's status (paramiko's close() swallows errors)."""
    handle.flush()
    msg = paramiko.Message()
    msg.add_string(handle.handle)
    result = raw_status(client, paramiko.sftp.CMD_CLOSE, msg)
    handle._closed = True
    return result
