"""Configuration: sluis.toml is read strictly (unknown keys, sections and bad values stop startup
with exit code 2 and a message naming the key and what is allowed), and `sluis init` writes a
complete, commented file that parses back to the defaults, with private keys at mode 0600."""

from __future__ import annotations

import dataclasses

import re
import stat
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from sluis.config.settings import toml_key

from sluis.config import ConfigError, Settings, load_settings, render_config
from sluis.config.settings import SECTIONS, section_fields
from sluis.config.values import format_duration, format_size, parse_duration, parse_listen, parse_size
from sluis.server.cli.init import init_setup
from tests.support.library import SLUIS, sluis


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    return init_setup(tmp_path / "setup")


def set_value(config: Path, section: str, key: str, literal: str) -> None:
    """Replace `key = ...` inside [section] with `key = literal` (a TOML literal)."""
    text = config.read_text()
    head, sep, rest = text.partition(f"[{section}]\n")
    assert sep, section
    rest, count = re.subn(rf"^{key} = .*$", f"{key} = {literal}", rest, count=1, flags=re.M)
    assert count == 1, key
    config.write_text(head + sep + rest)


def add_line(config: Path, section: str, line: str) -> None:
    text = config.read_text()
    config.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1))


# --- strict loading ----------------------------------------------------------------------------------
BAD = [
    ("server", "listen", '"nonsense"', ["[server] listen", "HOST:PORT", "'nonsense'"]),
    ("retention", "collected_grace", '"5 parsecs"', ["[retention] collected_grace", "'24h'", "'5 parsecs'"]),
    ("crypto", "scrypt_log_n", "99", ["[crypto] scrypt_log_n", "from 10 to 20", "99"]),
    ("sms", "provider", '"carrier-pigeon"', ["[sms] provider", "'console', 'twilio'"]),
    ("email", "enabled", '"yes"', ["[email] enabled", "true or false"]),
    ("upload", "max_file_size", '"4 gigs"', ["[upload] max_file_size", "'2GiB'"]),
    ("policy", "yearly_limit", "0", ["[policy] yearly_limit", "from 1 to 366"]),
    ("sms", "lease", '"5s"', ["[sms] lease", "from 15s to 1h", "'5s'"]),
    ("log", "level", '"chatty"', ["[log] level", "'debug', 'info', 'warning', 'error'"]),
]


@pytest.mark.parametrize("section,key,literal,expected", BAD, ids=[b[1] for b in BAD])
def test_bad_value_stops_status(setup, section, key, literal, expected):
    set_value(setup, section, key, literal)
    result = sluis(setup, "status")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "configuration error" in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    with pytest.raises(ConfigError):
        load_settings(setup, {})


def test_unknown_key_names_key_and_allowed(setup):
    add_line(setup, "retention", 'keep_forever = true')
    result = sluis(setup, "status")
    assert result.returncode == 2
    assert "unknown setting [retention] keep_forever" in result.stderr
    assert "allowed in [retention]: collected_grace, expire_after, interval, audit_keep" in result.stderr


def test_unknown_section_names_section_and_allowed(setup):
    setup.write_text(setup.read_text() + "\n[backup]\ntarget = \"s3://x\"\n")
    result = sluis(setup, "status")
    assert result.returncode == 2
    assert "unknown section [backup]" in result.stderr
    allowed = ", ".join(f"[{name}]" for name in SECTIONS)
    assert {"server", "retention", "policy", "log"} <= set(SECTIONS)
    assert f"allowed sections: {allowed}" in result.stderr


def test_value_where_a_section_belongs(setup):
    setup.write_text("retention = 5\n")
    result = sluis(setup, "status")
    assert result.returncode == 2 and "'retention' must be a section" in result.stderr


def test_invalid_toml_and_missing_file(setup, tmp_path):
    setup.write_text(setup.read_text() + "\nthis is not toml\n")
    result = sluis(setup, "status")
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    missing = sluis(tmp_path / "nowhere.toml", "status")
    assert missing.returncode == 2 and "no such configuration file" in missing.stderr


