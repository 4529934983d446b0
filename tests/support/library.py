"""Driving the drop-box core directly (no SFTP) for rules that depend on time: a fake clock,
uploads and downloads through the library, and the `sluis` CLI as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sluis.server.core.coverage import Coverage
from sluis.server.core.deliveries import fetch
from sluis.server.core.session import Session

SLUIS = [sys.executable, "-m", "sluis.server.cli.main"]
FAST = {"crypto": {"scrypt_log_n": 10}}


class FakeClock:
    """A clock the test moves by hand; starts at the real 'now' so records stay in order."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = start or datetime.now(timezone.utc)

    def now(self) -> datetime:
        return self.t

    def advance(self, **delta: float) -> None:
        self.t += timedelta(**delta)


def sluis(config: Path, *args: str, input: str | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `sluis -c CONFIG ARGS...` (with `env`, e.g. a server's, for the SMS provider's token)."""
    return subprocess.run([*SLUIS, "-c", str(config), *args], capture_output=True, text=True,
                          timeout=60, input=input, env=env)


def upload(app, name: str = "lijst.csv", data: bytes = b"naam;adres\nA;B\n", tenant: str = "genk",
           sender: str = "agency"):
    session = Session(user=app.directory.user(sender), source="test")
    up = app.dropbox.start_upload(session, tenant, name)
    up.write(0, data)
    return app.dropbox.publish(up)


def download(app, delivery, *, user: str = "genk-clerk", fraction: float = 1.0) -> bool:
    """Read `fraction` of the stored file as a recipient and close; True if that collected it."""
    session = Session(user=app.directory.user(user), source="test")
    handle = app.dropbox.open_download(session, delivery.stored_name, Coverage())
    handle.read(0, int(delivery.stored_size * fraction))
    return app.dropbox.close_download(session, handle)


def state_of(app, delivery):
    return fetch(app.db, "id = ?", (delivery.id,))[0]


def blob_path(srv, delivery) -> Path:
    return srv.data_dir / "boxes" / delivery.blob_key


def has_secret(app, delivery) -> bool:
    return app.db.query_one("SELECT 1 FROM secrets WHERE delivery_id = ?", (delivery.id,)) is not None


def remove_records(app, delivery) -> list[dict]:
    return [r.detail for r in app.audit.records() if r.event == "delivery.remove" and r.delivery == delivery.id]
