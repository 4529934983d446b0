"""Loopback plumbing the tests share: a free port, a connection from a chosen 127.0.0.0/8
source, a server that hangs up without a word, and a helper process stopped politely."""

from __future__ import annotations

import socket
import subprocess
from typing import Protocol


class Listening(Protocol):
    port: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect_from(server: Listening, source: str, header: bytes = b"", timeout: float = 10) -> socket.socket:
    """A TCP connection to `server` from the loopback address `source`, `header` sent first."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout, source_address=(source, 0))
    if header:
        sock.sendall(header)
    return sock


def closed_without_a_word(sock: socket.socket) -> bool:
    """The server closed the socket without sending anything (not even its SSH version line)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def stop_process(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 10 s; nothing if it is not running."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
