"""What an idle `sluis serve` holds: no module only some configurations need, and a memory cap.

Measured 2026-11-30 (Python 3.11, uvloop, SQLite, console SMS, no [email]): 54 MiB RSS, of
which about 11 MiB is the bare interpreter, 10 MiB asyncio with ssl, 21 MiB asyncssh with
cryptography, 6 MiB sluis's own modules (docs/sftp.md, "Memory"); 50.6 MiB since 2026-12-01,
with asyncssh's unused UMAC and X.509 modules and the report's HTML renderer left unloaded. Optional libraries cost
3 to 8 MiB each once imported (twilio 7, requests 7, paramiko 8, rich 3, phonenumbers 1,
smtplib with email 1): they are imported where a configuration or a command needs them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.support.server import SluisServer

# Top-level packages `sluis serve` must not import in the default configuration: each belongs
# to one provider, store or command (twilio: [sms] provider = "twilio"; psycopg: a PostgreSQL
# store; boto3: object storage; rich/paramiko: `sluis send`; phonenumbers: `sluis tenant add`;
# smtplib: only when a mail is sent).
OPTIONAL = ("twilio", "requests", "rich", "paramiko", "psycopg", "boto3", "botocore", "phonenumbers", "smtplib")
# Modules no configuration of `sluis serve` needs: X.509 (asyncssh tries it; server/unloaded.py)
# and the evidence report's HTML renderer with html.entities (`sluis report` only).
NEVER = ("cryptography.x509", "html", "sluis.server.formats.report_html")

# The cap: the issue-12 floor for the peak RSS of a whole 256 MiB upload is 64 MiB, so an idle
# server above it could never meet that floor. The 51-54 MiB measured leave 10 MiB or more: one
# stray optional import (7-8 MiB) plus normal drift stays under it, two do not.
IDLE_RSS_CAP_MIB = 64


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1)) / 1024


def imported_modules(log: str) -> set[str]:
    """Modules named in the `-X importtime` lines of the server's log."""
    return {m.group(1) for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", log, re.M)}


def imported(log: str) -> set[str]:
    """Top-level packages named in the `-X importtime` lines of the server's log."""
    return {name.split(".")[0] for name in imported_modules(log)}


def test_idle_serve_imports_and_memory(make_server: Any) -> None:
    # The embedded default (SQLite) whatever SLUIS_TEST_ENGINE says: psycopg belongs to PostgreSQL.
    server: SluisServer = make_server(overrides={"database": {"url": ""}},
                                      env={"PYTHONPROFILEIMPORTTIME": "1"}).standard().start()
    assert server.process is not None
    client = server.paramiko("genk-clerk")   # one login and SFTP session: what "idle" means in the bench
    try:
        assert client.listdir(".") == []
    finally:
        client.close()
    log = server.log
    modules = imported(log)
    assert {"asyncssh", "sluis"} <= modules, "no -X importtime lines in the log"   # the check can see
    assert not modules & set(OPTIONAL), f"sluis serve imported {sorted(modules & set(OPTIONAL))}"
    never = imported_modules(log) & set(NEVER)
    assert not never, f"sluis serve imported {sorted(never)}"
    rss = rss_mib(server.process.pid)
    assert rss < IDLE_RSS_CAP_MIB, f"idle sluis serve holds {rss:.1f} MiB RSS (cap {IDLE_RSS_CAP_MIB})"
