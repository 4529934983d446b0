"""`sluis send` and [policy] content = "kbi-list" / name_check, end to end: a real server, real
clients (sluis send, OpenSSH sftp, PuTTY psftp, paramiko), the console SMS provider."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import asyncssh
import pytest

from sluis.server.core.listcheck import make_rrn
from tests.support.clients import require_binary
from tests.support.clients_extra import audit, close_raw, connect, deliveries
from tests.support.server import SMS_LINE, SluisServer

HEADER = "naam;voornaam;rijksregisternummer;inburgeringscontract;attest\n"
# the person's names and number appear here only: no message may carry them
SECRET = "Vanderzwaluwen"


def good_list(rows: int = 3, seed: int = 1) -> bytes:
    """A valid list of `rows` distinct people (birth dates from 1970 + seed, sequence 1-997)."""
    start = date(1970 + seed, 1, 1)
    lines = [HEADER] + [f"{SECRET}{i};Gerlinde;{make_rrn(start + timedelta(days=i // 997), 1 + i % 997)};"
                        f"{'J' if i % 2 else 'nee'};{'1' if i % 3 else 'n'}\n" for i in range(rows)]
    return "".join(lines).encode()


@pytest.fixture
def kbi(make_server) -> SluisServer:
    """content = "kbi-list": genk (71016), gent (44021), hasselt (71022); sender agency, a Genk clerk."""
    server = make_server({"policy": {"content": "kbi-list"}})
    server.add_tenant("genk", nis="71016")
    server.add_tenant("gent", nis="44021", phones=("+32471234567",), fmt="zip")
    server.add_tenant("hasselt", nis="71022", phones=("+32472345678",))
    server.add_user("agency", "sender")
    server.add_user("genk-clerk", "recipient", "genk")
    return server.start()


def send(server: SluisServer, *args: str, pin: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    base = ["--server", f"127.0.0.1:{server.port}", "--user", "agency", "--identity",
            str(server.accounts["agency"].key)]
    if pin:
        base += ["--host-key-fingerprint", server.host_key_fingerprint()]
    return subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "send", *base, *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def sms_lines(server: SluisServer) -> list[str]:
    return [m.group(0) for m in SMS_LINE.finditer(server.log)]


def assert_nothing_sent(server: SluisServer) -> None:
    """No delivery, no key job, no SMS line in the server log."""
    app = server.app()
    assert deliveries(server) == []
    assert app.db.query_one("SELECT count(*) FROM outbox")[0] == 0
    assert sms_lines(server) == [] and "[sms console" not in server.log


# --- sluis send --------------------------------------------------------------------------------------
def test_send_one_list_by_name_and_by_nis(kbi, tmp_path):
    (tmp_path / "lijst_2026.csv").write_bytes(good_list(10))
    result = send(kbi, "--to", "genk", str(tmp_path / "lijst_2026.csv"))
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = deliveries(kbi, name="lijst_2026.csv")
    assert "SENT     genk" in result.stdout and f"sha256={row['plain_sha256']}" in result.stdout
    assert f"{row['plain_size']} bytes" in result.stdout
    assert kbi.passphrase("lijst_2026.csv.age")
    (tmp_path / "gent_lijst.csv").write_bytes(good_list(4, seed=7))
    result = send(kbi, "--json", "--to", "44021", str(tmp_path / "gent_lijst.csv"))
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)["files"]
    assert entry["tenant"] == "gent" and entry["verdict"] == "sent"
    assert deliveries(kbi, name="gent_lijst.csv")[0]["plain_sha256"] == entry["sha256"]


def test_batch_names_and_nis_codes_and_a_refusal_does_not_stop_the_rest(kbi, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "genk.csv").write_bytes(good_list(5))
    (batch / "44021_2026.csv").write_bytes(good_list(6, seed=3))
    (batch / "a_fout_hasselt.csv").write_bytes(good_list(2).replace(b";J;", b";misschien;"))
    (batch / "onbekend.csv").write_bytes(good_list(2))
    (batch / "zz_lijst_71022.csv").write_bytes(good_list(3, seed=5))
    result = send(kbi, "--json", "--batch", str(batch))
    assert result.returncode == 1, result.stderr
    files = {Path(f["file"]).name: f for f in json.loads(result.stdout)["files"]}
    assert {name: (f["tenant"], f["verdict"]) for name, f in files.items()} == {
        "44021_2026.csv": ("gent", "sent"), "a_fout_hasselt.csv": ("hasselt", "refused"),
        "genk.csv": ("genk", "sent"), "onbekend.csv": (None, "failed"), "zz_lijst_71022.csv": ("hasselt", "sent")}
    assert "line 3, inburgeringscontract: not a yes/no value" in files["a_fout_hasselt.csv"]["message"]
    assert "names no municipality" in files["onbekend.csv"]["message"]
    published = {(d["name"], d["plain_sha256"]) for d in deliveries(kbi)}
    assert published == {(n, files[n]["sha256"]) for n in ("genk.csv", "44021_2026.csv", "zz_lijst_71022.csv")}


def test_a_server_refusal_reaches_sluis_send_with_its_line(kbi, tmp_path):
    """--no-list-check skips the local check, so the server's own refusal is what comes back."""
    (tmp_path / "genk.csv").write_bytes(good_list(3) + f"{SECRET};X;85073003329;J;N\n".encode())
    result = send(kbi, "--no-list-check", "--to", "genk", str(tmp_path / "genk.csv"))
    assert result.returncode == 1
    assert "REFUSED" in result.stdout and "line 5, rijksregisternummer: check number does not match" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert_nothing_sent(kbi)


