"""`make demo`'s setup: two municipalities with protocols, a sender and clerks with keys."""

from __future__ import annotations

import stat
import subprocess
import sys


def test_demo_setup_is_complete_and_reusable(tmp_path):
    target = tmp_path / "demo-data"
    for _ in range(2):  # the second run reuses the setup instead of failing
        result = subprocess.run([sys.executable, "-m", "sluis.server.cli.demo", str(target)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "put lijst.csv /genk/lijst.csv" in result.stdout and "host key fingerprint: SHA256:" in result.stdout
    for name in ("agency", "genk-clerk", "gent-clerk"):
        assert stat.S_IMODE((target / "keys" / name).stat().st_mode) == 0o600
    status = subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "-c", str(target / "sluis.toml"),
                             "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "genk" in status.stdout and "gent" in status.stdout and "may receive a list now" in status.stdout
    assert 'listen = "127.0.0.1:2222"' in (target / "sluis.toml").read_text()
