"""Reading sluis.toml into Settings: unknown keys and bad values stop startup, named."""

from __future__ import annotations

import os
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from .settings import SECTIONS, Settings, section_fields, toml_key


S3_MAX_PARTS = 9_990   # S3 allows 10,000; the few left over absorb the encryption's overhead


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, key and what is allowed."""


def default_config_path(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """-c CONFIG, else $SLUIS_CONFIG, else ./sluis.toml."""
    return Path(explicit or environ.get("SLUIS_CONFIG") or "sluis.toml")


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate `path`; secrets may come from the environment or systemd credentials."""
    environ = os.environ if environ is None else environ
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file (run 'sluis init DIR' to create one)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:  # a directory, no permission, ...: a configuration error, not a traceback
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text ({exc.reason})") from None
    settings = parse_document(document, Path(path).absolute(), str(path))
    _check_templates(settings, str(path))
    _check_storage(settings, str(path))
    _check_proxy(settings, str(path))
    settings = _apply_node_name(settings, environ)
    return _apply_secret_sources(settings, environ)


def _apply_node_name(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """$SLUIS_NODE names this process's node, over [server] node: several processes may then run
    on one shared configuration file (one per unit instance, e.g. `Environment=SLUIS_NODE=%i`)."""
    name = environ.get("SLUIS_NODE")
    if not name:
        return settings
    from .settings import parse_node_name
    try:
        return replace(settings, server=replace(settings.server, node=parse_node_name(name)))
    except ValueError as exc:
        raise ConfigError(f"SLUIS_NODE: {exc}") from None


def _check_templates(settings: Settings, label: str) -> None:
    """A bad SMS template must stop startup, not fail each message later."""
    from ..keydelivery.templates import TemplateError, validate_sms_template

    try:
        validate_sms_template(settings.sms.template)
    except TemplateError as exc:
        raise ConfigError(f"{label}: [sms] template: {exc}") from None


def _check_storage(settings: Settings, label: str) -> None:
    """An S3 backend without a bucket cannot store anything: say so at startup."""
    storage = settings.storage
    if storage.backend == "s3" and not storage.bucket:
        raise ConfigError(f"{label}: [storage] bucket: required with backend = 's3'")
    if storage.backend == "s3" and settings.upload.max_file_size > storage.part_size * S3_MAX_PARTS:
        raise ConfigError(f"{label}: [storage] part_size: an upload has at most {S3_MAX_PARTS} parts, too few "
                          f"for [upload] max_file_size; raise part_size to at least "
                          f"{-(-settings.upload.max_file_size // S3_MAX_PARTS // (1 << 20))}MiB")


def _check_proxy(settings: Settings, label: str) -> None:
    """proxy_protocol without a trusted proxy would refuse every connection."""
    if settings.server.proxy_protocol and not settings.server.trusted_proxies:
        raise ConfigError(f"{label}: [server] proxy_protocol = true needs trusted_proxies (the load balancers' "
                          "addresses, e.g. [\"10.0.0.5\"]); without them every connection would be refused")


def parse_document(document: dict[str, Any], config_path: Path, label: str) -> Settings:
    """Build Settings from a parsed TOML document, rejecting anything unknown."""
    sections: dict[str, Any] = {}
    for name, table in document.items():
        section = SECTIONS.get(name)
        if section is None:
            allowed = ", ".join(f"[{s}]" for s in SECTIONS)
            raise ConfigError(f"{label}: unknown section [{name}]; allowed sections: {allowed}")
        if not isinstance(table, dict):
            raise ConfigError(f"{label}: '{name}' must be a section ([{name}]), not a value")
        sections[name] = _parse_section(name, section, table, label)
    return Settings(config_path=config_path, **sections)


def _parse_section(name: str, section: type, table: dict[str, Any], label: str) -> Any:
    known = {toml_key(f): f for f in section_fields(section)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        spec = known.get(key)
        if spec is None:
            allowed = ", ".join(known)
            raise ConfigError(f"{label}: unknown setting [{name}] {key}; allowed in [{name}]: {allowed}")
        try:
            values[spec.name] = spec.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(f"{label}: [{name}] {key}: {exc}") from None
    return section(**values)


def _apply_secret_sources(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """Secrets from $SLUIS_* variables or systemd credentials override the file's values."""
    creds = environ.get("CREDENTIALS_DIRECTORY")

    def secret(current: str, env: str, credential: str) -> str:
        if environ.get(env):
            return environ[env]
        if creds and (Path(creds) / credential).is_file():
            return (Path(creds) / credential).read_text().strip()
        return current

    sms = replace(settings.sms, auth_token=secret(settings.sms.auth_token, "SLUIS_TWILIO_AUTH_TOKEN",
                                                  "sluis-twilio-token"))
    email = replace(settings.email, password=secret(settings.email.password, "SLUIS_SMTP_PASSWORD",
                                                    "sluis-smtp-password"))
    return replace(settings, sms=sms, email=email)
