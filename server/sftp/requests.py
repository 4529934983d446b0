"""The request table: which SFTP operations exist in sluis, which write, and who may use them.

Like OpenSSH's sftp-server, one table decides; `authorise` is the only permission check the
handler makes by operation. A packet type that is not in the table is answered
SSH_FX_OP_UNSUPPORTED before any handler code runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncssh.sftp import (
    FXP_CLOSE, FXP_FSETSTAT, FXP_FSTAT, FXP_LSTAT, FXP_MKDIR, FXP_OPEN, FXP_OPENDIR, FXP_READ,
    FXP_READDIR, FXP_READLINK, FXP_REALPATH, FXP_REMOVE, FXP_RENAME, FXP_RMDIR, FXP_SETSTAT,
    FXP_STAT, FXP_SYMLINK, FXP_WRITE,
)

from ..core.records import ROLE_RECIPIENT, ROLE_SENDER
from ..core.session import Session
from ..errors import PermissionDenied

BOTH = frozenset({ROLE_SENDER, ROLE_RECIPIENT})
SENDER = frozenset({ROLE_SENDER})
RECIPIENT = frozenset({ROLE_RECIPIENT})
NOBODY: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Operation:
    name: str
    writes: bool
    roles: frozenset[str]
    denial: str  # said to a user whose role may not do this


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("realpath", False, BOTH, ""),
    Operation("stat", False, BOTH, ""),
    Operation("list", False, BOTH, ""),
    Operation("setstat", False, BOTH, ""),       # times only, acknowledged and ignored
    Operation("close", False, BOTH, ""),
    Operation("open_read", False, RECIPIENT, "senders cannot read stored files"),
    Operation("read", False, RECIPIENT, "senders cannot read stored files"),
    Operation("read_receipt", False, SENDER, "only senders have receipts"),  # /receipts/ only (views.py)
    Operation("open_write", True, SENDER, "recipients may download and delete, not upload"),
    Operation("write", True, SENDER, "recipients may download and delete, not upload"),
    Operation("remove", True, BOTH, ""),
    Operation("rename", True, SENDER, "files cannot be renamed"),
    Operation("mkdir", True, NOBODY, "folders cannot be created"),
    Operation("rmdir", True, NOBODY, "folders cannot be removed"),
    Operation("symlink", True, NOBODY, "links are not supported"),
    Operation("readlink", False, NOBODY, "links are not supported"),
)}

# The SFTP v3 packets sluis answers. Everything else (hardlink, statvfs, copy-data, posix-rename
# aside, lsetstat, fsync, ...) is refused as unsupported by the handler before it is parsed.
PACKETS = frozenset({
    FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE, FXP_LSTAT, FXP_FSTAT, FXP_SETSTAT, FXP_FSETSTAT,
    FXP_OPENDIR, FXP_READDIR, FXP_REMOVE, FXP_MKDIR, FXP_RMDIR, FXP_REALPATH, FXP_STAT, FXP_RENAME,
    FXP_READLINK, FXP_SYMLINK, b"posix-rename@openssh.com", b"limits@openssh.com",
})
EXTENSIONS = [(b"posix-rename@openssh.com", b"1"), (b"limits@openssh.com", b"1")]


def authorise(session: Session, name: str) -> Operation:
    """Allow the operation for the session's role, or raise PermissionDenied saying why not."""
    op = OPERATIONS[name]
    if session.user.role not in op.roles:
        raise PermissionDenied(op.denial or f"{name} is not allowed")
    return op
