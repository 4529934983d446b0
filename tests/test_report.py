"""`sluis report` (server/core/evidence.py, server/formats/report_html.py): after a real upload,
collection, a denied request and a failed login, the JSON report's events are exactly the audit
log's records, and the HTML renders in headless Chromium with the tenant, deliveries and chain."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import paramiko
import pytest

from tests.support.clients import require_binary
from tests.support.clients_extra import audit, blob, deliveries
from tests.support.library import sluis

DATA = blob(40_000, seed=5)


@pytest.fixture
def history(server, tmp_path):
    """One collected delivery to genk, one denied path, one failed login, one upload refused (yearly limit)."""
    source = tmp_path / "lijst.csv"
    source.write_bytes(DATA)
    server.sftp("agency", f"put {source} /genk/lijst.csv\n")
    server.passphrase("lijst.csv.age")
    server.sftp("genk-clerk", f"get lijst.csv.age {tmp_path}/got.age\n")
    server.sftp("genk-clerk", "-ls /gent\n", check=False)                 # another tenant's folder: denied
    empty = tmp_path / "leeg.csv"
    empty.write_bytes(b"")
    server.sftp("agency", f"-put {empty} /genk/leeg.csv\n", check=False)   # a second list: refused
    transport = paramiko.Transport(("127.0.0.1", server.port))
    try:
        transport.connect()
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password("genk-clerk", "wrong")
    finally:
        transport.close()
    assert [d["state"] for d in deliveries(server)] == ["collected"]
    return server


def _report(server, tmp_path: Path, fmt: str, *extra: str) -> Path:
    out = tmp_path / f"report.{fmt}"
    result = sluis(server.config, "report", "--tenant", "genk", "--format", fmt, "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr
    return out


def test_json_report_matches_the_audit_log(history, tmp_path):
    server = history
    report = json.loads(_report(server, tmp_path, "json").read_text())
    export = sluis(server.config, "audit", "export", "--json")
    assert export.returncode == 0, export.stderr
    logged = {r["seq"]: r for r in map(json.loads, export.stdout.splitlines())}
    [genk] = report["tenants"]
    events = genk["events"]
    assert events and all(logged[e["seq"]] == e for e in events)          # the very records, unchanged
    about_genk = sorted(s for s, r in logged.items() if r["tenant"] == "genk" and s <= report["audit_chain"]["head_seq"])
    assert sorted(e["seq"] for e in events if e["tenant"] == "genk") == about_genk   # and all of them
    chain = report["audit_chain"]
    assert chain["ok"] is True and chain["head_hash"] == logged[chain["head_seq"]]["hash"]
    [life] = genk["deliveries"]
    [collect] = audit(server, "delivery.collect")
    assert (life["collected_by"], life["collected_at"][:19]) == ("genk-clerk", collect["ts"][:19])
    assert [(m["kind"], m["target"]) for m in life["messages"]] == [("sms", "+32470123456")]
    assert life["messages"][0]["state"] in ("sent", "delivered")
    assert life["key_destroyed_at"] == audit(server, "key.destroy")[0]["ts"]
    assert life["receipt"]["outcome"] == "collected" and life["receipt"]["audit_hash"] == collect["hash"]
    assert collect["seq"] in life["events"]
    assert any(r["event"] == "sftp.deny" for r in genk["denied"])
    assert any(r["event"] == "auth.failure" and r["actor"] == "genk-clerk" for r in genk["denied"])
    [refused] = genk["refused_uploads"]        # the yearly limit refused the second upload
    assert (refused["event"], refused["detail"]["path"]) == ("sftp.deny", "/genk/leeg.csv")
    assert refused["seq"] not in [r["seq"] for r in genk["denied"]]
    assert {a["name"]: a["role"] for a in genk["accounts"]} == {"genk-clerk": "recipient", "agency": "sender"}
    assert next(a for a in genk["accounts"] if a["name"] == "genk-clerk")["last_login"] is not None
    assert genk["protocol"]["effective"] == "2021-06-02"
    assert audit(server, "report.generate")[-1]["detail"]["format"] == "json"

    # a period before anything happened holds no delivery and no event; a bad date is refused
    empty = json.loads(_report(server, tmp_path, "json", "--from", "2020-01-01", "--to", "2020-12-31").read_text())
    assert empty["tenants"][0]["deliveries"] == [] and empty["tenants"][0]["events"] == []
    bad = sluis(server.config, "report", "--from", "1 januari")
    assert bad.returncode == 1 and "YYYY-MM-DD" in bad.stderr


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    browser = require_binary("chromium", "chromium-browser")
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=90)


def test_html_report_renders_in_headless_chromium(history, tmp_path):
    server = history
    page = _report(server, tmp_path, "html")
    html = page.read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)     # no external asset
    assert "@media print" in html
    [delivery] = deliveries(server)

    screenshot = tmp_path / "report.png"
    shot = _chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1200,1600", page.as_uri())
    assert screenshot.exists(), shot.stderr
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(png) < 20_000_000
    colours = _distinct_bytes(png)
    assert colours > 100, "the screenshot looks blank"

    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    text = re.sub(r"<[^>]+>", " ", dom.stdout)
    assert "Gemeente genk" in text and delivery["id"] in text and "lijst.csv" in text
    assert "Hashketen" in text and "intact" in text and "genk-clerk" in text
    assert "geslaagde aanmeldingen zijn niet afzonderlijk getoond" in text   # logins: JSON has them
    pdf = tmp_path / "report.pdf"
    _chromium(tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", page.as_uri())
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000


def _distinct_bytes(png: bytes) -> int:
    """Decode the PNG (zlib, filter bytes included) and count distinct byte values: a blank page has few."""
    import zlib

    data, pos, idat = png, 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


def test_a_broken_chain_is_reported_as_broken(history, tmp_path):
    server = history
    [collect] = audit(server, "delivery.collect")
    with server.app().db.writer() as tx:      # someone edits the log behind sluis's back
        tx.execute("UPDATE audit SET actor = 'iemand-anders' WHERE seq = ?", (collect["seq"],))
    report = json.loads(_report(server, tmp_path, "json").read_text())
    assert report["audit_chain"]["ok"] is False and report["audit_chain"]["bad_seq"] == collect["seq"]
    html = _report(server, tmp_path, "html").read_text()
    assert f"GEBROKEN bij record #{collect['seq']}" in html
    everyone = sluis(server.config, "report", "--format", "json")
    assert [t["name"] for t in json.loads(everyone.stdout)["tenants"]] == ["genk", "gent"]
    unknown = sluis(server.config, "report", "--tenant", "nergens")
    assert unknown.returncode == 1 and "nergens" in unknown.stderr
