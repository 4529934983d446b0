"""Signed checkpoints of the audit chain's head, kept outside the database.

One checkpoint is one line (docs/audit.md has the format):

    sluis-audit-checkpoint v1 seq=N hash=HEX64 time=ISO reason=WHY key=KEYID sig=BASE64

`sig` is Ed25519 over the UTF-8 bytes before " sig=". A checkpoint goes to the journal (one log
line), to an append-only file (O_APPEND, 0600, fsynced) and, once a day, to the operator by
mail. A record lost since a checkpoint (truncation included) no longer matches it. Before
signing, the records since the last checkpoint are verified; a broken chain is recorded as
`audit.broken` and never signed over.
"""

from __future__ import annotations

import base64
import contextlib
import binascii
import enum
import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

from .audit import BROKEN, AuditLog, Verification
from .auditkey import AuditKey, PublicKey
from .clock import Clock, iso, parse_iso

log = logging.getLogger("sluis.audit")
MAGIC = "sluis-audit-checkpoint v1"
MAIL_EVENT = "audit.checkpoint.mail"
MAIL_EVERY = timedelta(days=1)
MAIL_LOCK = "checkpoint-mail"
class Occasion(enum.StrEnum):
    """Why a checkpoint was signed (recorded with it)."""

    START = "start"          # serve started
    INTERVAL = "interval"    # [audit] checkpoint_interval passed
    SHUTDOWN = "shutdown"    # serve stopping
    MANUAL = "manual"        # sluis audit checkpoint


START, INTERVAL, SHUTDOWN, MANUAL = Occasion.START, Occasion.INTERVAL, Occasion.SHUTDOWN, Occasion.MANUAL
_LINE = re.compile(rf"^{MAGIC} seq=(?P<seq>[1-9][0-9]{{0,18}}) hash=(?P<hash>[0-9a-f]{{64}})"
                   r" time=(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) reason=(?P<reason>[a-z]{1,16})"
                   r" key=(?P<key>[0-9a-f]{16}) sig=(?P<sig>[A-Za-z0-9+/]{86}==)$")
# Mailer: (subject, body) -> None, raising on failure; wired in the composition root.
Mailer = Callable[[str, str], None]
Lock = Callable[[str], contextlib.AbstractContextManager[bool]]   # Store.try_lock


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    time: str
    reason: str
    key_id: str
    signature: bytes

    @property
    def signed_text(self) -> str:
        return (f"{MAGIC} seq={self.seq} hash={self.hash} time={self.time} reason={self.reason}"
                f" key={self.key_id}")

    @property
    def line(self) -> str:
        return f"{self.signed_text} sig={base64.b64encode(self.signature).decode()}"

    def problem(self, public: PublicKey) -> str | None:
        """Why this checkpoint cannot be trusted under `public`, or None if its signature holds."""
        if self.key_id != public.key_id:
            return f"signed by another key ({self.key_id}, not {public.key_id})"
        if not public.verifies(self.signed_text.encode(), self.signature):
            return "signature does not verify (forged or altered)"
        return None


