"""The named errors of the drop-box core. The SFTP edge maps them to status codes in one place
(server/sftp/status.py); the CLI prints their message. Messages are meant for the person who
caused them, so they say what went wrong and, where it helps, what to do instead."""

from __future__ import annotations


class SluisError(Exception):
    """Base of every error the core raises on purpose."""


class NotFound(SluisError):
    """The path, tenant, user or delivery does not exist (or is not visible to this user)."""


class OutsideView(NotFound):
    """A path into another tenant's folder: the client sees 'no such file' as for any unknown
    name, the audit log records an `sftp.deny` (an incident, docs/incidents.md)."""


class PermissionDenied(SluisError):
    """The user's role does not allow this operation here."""


class InvalidPath(PermissionDenied):
    """The path is malformed or tries to leave the user's view (.., //, NUL, control chars)."""


class Unsupported(SluisError):
    """The operation does not exist in sluis (links, mkdir, ...)."""


class AlreadyExists(SluisError):
    """A tenant, user or key with that name exists already."""


class InvalidInput(SluisError):
    """An administrative command got a value it cannot use."""


class PolicyRefused(PermissionDenied):
    """The data-sharing protocol does not allow this delivery (yearly limit, protocol not in force)."""


class UploadRejected(SluisError):
    """The upload cannot be completed as sent (empty, too large, a hole, writes too far out of order)."""


class StorageFull(SluisError):
    """The storage has no room for the upload; nothing was published."""


class StorageUnavailable(SluisError):
    """The object store refused a request or did not answer; nothing was published."""


class Busy(SluisError):
    """A shared limit is exhausted right now; retrying later can succeed."""


class LimitReached(Busy):
    """One user's share of a shared resource is used up; it frees as that user's work proceeds."""

    def __init__(self, message: str, *, limit: str, value: int, allowed: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.allowed = allowed


class ContentRefused(UploadRejected):
    """[policy] refused the upload: not a valid list (content = "kbi-list"), or its file name
    names another municipality (name_check). The message names lines and fields, never values."""