def test_changed_or_unknown_host_key_stops_the_batch(kbi, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "genk.csv").write_bytes(good_list(2))
    (batch / "gent.csv").write_bytes(good_list(2))
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{kbi.port} {other}")
    result = send(kbi, "--known-hosts", str(known), "--batch", str(batch), pin=False)
    assert result.returncode == 2 and "STOPPED" in result.stderr and "CHANGED" in result.stderr
    assert result.stdout == ""
    result = send(kbi, "--batch", str(batch), pin=False, env={"SLUIS_KNOWN_HOSTS": str(tmp_path / "empty")})
    assert result.returncode == 2 and "is not in" in result.stderr
    result = send(kbi, "--host-key-fingerprint", "SHA256:" + "A" * 43, "--batch", str(batch), pin=False)
    assert result.returncode == 2 and "not the pinned" in result.stderr
    assert_nothing_sent(kbi)
    # the right key in known_hosts, given by environment variables only, sends both
    key = (kbi.data_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{kbi.port} {' '.join(key)}\n")
    env = {"SLUIS_SERVER": f"127.0.0.1:{kbi.port}", "SLUIS_USER": "agency",
           "SLUIS_IDENTITY": str(kbi.accounts["agency"].key), "SLUIS_KNOWN_HOSTS": str(known)}
    result = subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "send", "--batch", str(batch)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(deliveries(kbi)) == 2


def test_dry_run_checks_locally_and_sends_nothing(kbi, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "genk.csv").write_bytes(good_list(3))
    (batch / "71022.csv").write_bytes(HEADER.replace(";attest", ";attest;email").encode() + b"A;B;85073003328;J;N;x\n")
    result = send(kbi, "--dry-run", "--json", "--batch", str(batch))
    assert result.returncode == 1, result.stderr
    files = {Path(f["file"]).name: f for f in json.loads(result.stdout)["files"]}
    assert files["genk.csv"]["verdict"] == "valid"
    assert files["71022.csv"]["verdict"] == "refused"
    assert "line 1: header column 6 is not one of the five fields" in files["71022.csv"]["message"]
    # no server needed at all
    result = subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "send", "--dry-run", "--to", "genk",
                             str(batch / "genk.csv")], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith("SLUIS_")})
    assert result.returncode == 0 and "VALID" in result.stdout, result.stderr
    assert_nothing_sent(kbi)
    assert audit(kbi, "upload.start") == []


