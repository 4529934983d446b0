"""The one place where core errors become SFTP status codes (SFTP v3 has few; see the table)."""

from __future__ import annotations

import logging
from typing import Callable

import asyncssh

from ..errors import (
    AlreadyExists, Busy, NotFound, PermissionDenied, SluisError, StorageFull, Unsupported,
    UploadRejected,
)

log = logging.getLogger("sluis.sftp")

# Each error class takes the reason (its code is fixed): a callable of one string, to mypy.
_STATUS: list[tuple[type[Exception], Callable[[str], asyncssh.SFTPError]]] = [
    (NotFound, asyncssh.SFTPNoSuchFile),
    (PermissionDenied, asyncssh.SFTPPermissionDenied),      # includes InvalidPath, PolicyRefused
    (Unsupported, asyncssh.SFTPOpUnsupported),
    (UploadRejected, asyncssh.SFTPFailure),
    (StorageFull, asyncssh.SFTPFailure),                    # v3 has no NO_SPACE_ON_FILESYSTEM
    (Busy, asyncssh.SFTPFailure),
    (AlreadyExists, asyncssh.SFTPFailure),
]


def to_sftp_error(exc: BaseException) -> asyncssh.SFTPError:
    """Map a core error to the SFTP error the client sees; anything unexpected is 'internal error'."""
    if isinstance(exc, asyncssh.SFTPError):
        return exc
    for kind, sftp_error in _STATUS:
        if isinstance(exc, kind):
            return sftp_error(str(exc))
    if isinstance(exc, SluisError):
        return asyncssh.SFTPFailure(str(exc))
    log.error("internal error", exc_info=exc)
    return asyncssh.SFTPFailure("internal error; the operator can find it in the server log")
