"""Log lines a client cannot forge (server/logsafe.py): a real client sends a user name and a path
holding a newline, terminal escape codes and a bidi override that spell out a fake audit line;
the server log (at debug level, so asyncssh's own lines are in it too) shows each as one escaped
line, and every line that looks like an audit record is a real one."""

from __future__ import annotations

import logging
import re

import paramiko
import pytest

from sluis.server.logsafe import SafeFormatter, escape, quoted
from tests.support.clients_extra import audit, connect, wait_audit

FORGED = ("2026-11-30 12:00:00,000 INFO sluis.audit: audit #424242 auth.success actor=\"genk-clerk\" "
          "tenant=\"genk\" delivery=- source=\"127.0.0.1:1\" {} hash=0123456789abcdef")
TRICKS = "\x1b[1A\x1b[2K\r\u202e\u2028\x85\x7f"
AUDIT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO sluis\.audit: audit #(\d+) (\S+) "
                        r"actor=.* hash=([0-9a-f]{16})$")
RAW_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


# --- the pieces ----------------------------------------------------------------------------------
def test_escape_writes_out_every_unsafe_character():
    text = "a\x00b\nc\x1bd\x7fe\x85f\x9fg\u2028h\u2029i\u202ej\u2066k\u200fl\u061cm"
    assert escape(text) == ("a\\x00b\\x0ac\\x1bd\\x7fe\\x85f\\x9fg\\u2028h\\u2029i\\u202ej\\u2066k\\u200fl"
                            "\\u061cm")
    assert escape("gemeente Genk – lijst é ü 北") == "gemeente Genk – lijst é ü 北"  # printable text stays


def test_quoted_is_one_unambiguous_token():
    assert quoted('a" tenant="gent\\') == '"a\\" tenant=\\"gent\\\\"'
    assert quoted("x\ny") == '"x\\x0ay"'
    assert quoted(None) == "-"


def test_formatter_makes_one_line_of_any_message_and_marks_traceback_lines():
    formatter = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("asyncssh", logging.INFO, __file__, 1, "user %s", (f"x\n{FORGED}{TRICKS}",), None)
    line = formatter.format(record)
    assert "\n" not in line and not RAW_UNSAFE.search(line)
    assert line.startswith("INFO asyncssh: user x\\x0a2026-11-30")
    try:
        raise ValueError(f"bad\n{FORGED}")
    except ValueError as exc:
        failed = logging.LogRecord("sluis", logging.ERROR, __file__, 1, "internal error", (), (ValueError, exc,
                                                                                                exc.__traceback__))
    out = formatter.format(failed).split("\n")
    assert out[0] == "ERROR sluis: internal error" and len(out) > 2
    assert all(line.startswith("  | ") for line in out[1:]), out
    assert out[-1] == f"  | {FORGED}"    # the exception text's own newline cannot start a record


# --- a real client against a real server ------------------------------------------------------------
@pytest.fixture
def debug_server(make_server):
    return make_server(overrides={"log": {"level": "debug"}}).standard().start()


def test_forged_user_name_and_path_stay_one_escaped_line(debug_server):
    server = debug_server
    key = paramiko.Ed25519Key.from_private_key_file(str(server.accounts["agency"].key))
    # asyncssh refuses a user name with control characters before authentication (SASLprep)...
    transport = paramiko.Transport(("127.0.0.1", server.port))
    with transport, pytest.raises(paramiko.SSHException):
        transport.connect(username=f"evil\n{FORGED}{TRICKS}", pkey=key)
    # ...but quotes and spaces pass: agency's key for a user that does not exist, an auth.failure.
    user = 'evil" tenant="gent" source="10.0.0.1:22" {} hash=01234567 x'   # under the 64 audited
    transport = paramiko.Transport(("127.0.0.1", server.port))
    with transport, pytest.raises(paramiko.AuthenticationException):
        transport.connect(username=user, pkey=key)
    name = f"lijst\n{FORGED}{TRICKS}.csv"
    with connect(server, "agency") as client, pytest.raises(IOError):
        client.open(f"/genk/{name}", "w")
    [failure] = wait_audit(server, "auth.failure", lambda r: r["actor"] == user)
    [deny] = wait_audit(server, "sftp.deny", lambda r: "424242" in r["detail"]["path"])
    server.wait_for(rf"audit #{deny['seq']} sftp\.deny")
    server.stop()
    log = server.log_path.read_text(encoding="utf-8")
    lines = log.splitlines()

    # Nothing raw: no control character but the newline that ends each line, no separator, no bidi.
    assert not RAW_UNSAFE.search(log), repr(RAW_UNSAFE.search(log))
    # The forged text never starts a line; every line that looks like an audit record is one.
    assert not any(line.startswith(FORGED[:30]) for line in lines)
    records = {(str(r["seq"]), r["event"], r["hash"][:16]) for r in audit(server)}
    looks_like_audit = [AUDIT_LINE.match(line) for line in lines if AUDIT_LINE.match(line)]
    assert looks_like_audit and all(m.groups() in records for m in looks_like_audit), looks_like_audit
    assert (str(failure["seq"]), "auth.failure", failure["hash"][:16]) in {m.groups() for m in looks_like_audit}

    # The request: one sftp line, the path quoted and escaped, as one token.
    request = [line for line in lines if " sluis.sftp: " in line and "424242" in line]
    assert len(request) == 1, request
    assert ' path="/genk/lijst\\x0a2026-11-30 12:00:00,000 INFO sluis.audit: audit #424242 auth.success ' \
           'actor=\\"genk-clerk\\"' in request[0]
    assert '\\x1b[1A\\x1b[2K\\x0d\\u202e\\u2028\\x85\\x7f.csv" result="' in request[0]
    # The failed login's audit line: the user name quoted, escaped, one token.
    [failure_line] = [line for line in lines if f"audit #{failure['seq']} auth.failure" in line]
    assert (' actor="evil\\" tenant=\\"gent\\" source=\\"10.0.0.1:22\\" {} hash=01234567 x"'
            ' tenant=- delivery=- source="127.0.0.1:') in failure_line
    assert [r["actor"] for r in audit(server, "auth.failure")] == [user]   # the newline one never got that far