def test_deprecated_alias_still_sends(kbi, tmp_path):
    (tmp_path / "lijst.csv").write_bytes(good_list(2))
    result = subprocess.run([sys.executable, "-m", "sluis.server.cli.upload", "genk", str(tmp_path / "lijst.csv"),
                             "--host", "127.0.0.1", "--port", str(kbi.port), "--user", "agency",
                             "--key", str(kbi.accounts["agency"].key),
                             "--host-key-fingerprint", kbi.host_key_fingerprint()],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "deprecated" in result.stderr and "SENT" in result.stdout
    assert len(deliveries(kbi, name="lijst.csv")) == 1


# --- the server's list policy, through any client ----------------------------------------------------
FAULTS = [
    ("bad check number", HEADER + f"{SECRET};G;85073003329;J;N\n", "line 2, rijksregisternummer: check number"),
    ("extra column", HEADER.replace("attest", "attest;adres") + f"{SECRET};G;85073003328;J;N;Kerkstraat 1\n",
     "line 1: header column 6 is not one of the five fields"),
    ("duplicate", HEADER + f"{SECRET};G;85073003328;J;N\nB;C;85.07.30-033.28;N;N\n",
     "line 3, rijksregisternummer: duplicate person"),
    ("ragged row", HEADER + f"{SECRET};G;85073003328;J;N\nB;C;85073003328\n", "line 3: 3 fields, expected 5"),
    ("empty row", HEADER + f"{SECRET};G;85073003328;J;N\n\n", "line 3: empty row"),
    ("yes/no", HEADER + f"{SECRET};G;85073003328;J;soms\n", "line 2, attest: not a yes/no value"),
    ("birth date", HEADER + f"{SECRET};G;{make_rrn(date(2031, 5, 1), 3)};J;N\n",
     "line 2, rijksregisternummer: no plausible birth date"),
    ("not a list", "naam;adres\nA;B\n", "line 1: header column 2 is not one of the five fields"),
]


@pytest.mark.parametrize("content, expected", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_each_content_fault_is_refused_with_its_line_and_no_sms(kbi, content, expected):
    with connect(kbi, "agency") as client:
        handle = client.open("/genk/lijst.csv", "wb")
        handle.write(content.encode())
        code, text = close_raw(client, handle)
    assert code != 0 and expected in text and "nothing was published" in text
    [refusal] = audit(kbi, "upload.refused")
    assert refusal["tenant"] == "genk" and refusal["detail"]["policy"] == "content"
    line = int(expected.split("line ")[1].split(",")[0].split(":")[0])
    assert refusal["detail"]["problems"][0]["line"] == line
    assert len(audit(kbi, "upload.abort")) == 1
    everything = json.dumps(audit(kbi)) + kbi.log
    for value in (SECRET, "85073003329", "Kerkstraat", "soms"):
        assert value not in everything
    assert_nothing_sent(kbi)


def test_openssh_sftp_and_psftp_publish_a_good_list_and_show_a_refusal(kbi, tmp_path):
    require_binary("psftp")
    good, bad = tmp_path / "genk_2026.csv", tmp_path / "fout.csv"
    good.write_bytes(good_list(4))
    bad.write_bytes(good_list(3) + b"X;Y;85073003328;J\n")
    result = kbi.sftp("agency", f"-put {bad} /genk/fout.csv\nput {good} /genk/genk_2026.csv\n", check=False)
    assert "line 5: 4 fields, expected 5" in result.stderr, result.stderr
    assert deliveries(kbi, name="genk_2026.csv") and kbi.passphrase("genk_2026.csv.age")
    assert not deliveries(kbi, name="fout.csv")
    account = kbi.accounts["agency"]
    script = tmp_path / "psftp.txt"
    script.write_text(f"put {bad} /71022/fout.csv\n")
    result = subprocess.run(["psftp", "-batch", "-b", str(script), "-P", str(kbi.port), "-noagent", "-i",
                             str(account.ppk()), "-hostkey", kbi.host_key_fingerprint(), "agency@127.0.0.1"],
                            capture_output=True, text=True, timeout=60)
    assert "line 5: 4 fields, expected 5" in result.stdout + result.stderr
    script.write_text(f"put {good} /71022/hasselt.csv\n")
    subprocess.run(["psftp", "-batch", "-b", str(script), "-P", str(kbi.port), "-noagent", "-i",
                    str(account.ppk()), "-hostkey", kbi.host_key_fingerprint(), "agency@127.0.0.1"],
                   capture_output=True, text=True, timeout=60, check=True)
    assert deliveries(kbi, name="hasselt.csv")[0]["stored_name"] == "hasselt.csv.age"
    assert [r["detail"]["name"] for r in audit(kbi, "upload.refused")] == ["fout.csv", "fout.csv"]


@pytest.mark.parametrize("name", ["genk.csv", "71016_2026.csv", "lijst-genk-2026.csv", "genk.csv.filepart"])
def test_a_file_naming_another_municipality_is_refused_at_open(kbi, tmp_path, name):
    source = tmp_path / "lijst.csv"
    source.write_bytes(good_list(2))
    result = kbi.sftp("agency", f"put {source} /gent/{name}\n", check=False)
    assert result.returncode != 0
    assert "names genk (NIS 71016), but it was sent to gent (NIS 44021)" in result.stderr, result.stderr
    [refusal] = audit(kbi, "upload.refused")
    assert refusal["detail"]["policy"] == "name_check" and refusal["detail"]["named"] == "genk"
    assert audit(kbi, "upload.start") == []
    assert_nothing_sent(kbi)


def test_name_check_through_sluis_send_and_its_own_name_is_fine(kbi, tmp_path):
    (tmp_path / "genk_71016.csv").write_bytes(good_list(2))
    result = send(kbi, "--to", "hasselt", str(tmp_path / "genk_71016.csv"))
    assert result.returncode == 1 and "names genk (NIS 71016), but it was sent to hasselt" in result.stdout
    result = send(kbi, "--to", "genk", str(tmp_path / "genk_71016.csv"))
    assert result.returncode == 0, result.stdout


def test_content_any_accepts_anything_and_name_check_can_be_off(make_server, tmp_path):
    server = make_server({"policy": {"name_check": False}})
    server.add_tenant("genk", nis="71016")
    server.add_tenant("gent", nis="44021")
    server.add_user("agency", "sender")
    server.start()
    (tmp_path / "x.csv").write_bytes(b"naam;adres\nA;B\n")
    server.sftp("agency", f"put {tmp_path / 'x.csv'} /gent/genk.csv\n")
    assert deliveries(server, name="genk.csv")
    assert server.app().settings.policy.content == "any"


class DroppingProxy:
    """A TCP proxy to the server that cuts its first connection after `cut` bytes from the client
    (mid-upload), and forwards later connections whole: a real transient failure."""

    def __init__(self, port: int, cut: int) -> None:
        import socket
        import threading

        self.target, self.cut, self.connections = port, cut, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._threading = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            limit = self.cut if self.connections == 1 else None
            self._threading.Thread(target=self._pipe, args=(client, upstream, limit), daemon=True).start()
            self._threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pipe(source, sink, limit) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                sent += len(data)
                if limit is not None and sent >= limit:
                    break
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def test_a_connection_lost_mid_upload_is_retried(kbi, tmp_path):
    data = good_list(7000)
    assert len(data) > 300_000
    (tmp_path / "genk.csv").write_bytes(data)
    proxy = DroppingProxy(kbi.port, cut=150_000)
    try:
        result = subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "send", "--server",
                                 f"127.0.0.1:{proxy.port}", "--user", "agency", "--identity",
                                 str(kbi.accounts["agency"].key), "--host-key-fingerprint", kbi.host_key_fingerprint(),
                                 "--to", "genk", str(tmp_path / "genk.csv")],
                                capture_output=True, text=True, timeout=120)
    finally:
        proxy.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert proxy.connections == 2
    [row] = deliveries(kbi)
    assert row["plain_size"] == len(data)
    [cut] = audit(kbi, "upload.abort")      # the first attempt, cut off and discarded
    assert cut["detail"]["reason"] == "connection lost before the upload was closed"


