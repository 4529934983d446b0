"""Checks of the unit files in systemd/ with `systemd-analyze` (verify + offline security review).

Neither check needs systemd running as PID 1: `verify` and `security --offline=true` only load
the unit files. Two things need working around:

* `verify` refuses a unit whose ExecStart= binary does not exist, and /opt/sluis/bin/sluis does
  not exist on a development or CI machine. The units are therefore copied into a temporary
  directory with that path rewritten to a stub script (User=sluis is not checked, so the user
  need not exist).
* `verify` only *warns* about an unknown or unparsable directive, and its exit status for
  warnings depends on the systemd version and on --recursive-errors= (252 exits 0 without the
  option). So it is run with --recursive-errors=no (non-zero exit for warnings about the named
  units only) AND every output line that names one of our unit files counts as a failure.

The negative tests prove both checks would fail: a misspelled directive, a missing ExecStart=
binary and a unit without its sandbox must all be caught.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sluis.config.settings import Settings
from sluis.server.sftp.limits import descriptors_needed
from tests.support.clients import require_binary

UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
SERVICES = ("sluis.service", "sluis-janitor.service")
UNITS = (*SERVICES, "sluis-janitor.timer")
INSTALLED_BINARY = "/opt/sluis/bin/sluis"
CONFIG = "/etc/sluis/sluis.toml"
MAX_EXPOSURE = 2.0  # systemd-analyze rates 0.0-2.0 as "OK"
TIMEOUT = 60  # seconds, per systemd-analyze run

EXPOSURE_RE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")

# Directives removed by the "unit without sandbox" negative test.
SANDBOX_KEYS = {
    "NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "PrivateUsers",
    "ProtectSystem", "ReadWritePaths", "ProtectHome", "PrivateTmp", "PrivateMounts",
    "PrivateDevices", "DevicePolicy", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
    "ProtectProc", "ProcSubset", "RestrictAddressFamilies", "RestrictNamespaces",
    "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute",
    "RemoveIPC", "KeyringMode", "SystemCallArchitectures", "SystemCallFilter",
    "SystemCallErrorNumber", "UMask",
}


# --- helpers ---------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SYSTEMD_LOG_LEVEL="info",  # warnings about unit files must not be filtered out
        SYSTEMD_LOG_COLOR="0",
        SYSTEMD_PAGER="",
        SYSTEMD_COLORS="0",
    )
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TIMEOUT,
        check=False,
    )


def _stage(tmp_path: Path, edits: dict[str, Callable[[str], str]] | None = None, *, stub: bool = True) -> Path:
    """Copy all units to tmp_path/units, ExecStart= pointing at an existing stub, apply edits."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    binary = tmp_path / "bin" / "sluis"
    if stub:
        binary.parent.mkdir()
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    for name in UNITS:
        text = (UNIT_DIR / name).read_text()
        if name.endswith(".service"):
            assert INSTALLED_BINARY in text, f"{name} does not run {INSTALLED_BINARY}"
            text = text.replace(INSTALLED_BINARY, str(binary))
        if edits and name in edits:
            edited = edits[name](text)
            assert edited != text, f"edit of {name} changed nothing"
            text = edited
        (unit_dir / name).write_text(text)
    return unit_dir


def _verify(analyze: str, unit_dir: Path, names: tuple[str, ...] = UNITS) -> list[str]:
    """Run `systemd-analyze verify`; return the problems found (empty list: clean)."""
    paths = [str(unit_dir / name) for name in names]
    proc = _run(
        [analyze, "verify", "--recursive-errors=no", "--man=no", "--no-pager", *paths],
        cwd=unit_dir,
    )
    output = (proc.stdout + proc.stderr).splitlines()
    problems = [
        line for line in output
        if str(unit_dir) in line or any(name in line for name in names)
    ]
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}; output: {output!r}")
    return problems


def _security(analyze: str, unit_path: Path) -> tuple[float, int, str]:
    """Offline security review: (exposure level, exit status with --threshold, output)."""
    proc = _run(
        [
            analyze, "security", "--offline=true", "--no-pager",
            f"--threshold={round(MAX_EXPOSURE * 10)}",  # threshold is in tenths: 20 means 2.0
            str(unit_path),
        ],
        cwd=unit_path.parent,
    )
    output = proc.stdout + proc.stderr
    found = EXPOSURE_RE.findall(output)
    assert len(found) == 1 and found[0][0] == unit_path.name, (
        f"no exposure level for {unit_path.name} in: {output}"
    )
    return float(found[0][1]), proc.returncode, output


def _parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Minimal unit-file reader: {section: {key: [values in order]}}."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        assert not line.endswith("\\"), f"{path.name}: continuation lines not expected"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture
def analyze() -> str:
    return require_binary("systemd-analyze")


