"""[policy] content and name_check applied to uploads: the right municipality, and only the list.

`ContentGate.admit` runs when an upload is opened: it refuses a file name that names another
municipality (by tenant name or NIS code) and returns the stream check the upload feeds with its
plaintext. The check's `close` runs when the upload is sealed, before anything is published or
any key job exists. Every refusal is audited as `upload.refused` (lines and fields, never values).
"""

from __future__ import annotations

import re
from typing import Protocol

from ...config.settings import PolicySettings
from ..errors import ContentRefused
from .audit import AuditLog
from .directory import Directory
from .listcheck import ListCheck
from .names import staged_base
from .records import Tenant
from .session import Session

CONTENT_ANY = "any"
CONTENT_KBI_LIST = "kbi-list"
POLICY_CONTENT = "content"
POLICY_NAME = "name_check"
_NIS = re.compile(r"(?<!\d)\d{5}(?!\d)")


class StreamCheck(Protocol):
    """What an upload feeds its plaintext to, in order; `close` raises ContentRefused."""

    def feed(self, data: bytes | memoryview) -> None: ...
    def close(self, upload_id: str) -> None: ...


class NoCheck:
    """content = "any": every byte stream is acceptable."""

    def feed(self, data: bytes | memoryview) -> None:
        return None

    def close(self, upload_id: str) -> None:
        return None


NO_CHECK = NoCheck()


class ListStreamCheck:
    """content = "kbi-list": the list validator over one upload, audited when it refuses."""

    def __init__(self, gate: ContentGate, session: Session, tenant: Tenant, name: str) -> None:
        self._gate = gate
        self._session = session
        self._tenant = tenant
        self._name = name
        self._check = ListCheck(gate.settings.max_rows)

    def feed(self, data: bytes | memoryview) -> None:
        self._check.feed(data if type(data) is bytes else bytes(data))

    def close(self, upload_id: str) -> None:
        verdict = self._check.finish()
        self._check = ListCheck(1)  # let go of the numbers seen
        if verdict.ok:
            return
        message = f"refused, nothing was published: {verdict.summary()}"
        self._gate.refused(self._session, self._tenant, self._name, POLICY_CONTENT, message,
                           upload=upload_id, rows=verdict.rows,
                           problems=[{"line": p.line, "field": p.field, "problem": p.message}
                                     for p in verdict.problems], more=verdict.more)
        raise ContentRefused(message)


class ContentGate:
    """Admits an upload's name and gives it its content check, per [policy]."""

    def __init__(self, settings: PolicySettings, directory: Directory, audit: AuditLog) -> None:
        self.settings = settings
        self.directory = directory
        self.audit = audit

    def admit(self, session: Session, tenant: Tenant, name: str) -> StreamCheck:
        """At open: refuse a name naming another municipality; the check the upload feeds."""
        self.check_name(session, tenant, name)
        if self.settings.content == CONTENT_KBI_LIST:
            return ListStreamCheck(self, session, tenant, name)
        return NO_CHECK

    def check_name(self, session: Session, tenant: Tenant, name: str) -> None:
        """Raise ContentRefused (audited) if `name` names a tenant other than `tenant`."""
        if not self.settings.name_check:
            return
        other = named_tenant(name, tenant, self.directory.tenants())
        if other is not None:
            message = (f"refused: the file name {name!r} names {describe(other)}, but it was sent to "
                       f"{describe(tenant)}; one municipality's list never goes to another")
            self.refused(session, tenant, name, POLICY_NAME, message, named=other.name)
            raise ContentRefused(message)

    def refused(self, session: Session, tenant: Tenant, name: str, policy: str, error: str,
                **detail: object) -> None:
        self.audit.record("upload.refused", actor=session.actor, tenant=tenant.name, source=session.source,
                          name=name, policy=policy, error=error, **detail)


def describe(tenant: Tenant) -> str:
    return f"{tenant.name} (NIS {tenant.nis})" if tenant.nis else tenant.name


def named_tenant(name: str, target: Tenant, tenants: list[Tenant]) -> Tenant | None:
    """The first tenant other than `target` that `name` names: a five-digit group equal to its
    NIS code, or its name as a whole word (delimited by anything but a letter or digit), unless
    that word lies inside a mention of the target's own name (sint-truiden names no 'truiden')."""
    stem = (staged_base(name) or name).lower()
    codes = set(_NIS.findall(stem))
    own = [m.span() for m in _word(target.name).finditer(stem)]
    for tenant in tenants:
        if tenant.id == target.id:
            continue
        if tenant.nis and tenant.nis in codes and tenant.nis != target.nis:
            return tenant
        for match in _word(tenant.name).finditer(stem):
            if not any(start <= match.start() and match.end() <= end for start, end in own):
                return tenant
    return None


def _word(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![a-z0-9]){re.escape(word.lower())}(?![a-z0-9])")