def test_progress_bar_on_a_terminal_plain_lines_otherwise(kbi, tmp_path):
    import pty
    import select

    (tmp_path / "genk.csv").write_bytes(good_list(3000))
    args = [sys.executable, "-m", "sluis.server.cli.main", "send", "--server", f"127.0.0.1:{kbi.port}", "--user",
            "agency", "--identity", str(kbi.accounts["agency"].key), "--host-key-fingerprint",
            kbi.host_key_fingerprint(), "--to", "genk", str(tmp_path / "genk.csv")]
    master, slave = pty.openpty()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    terminal = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, "sluis send went quiet on its terminal"
        try:
            chunk = os.read(master, 65536)
        except OSError:     # the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    stdout = process.stdout.read().decode()
    assert process.wait(60) == 0, terminal.decode(errors="replace")
    os.close(master)
    assert "━".encode() in terminal and b"sending genk.csv" not in terminal
    assert "SENT" in stdout
    plain = send(kbi, "--to", "genk", str(tmp_path / "genk.csv"))
    assert plain.returncode == 0 and "sending genk.csv to genk" in plain.stderr and "━" not in plain.stderr


def test_out_of_order_writes_are_checked_in_order(kbi):
    """The validator sees the plaintext as the reorder window releases it: in file order."""
    data = good_list(400)
    middle = data.index(b"\n", len(data) // 2) - 3      # cut inside a row
    with connect(kbi, "agency") as client:
        handle = client.open("/genk/lijst.csv", "wb")
        handle.seek(middle)
        handle.write(data[middle:])
        handle.seek(0)
        handle.write(data[:middle])
        code, text = close_raw(client, handle)
    assert code == 0, text
    assert deliveries(kbi, name="lijst.csv")[0]["plain_size"] == len(data)


def test_a_staged_upload_is_checked_when_closed(kbi):
    """WinSCP's NAME.filepart: refused at close, so the rename has nothing to publish."""
    with connect(kbi, "agency") as client:
        handle = client.open("/genk/lijst.csv.filepart", "wb")
        handle.write(good_list(3) + b"A;B;85073003328;J\n")
        code, text = close_raw(client, handle)
        assert code != 0 and "nothing was published" in text and "line 5: 4 fields, expected 5" in text
        with pytest.raises(IOError):
            client.rename("/genk/lijst.csv.filepart", "/genk/lijst.csv")
    assert_nothing_sent(kbi)