# --- the shipped units -----------------------------------------------------------------------


def test_units_verify_cleanly(analyze: str, tmp_path: Path) -> None:
    unit_dir = _stage(tmp_path)
    assert _verify(analyze, unit_dir) == []


@pytest.mark.parametrize("service", SERVICES)
def test_service_exposure_is_ok(analyze: str, tmp_path: Path, service: str) -> None:
    unit_dir = _stage(tmp_path)
    level, status, output = _security(analyze, unit_dir / service)
    assert level <= MAX_EXPOSURE, output
    assert status == 0, output


def test_unit_contents() -> None:
    """What the install instructions in systemd/README.md rely on."""
    server = _parse_unit(UNIT_DIR / "sluis.service")["Service"]
    janitor = _parse_unit(UNIT_DIR / "sluis-janitor.service")["Service"]
    timer = _parse_unit(UNIT_DIR / "sluis-janitor.timer")

    assert server["ExecStart"] == [f"{INSTALLED_BINARY} -c {CONFIG} serve"]
    assert janitor["ExecStart"] == [f"{INSTALLED_BINARY} -c {CONFIG} janitor run"]
    assert janitor["Type"] == ["oneshot"]
    assert "Restart" not in janitor
    assert server["Restart"] == ["on-failure"]
    assert server["KillSignal"] == ["SIGTERM"]
    for unit in (server, janitor):
        assert unit["User"] == ["sluis"] and unit["Group"] == ["sluis"]
        assert unit["StateDirectory"] == ["sluis"]
        assert unit["StateDirectoryMode"] == ["0700"]
        assert unit["ConfigurationDirectory"] == ["sluis"]
        assert unit["UMask"] == ["0077"]
        assert unit["CapabilityBoundingSet"] == [""]
        assert unit["AmbientCapabilities"] == [""]
        assert "sluis-secret-key:/etc/sluis/secret.key" in unit["LoadCredential"]
    assert "sluis-host-key:/etc/sluis/ssh_host_ed25519_key" in server["LoadCredential"]
    # `verify` does not complain about a timer whose Unit= does not exist: check it here.
    assert timer["Timer"]["Unit"] == ["sluis-janitor.service"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    assert (UNIT_DIR / "README.md").is_file()


def test_units_forbid_core_dumps() -> None:
    """A core of the server would hold plaintext; neither unit may write one (issue 8, item 5)."""
    for name in SERVICES:
        assert _parse_unit(UNIT_DIR / name)["Service"]["LimitCORE"] == ["0"], name


def test_descriptor_limit_matches_the_caps() -> None:
    """LimitNOFILE holds every descriptor the default caps allow, with no more than 2x to spare."""
    needed = descriptors_needed(Settings(config_path=Path(CONFIG)))
    [limit] = _parse_unit(UNIT_DIR / "sluis.service")["Service"]["LimitNOFILE"]
    assert needed <= int(limit) <= 2 * needed, (needed, limit)
    assert f"= {needed}" in (UNIT_DIR / "sluis.service").read_text(), "the unit's comment shows other arithmetic"


# --- the checks really fail ------------------------------------------------------------------


def test_verify_catches_misspelled_directive(analyze: str, tmp_path: Path) -> None:
    unit_dir = _stage(
        tmp_path,
        {"sluis.service": lambda t: t.replace("\nNoNewPrivileges=", "\nNoNewPrivilege=")},
    )
    problems = _verify(analyze, unit_dir)
    assert any("NoNewPrivilege" in line for line in problems), problems


def test_verify_catches_bad_value(analyze: str, tmp_path: Path) -> None:
    unit_dir = _stage(
        tmp_path,
        {"sluis-janitor.timer": lambda t: t.replace("RandomizedDelaySec=5m", "RandomizedDelaySec=5q")},
    )
    problems = _verify(analyze, unit_dir)
    assert any("sluis-janitor.timer" in line for line in problems), problems


def test_verify_catches_missing_binary(analyze: str, tmp_path: Path) -> None:
    unit_dir = _stage(tmp_path, stub=False)
    problems = _verify(analyze, unit_dir, ("sluis.service",))
    assert any("not executable" in line for line in problems), problems


def test_security_catches_weakened_unit(analyze: str, tmp_path: Path) -> None:
    def strip_sandbox(text: str) -> str:
        return "\n".join(
            line for line in text.splitlines() if line.partition("=")[0] not in SANDBOX_KEYS
        ) + "\n"

    unit_dir = _stage(tmp_path, {"sluis.service": strip_sandbox})
    level, status, output = _security(analyze, unit_dir / "sluis.service")
    assert level > MAX_EXPOSURE, output
    assert status != 0, output