def sign_checkpoint(key: AuditKey, seq: int, digest: str, time: str, reason: str) -> Checkpoint:
    unsigned = Checkpoint(seq, digest, time, reason, key.public.key_id, b"")
    return Checkpoint(seq, digest, time, reason, key.public.key_id, key.sign(unsigned.signed_text.encode()))


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse one checkpoint line (also as quoted in a journal line or mail); ValueError if malformed."""
    start = text.find(MAGIC)
    match = _LINE.match(text[start:].strip()) if start >= 0 else None
    if match is None:
        raise ValueError(f"not a checkpoint line: {text.strip()[:80]!r}")
    try:
        signature = base64.b64decode(match["sig"], validate=True)
    except binascii.Error:
        raise ValueError("checkpoint signature is not base64") from None
    return Checkpoint(int(match["seq"]), match["hash"], match["time"], match["reason"], match["key"], signature)


class CheckpointFile:
    """The append-only file: one line per checkpoint; each append is one write, then fsync."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, checkpoint: Checkpoint) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (checkpoint.line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def lines(self) -> list[tuple[str, str]]:
        """(where, text) of every non-empty line; no file means no lines."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [(f"{self.path}:{n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


@dataclass(frozen=True)
class CheckpointCheck:
    """The chain held against checkpoints: `basis` is the newest good one (where, checkpoint)."""

    problems: list[str]
    basis: tuple[str, Checkpoint] | None
    count: int
    losses: list[tuple[int, str]]   # (checkpoint seq, what the chain lost): for audit.broken


def check_checkpoints(audit: AuditLog, lines: list[tuple[str, str]], public: PublicKey) -> CheckpointCheck:
    """Every line must parse and carry a good signature; the chain must still hold each one."""
    problems: list[str] = []
    losses: list[tuple[int, str]] = []
    good: list[tuple[str, Checkpoint]] = []
    for where, text in lines:
        try:
            checkpoint = parse_checkpoint(text)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        bad = checkpoint.problem(public)
        if bad:
            problems.append(f"{where}: checkpoint of #{checkpoint.seq}: {bad}")
            continue
        good.append((where, checkpoint))
        lost = audit.check_point(checkpoint.seq, checkpoint.hash)
        if lost:
            problems.append(f"{lost}; checkpoint #{checkpoint.seq} of {checkpoint.time} ({where})")
            losses.append((checkpoint.seq, lost))
    basis = max(good, key=lambda item: item[1].seq) if good else None
    return CheckpointCheck(problems, basis, len(good), losses)


class Checkpointer:
    """Verifies the records since the last checkpoint, then signs and writes a new one."""

    def __init__(self, audit: AuditLog, key: AuditKey, clock: Clock, file: CheckpointFile,
                 mailer: Mailer | None, lock: Lock | None = None) -> None:
        self.audit = audit
        self.key = key
        self.clock = clock
        self.file = file
        self.mailer = mailer
        # The daily mail is one per setup, not per node: its check-then-send runs under this
        # lock (Store.try_lock), so two nodes signing at the same moment do not both mail.
        self.lock: Lock = lock or (lambda name: contextlib.nullcontext(True))

    @property
    def public(self) -> PublicKey:
        """The key that verifies this setup's checkpoints."""
        return self.key.public

    def lines(self) -> list[tuple[str, str]]:
        """The checkpoint file's lines, as (where, text)."""
        return self.file.lines()

    def last(self) -> Checkpoint | None:
        """The newest checkpoint in the file with a good signature under this key."""
        best = None
        for _where, text in self.file.lines():
            try:
                checkpoint = parse_checkpoint(text)
            except ValueError:
                continue
            if checkpoint.problem(self.key.public) is None and (best is None or checkpoint.seq > best.seq):
                best = checkpoint
        return best

    def checkpoint(self, reason: str) -> Checkpoint | None:
        """Sign the head if the chain since the last checkpoint holds; else record audit.broken."""
        last = self.last()
        result = self.audit.verify_since(last.seq, last.hash) if last else self.audit.verify()
        if not result.ok:
            self._broken(result)
            return None
        seq, digest = result.head
        checkpoint = sign_checkpoint(self.key, seq, digest, iso(self.clock.now()), reason)
        self.file.append(checkpoint)
        log.info("audit checkpoint: %s", checkpoint.line)
        return checkpoint

    def mail_if_due(self, checkpoint: Checkpoint) -> bool:
        """Mail `checkpoint` to the operator unless one was mailed within the last day."""
        if self.mailer is None:
            return False
        with self.lock(MAIL_LOCK) as held:
            if not held:   # another process is mailing right now, and records it
                return False
            return self._mail_if_due(checkpoint)

    def _mail_if_due(self, checkpoint: Checkpoint) -> bool:
        assert self.mailer is not None
        last = self.audit.latest(MAIL_EVENT)
        if last is not None and parse_iso(last.ts) > self.clock.now() - MAIL_EVERY:
            return False
        body = (f"The signed head of the sluis audit log, for safekeeping outside the server:\n\n"
                f"{checkpoint.line}\n\nVerify with: sluis audit verify --checkpoint '<the line above>'"
                f" --public-key {self.key.public.text}\n")
        try:
            self.mailer(f"sluis audit checkpoint #{checkpoint.seq}", body)
        except Exception as exc:  # a mail problem must not stop checkpoints; retried next interval
            log.error("audit checkpoint could not be mailed (will retry): %s", exc)
            return False
        self.audit.record(MAIL_EVENT, actor="sluis", checkpoint_seq=checkpoint.seq, hash=checkpoint.hash)
        return True

    def _broken(self, result: Verification) -> None:
        log.error("audit chain BROKEN at #%s: %s; no checkpoint signed", result.bad_seq, result.reason)
        self.report_broken(result.bad_seq or 0, result.reason, actor="sluis")

    def report_broken(self, seq: int, reason: str, *, actor: str, source: str | None = None) -> bool:
        """Record `audit.broken` for a finding, once: not again while the newest one names `seq`."""
        previous = self.audit.latest(BROKEN)
        if previous is not None and previous.detail.get("seq") == seq:
            return False
        self.audit.record(BROKEN, actor=actor, source=source, seq=seq, reason=reason)
        return True