def test_unreadable_config_is_a_config_error(tmp_path):
    """Regression: a directory (or an unreadable file) as CONFIG gave a traceback, not exit 2."""
    result = sluis(tmp_path, "status")
    assert result.returncode == 2, result.stderr
    assert "cannot read the configuration file" in result.stderr and "Traceback" not in result.stderr
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[server]\n")
    result = sluis(binary, "status")
    assert result.returncode == 2 and "not valid TOML" in result.stderr and "Traceback" not in result.stderr


def test_bad_config_stops_serve_before_listening(setup):
    set_value(setup, "retention", "collected_grace", '"5 parsecs"')
    result = subprocess.run([*SLUIS, "-c", str(setup), "serve"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "[retention] collected_grace" in result.stderr
    assert "listening" not in result.stderr


def test_unknown_key_stops_serve(setup):
    add_line(setup, "server", "port = 22")
    result = subprocess.run([sys.executable, "-m", "sluis.server.cli.main", "-c", str(setup), "serve"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "unknown setting [server] port" in result.stderr and "listen" in result.stderr


def test_config_from_environment_variable(setup, tmp_path):
    result = subprocess.run([*SLUIS, "status"], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "SLUIS_CONFIG": str(setup)})
    assert result.returncode == 0, result.stderr
    assert "no deliveries" in result.stdout


def test_secret_from_environment_overrides_file(setup):
    settings = load_settings(setup, {"SLUIS_TWILIO_AUTH_TOKEN": "from-env", "SLUIS_SMTP_PASSWORD": "pw"})
    assert settings.sms.auth_token == "from-env" and settings.email.password == "pw"


# --- values ------------------------------------------------------------------------------------------
def test_value_parsers():
    assert parse_duration("90s") == 90 and parse_duration("15m") == 900 and parse_duration("24h") == 86400
    assert parse_duration("30d") == 30 * 86400 and parse_duration("5y") == 5 * 365 * 86400
    for bad in ("5 parsecs", "", "10", 10, "1.5h", "-1s", True):
        with pytest.raises(ValueError, match="expected a duration"):
            parse_duration(bad)
    assert parse_size("8MiB") == 8 << 20 and parse_size(1024) == 1024
    with pytest.raises(ValueError):
        parse_size(-1)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0) and parse_listen("[::]:22") == ("::", 22)
    for bad in ("nonsense", ":22", "host:", "host:70000", 2222):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)
    for seconds in (1, 59, 90, 3600, 86400, 30 * 86400, 14 * 86400, 5 * 365 * 86400):
        assert parse_duration(format_duration(seconds)) == seconds
    for size in (1, 1000, 64 << 10, 8 << 20, 3 << 30):
        assert parse_size(format_size(size)) == size


# --- sluis init --------------------------------------------------------------------------------------
def test_init_writes_every_setting_with_comment(tmp_path):
    result = subprocess.run([*SLUIS, "init", str(tmp_path / "new")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = tmp_path / "new" / "sluis.toml"
    assert f"created {config}" in result.stdout
    lines = config.read_text().splitlines()
    document = tomllib.loads(config.read_text())
    assert set(document) == set(SECTIONS)
    for name, section in SECTIONS.items():
        assert lines[lines.index(f"[{name}]") - 1].startswith("# "), name
        assert set(document[name]) == {toml_key(f) for f in section_fields(section)}, name
        for spec in section_fields(section):
            [index] = [i for i, line in enumerate(lines) if line.startswith(f"{toml_key(spec)} = ")
                       and _section_of(lines, i) == name]
            assert lines[index - 1] == f"# {spec.metadata['doc']}", spec.name
    # parses back to exactly the defaults, except what a new setup gets (NEW_SETUP)
    settings = load_settings(config, {})
    defaults = Settings(config_path=config.absolute())
    for f in fields(Settings):
        if f.name != "policy":
            assert getattr(settings, f.name) == getattr(defaults, f.name), f.name
    assert settings.policy == dataclasses.replace(defaults.policy, content="kbi-list")
    # and `status` runs on it
    status = sluis(config, "status")
    assert status.returncode == 0, status.stderr


def test_new_setups_check_lists_and_old_configs_keep_any(tmp_path):
    """`sluis init` writes content = "kbi-list"; a config from before the key existed loads as "any"."""
    config = init_setup(tmp_path / "new")
    assert 'content = "kbi-list"' in config.read_text()
    assert load_settings(config, {}).policy.content == "kbi-list"
    config.write_text(re.sub(r'^content = "kbi-list"\n', "", config.read_text(), flags=re.M))
    assert "content =" not in config.read_text()
    settings = load_settings(config, {})
    assert settings.policy.content == "any" and settings.policy.name_check is True
    assert init_setup(tmp_path / "explicit", {"policy": {"content": "any"}}).read_text().count('content = "any"') == 1


def _section_of(lines: list[str], index: int) -> str:
    for line in reversed(lines[:index]):
        if line.startswith("[") and line.endswith("]"):
            return line[1:-1]
    return ""


def test_render_with_overrides_parses_back():
    text = render_config({"retention": {"collected_grace": "1s"}, "server": {"listen": "127.0.0.1:0"}})
    document = tomllib.loads(text)
    assert document["retention"]["collected_grace"] == "1s"
    assert document["sms"]["template"] == SECTIONS["sms"]().template


def test_init_files_are_private(tmp_path):
    config = init_setup(tmp_path / "priv")
    base = config.parent
    for name in ("ssh_host_ed25519_key", "secret.key", "audit.key", "sluis.toml", "state.db"):
        mode = stat.S_IMODE((base / name).stat().st_mode)
        assert mode == 0o600, f"{name}: {oct(mode)}"
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    assert len((base / "secret.key").read_bytes()) >= 32
    assert len((base / "audit.key").read_bytes()) == 32


def test_init_refuses_existing_setup(tmp_path):
    target = tmp_path / "twice"
    first = subprocess.run([*SLUIS, "init", str(target)], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    second = subprocess.run([*SLUIS, "init", str(target)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert "already holds a setup" in second.stderr and "refusing to overwrite" in second.stderr
    after = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    assert after == before
    # a directory with only part of a setup (say a leftover host key) is refused too
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "ssh_host_ed25519_key").write_text("keep me")
    third = subprocess.run([*SLUIS, "init", str(partial)], capture_output=True, text=True, timeout=60)
    assert third.returncode == 1 and "ssh_host_ed25519_key" in third.stderr
    assert (partial / "ssh_host_ed25519_key").read_text() == "keep me"
    assert not (partial / "sluis.toml").exists()


def test_sms_from_is_written_and_read_under_its_toml_name(tmp_path):
    from sluis.config import load_settings, render_config

    text = render_config({"sms": {"from_number": "+3228001234"}})
    assert '\nfrom = "+3228001234"\n' in text and "from_number" not in text
    path = tmp_path / "sluis.toml"
    path.write_text(text)
    assert load_settings(path, {}).sms.from_number == "+3228001234"


def test_bad_sms_template_stops_startup(tmp_path):
    from sluis.config import ConfigError, load_settings, render_config

    path = tmp_path / "sluis.toml"
    path.write_text(render_config({"sms": {"template": "Uw bestand {file} staat klaar"}}))
    with pytest.raises(ConfigError, match=r"\[sms\] template: .*passphrase"):
        load_settings(path, {})
    path.write_text(render_config({"sms": {"template": "code {passphrase} voor {gemeente}"}}))
    with pytest.raises(ConfigError, match=r"\[sms\] template: .*gemeente"):
        load_settings(path, {})


def test_secrets_never_show_in_a_repr_of_the_settings(tmp_path):
    path = tmp_path / "sluis.toml"
    path.write_text(render_config({"sms": {"auth_token": "tw-secret-123"},
                                   "email": {"password": "smtp-secret-456"}}))
    settings = load_settings(path, {})
    assert settings.sms.auth_token == "tw-secret-123" and settings.email.password == "smtp-secret-456"
    assert "tw-secret-123" not in repr(settings) and "smtp-secret-456" not in repr(settings)
    assert "account_sid=" in repr(settings.sms)   # the rest still shows
