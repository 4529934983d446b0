"""The one typed settings model: a frozen dataclass per TOML section, passed explicitly.

Every field is declared with `setting(raw, parse, doc)`: `raw` is the default exactly as it is
written in sluis.toml, `parse` turns TOML into the typed value, `doc` is the one-line comment
`sluis init` writes above it. Loading, validation and the generated file all read these three.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable

from ..keydelivery.templates import DEFAULT_SMS_TEMPLATE
from .values import (
    duration_range, int_range, one_of, parse_address, parse_bool, parse_database_url,
    parse_duration, parse_e164, parse_listen, parse_networks, parse_node_name, parse_path,
    parse_paths, parse_size, parse_str, size_range,
)


def setting(raw: Any, parse: Callable[[Any], Any], doc: str, *, key: str | None = None,
            secret: bool = False) -> Any:
    """Declare a setting whose default is `raw` as written in TOML (under `key`, if the TOML
    name cannot be a Python name, such as `from`); a `secret` one never shows in a repr."""
    return field(default=parse(raw), repr=not secret,
                 metadata={"raw": raw, "parse": parse, "doc": doc, "key": key})


def toml_key(spec: Any) -> str:
    """The name a setting has in sluis.toml."""
    return spec.metadata.get("key") or spec.name


@dataclass(frozen=True)
class ServerSettings:
    """[server]: the SSH/SFTP listener."""

    listen: tuple[str, int] = setting("127.0.0.1:2222", parse_listen,
                                      "address and port the SFTP server listens on (HOST:PORT)")
    host_keys: tuple[Path, ...] = setting(["ssh_host_ed25519_key"], parse_paths,
                                          "SSH host private keys, relative to this file")
    login_timeout: int = setting("30s", parse_duration,
                                 "time a client has to authenticate before it is disconnected")
    max_auth_tries: int = setting(6, int_range(1, 20),
                                  "authentication attempts allowed per connection")
    max_connections: int = setting(200, int_range(1, 100000),
                                   "simultaneous connections, logged in or not; more are refused")
    max_startups: int = setting(100, int_range(1, 100000),
                                "connections not yet logged in, from all sources together; more are refused")
    per_source_max_startups: int = setting(10, int_range(1, 100000),
                                           "connections not yet logged in from one address (IPv6: one /64)")
    max_sessions_per_user: int = setting(10, int_range(1, 10000),
                                         "simultaneous logged-in connections of one user; more are refused")
    password_threads: int = setting(2, int_range(1, 64),
                                    "threads that check passwords (argon2id), apart from key logins")
    password_queue: int = setting(16, int_range(0, 10000),
                                  "password checks that may wait for a thread; beyond it an attempt fails at once")
    proxy_protocol: bool = setting(False, parse_bool,
                                   "behind a load balancer: every connection starts with a PROXY header (v2 or v1) "
                                   "from trusted_proxies; every other address is refused")
    trusted_proxies: tuple[str, ...] = setting([], parse_networks,
                                               "load balancers (addresses or CIDR blocks) whose PROXY header is "
                                               "believed, e.g. [\"10.0.0.5\"]; needed with proxy_protocol")
    proxy_timeout: int = setting("5s", duration_range(1, 60),
                                 "time a trusted proxy has to send the PROXY header before it is dropped and penalised")
    # Several nodes on one database (server/core/nodes.py): the name is stable across restarts,
    # so a restarted node removes its own interrupted uploads at once; two live processes may not share it.
    node: str = setting("", parse_node_name,
                        "this process's node name among those sharing the database ('' = the host name); "
                        "stable across restarts, one per running `sluis serve`")
    node_lease: int = setting("30s", duration_range(2, 3600),
                              "a node that has not renewed its lease (heartbeat every third of it) for this long is "
                              "taken as gone: other nodes remove its interrupted uploads")


@dataclass(frozen=True)
class DefenderSettings:
    """[defender]: per-address penalties for failed logins and protocol abuse (docs/defender.md)."""

    enabled: bool = setting(True, parse_bool, "ban addresses that score too many penalties")
    threshold: int = setting(15, int_range(1, 100000), "score within the observation window that bans an address")
    observe: int = setting("5m", parse_duration, "observation window: penalties older than this are forgotten")
    ban_time: int = setting("15m", parse_duration, "length of a first ban")
    ban_growth: int = setting(2, int_range(1, 100), "each repeat ban lasts this many times the previous one")
    max_ban: int = setting("24h", parse_duration, "longest ban; an address is forgotten this long after its ban ends")
    allowlist: tuple[str, ...] = setting([], parse_networks,
                                         "addresses or CIDR blocks that are never banned, e.g. [\"10.0.0.0/8\"]")
    score_failure: int = setting(1, int_range(0, 1000), "score of a wrong password, or of rejected keys on a connection that never logs in")
    score_unknown_user: int = setting(3, int_range(0, 1000), "score of an attempt on a user name that does not exist")
    score_protocol_error: int = setting(3, int_range(0, 1000),
                                        "score of malformed or out-of-order protocol, or leaving before any login attempt")
    score_login_timeout: int = setting(3, int_range(0, 1000), "score of a connection cut at the login timeout")


class StorageBackend(StrEnum):
    """Where the encrypted files live."""

    LOCAL = "local"
    S3 = "s3"


def parse_backend(value: Any) -> StorageBackend:
    return StorageBackend(one_of(*(backend.value for backend in StorageBackend))(value))


def parse_s3_prefix(value: Any) -> str:
    """'' or a key prefix such as 'sluis/' or 'prod/sluis/' (a missing final '/' is added)."""
    text = parse_str(value)
    if text and not text.endswith("/"):
        text += "/"
    if text and (not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*/", text) or
                 any(part in (".", "..") for part in text.split("/"))):
        raise ValueError(f"expected a key prefix of letters, digits, '.', '_', '-' and '/' such as "
                         f"'sluis/', got {value!r}")
    return text


@dataclass(frozen=True)
class StorageSettings:
    """[storage]: where state and the encrypted files live."""

    data_dir: Path = setting(".", parse_path,
                             "directory for the state database and the drop boxes, relative to this file")
    # The encrypted files in an S3-compatible bucket (AWS S3, an EU provider, Ceph RGW); the
    # credentials come the standard AWS way (environment, shared file, instance role), never here.
    backend: StorageBackend = setting("local", parse_backend,
                                      "where the encrypted files live: 'local' (data_dir/boxes) or 's3'")
    bucket: str = setting("", parse_str, "s3: bucket name (required with backend = 's3')")
    prefix: str = setting("", parse_s3_prefix, "s3: key prefix inside the bucket, e.g. 'sluis/' ('' = none)")
    endpoint_url: str = setting("", parse_str, "s3: endpoint of a non-AWS store, e.g. 'https://s3.example.eu' ('' = AWS)")
    region: str = setting("", parse_str, "s3: region, e.g. 'eu-west-1' ('' = from the AWS configuration)")
    part_size: int = setting("8MiB", size_range(5 << 20, 5 << 30),
                             "s3: multipart part size; one upload holds at most two parts in memory")
    orphan_grace: int = setting("1h", parse_duration,
                                "s3: an object no delivery refers to is removed only after this long "
                                "(never races another node's publish)")


@dataclass(frozen=True)
class DatabaseSettings:
    """[database]: the state database: SQLite in the data directory, or a shared PostgreSQL."""

    url: str = setting("", parse_database_url,
                       "PostgreSQL libpq URI or connection string (postgresql://user@host/sluis); "
                       "empty: SQLite state.db in the data directory", secret=True)
    pool_size: int = setting(20, int_range(2, 500),
                             "PostgreSQL: connections each process opens at most (a thread waits for one up to 30 s)")


@dataclass(frozen=True)
class UploadSettings:
    """[upload]: limits that bound what one upload may cost the server."""

    window: int = setting("8MiB", parse_size,
                          "per upload: plaintext held in memory for writes that arrive ahead of the stream")
    total_window: int = setting("256MiB", parse_size,
                                "all uploads together: plaintext held in memory for out-of-order writes")
    sender_window: int = setting("64MiB", parse_size,
                                 "one sender's uploads together: their share of total_window, so one cannot take it all")
    max_file_size: int = setting("4GiB", parse_size, "largest file a sender may upload")
    atrest_memory: int = setting("64MiB", size_range(1 << 20, 1 << 40),
                                 "all uploads together: plaintext queued for encryption and hashing "
                                 "(1 MiB at most per upload); writes past it wait")


@dataclass(frozen=True)
class LimitSettings:
    """[limits]: what one logged-in connection or SFTP session may hold (no real client comes near)."""

    channels_per_connection: int = setting(10, int_range(1, 100),
                                           "session channels open at once on one SSH connection (OpenSSH: MaxSessions 10)")
    handles_per_session: int = setting(32, int_range(4, 1024),
                                       "files and folders open at once in one SFTP session")
    uploads_per_session: int = setting(4, int_range(1, 64),
                                       "uploads in progress at once in one SFTP session (open, or awaiting their rename)")
    key_derivations: int = setting(2, int_range(1, 64),
                                   "upload opens deriving their key (scrypt: 1 MiB and 2 ms each at the default "
                                   "work factor) at once, process-wide")
    max_message: int = setting("256KiB", size_range(64 * 1024, 4 * 1024 * 1024),
                               "largest SFTP message accepted; a READ returns at most this less 1 KiB (as OpenSSH)")
    channel_window: int = setting("768KiB", size_range(256 * 1024, 16 * 1024 * 1024),
                                  "SSH receive window of each session: upload data a client may send before the "
                                  "server has read it. A session buffers at most about two windows; one upload "
                                  "moves at most one window per network round trip (raise it for large files "
                                  "over long links)")
    send_half_window: bool = setting(True, parse_bool,
                                     "a download keeps at most half the SSH window its client opened, plus one "
                                     "packet, unacknowledged (clients adjust at half, so none waits; one that has "
                                     "not adjusted after 0.25 s gets the whole window). OpenSSH's client otherwise "
                                     "buffers up to its whole 2 MiB window and spends a quarter more CPU per byte. "
                                     "One download then moves at most half the client's window per network round "
                                     "trip (OpenSSH: 1 MiB); false: the whole window, as other SSH servers")
    store_readers: int = setting(64, int_range(1, 10000),
                                 "s3: downloads open at once, process-wide (each holds a reader thread and 5 MiB of "
                                 "read-ahead); one more is refused until one closes")


@dataclass(frozen=True)
class CryptoSettings:
    """[crypto]: encryption at rest and sealing of passphrases."""

    scrypt_log_n: int = setting(10, int_range(10, 20),
                                "age scrypt work factor (log2 N); passphrases are random, see docs/age.md")
    secret_key_file: Path = setting("secret.key", parse_path,
                                    "32-byte key that seals passphrases at rest (mode 0600), relative to this file")
    audit_key_file: Path = setting("audit.key", parse_path,
                                   "32-byte key that keys the audit chain and signs its checkpoints (mode 0600)")


@dataclass(frozen=True)
class SmsSettings:
    """[sms]: how passphrases reach the municipality's phones."""

    provider: str = setting("console", one_of("console", "twilio"),
                            "'twilio' in production; 'console' prints messages to the log (demo only)")
    account_sid: str = setting("", parse_str, "Twilio account SID (AC...)")
    auth_token: str = setting("", parse_str,
                              "Twilio auth token; better: $SLUIS_TWILIO_AUTH_TOKEN or credential sluis-twilio-token",
                              secret=True)
    from_number: str = setting("", parse_str, "Twilio sender number in E.164 (or set messaging_service_sid)",
                               key="from")
    messaging_service_sid: str = setting("", parse_str, "Twilio messaging service SID (MG...), instead of from")
    api_base: str = setting("https://api.twilio.com", parse_str,
                            "Twilio API endpoint (a regional edge, or a local stand-in for tests)")
    template: str = setting(DEFAULT_SMS_TEMPLATE, parse_str,
                            "SMS text; placeholders {passphrase} {file} {tenant} {expires}")
    default_region: str = setting("BE", parse_str, "region for phone numbers written without +country code")
    resend_interval: int = setting("10m", parse_duration, "minimum time between two resends of one key")
    retry_initial: int = setting("10s", parse_duration, "first wait after a temporary SMS failure; doubles each time")
    retry_max: int = setting("1h", parse_duration, "longest wait between two attempts (retries never stop)")
    alert_after: int = setting(8, int_range(1, 1000), "failed attempts after which the operator is alerted")
    poll_interval: int = setting("1m", parse_duration, "first wait before asking the provider for delivery status")
    poll_limit: int = setting(12, int_range(0, 100), "status polls per message before giving up (0: never poll)")
    redact: bool = setting(True, parse_bool, "erase the body (the passphrase) from the provider's copy once final")
    lease: int = setting("2m", duration_range(15, 3600),
                         "how long one process holds an outbox job it works on; if it dies, another process "
                         "takes the job over after this (at least 15s: longer than a provider call)")


@dataclass(frozen=True)
class EmailSettings:
    """[email]: optional 'a file is waiting' mails and operator alerts (never a passphrase)."""

    enabled: bool = setting(False, parse_bool, "send notification and alert e-mails")
    host: str = setting("localhost", parse_str, "SMTP server")
    port: int = setting(587, int_range(1, 65535), "SMTP port")
    starttls: bool = setting(True, parse_bool, "require STARTTLS")
    username: str = setting("", parse_str, "SMTP user, if the server wants a login")
    password: str = setting("", parse_str, "SMTP password; better: $SLUIS_SMTP_PASSWORD or credential sluis-smtp-password",
                            secret=True)
    sender: str = setting("sluis@localhost", parse_str, "From: address")
    operator: str = setting("", parse_str, "operator address that receives alerts (failed SMS, access attempts)")
    public_host: str = setting("", parse_str, "host name municipalities connect to, quoted in the e-mail")
    public_port: int = setting(0, int_range(0, 65535), "port quoted in the e-mail (0: the listen port)")


@dataclass(frozen=True)
class RetentionSettings:
    """[retention]: how long files, keys and audit records stay."""

    collected_grace: int = setting("24h", parse_duration, "a collected file is removed this long after collection")
    expire_after: int = setting("30d", parse_duration, "an uncollected file expires this long after upload")
    interval: int = setting("15m", parse_duration, "how often `serve` runs the janitor")
    audit_keep: int = setting("5y", parse_duration, "audit records older than this are pruned (with a checkpoint)")


@dataclass(frozen=True)
class AuditSettings:
    """[audit]: signed checkpoints of the audit chain's head, kept outside the database."""

    checkpoint_interval: int = setting("1h", parse_duration,
                                       "how often `serve` verifies the new records and signs a checkpoint")
    checkpoint_file: Path = setting("audit.checkpoints", parse_path,
                                    "append-only file of signed checkpoints, relative to this file")
    mail: bool = setting(True, parse_bool, "mail the newest checkpoint to [email] operator once a day")


@dataclass(frozen=True)
class MonitorSettings:
    """[monitor]: reporting unauthorized access attempts (the protocol wants them within 24h)."""

    report_interval: int = setting("6h", parse_duration,
                                   "at most this often, failed logins and denied requests are reported")


@dataclass(frozen=True)
class IncidentSettings:
    """[incidents]: incidents derived from the audit log, alerted to the security contact (art. 6)."""

    email: str = setting("", parse_address,
                         "security contact e-mail that receives incident alerts ('': the [email] operator)")
    phone: str = setting("", parse_e164, "security contact phone (E.164) that receives incident alerts by SMS")
    interval: int = setting("5s", parse_duration, "how often `serve` turns new audit records into incidents")
    auth_failures: int = setting(5, int_range(1, 1000),
                                 "failed logins from one address or for one account that open an incident")
    auth_window: int = setting("15m", parse_duration, "the time within which those failed logins count")
    language: str = setting("nl", one_of("nl", "en"), "language of alerts and DPO notices")
    max_alerts: int = setting(20, int_range(1, 10000),
                              "incident alerts per hour at most; beyond, incidents open without alert (logged)")


@dataclass(frozen=True)
class PolicySettings:
    """[policy]: the data-sharing protocol's rules."""

    yearly_limit: int = setting(1, int_range(1, 366), "deliveries per municipality per 365 days")
    content: str = setting("any", one_of("any", "kbi-list"),
                           "'kbi-list': only the protocol's five-field list is published (docs/listpolicy.md); "
                           "'any': no content check (sluis init writes kbi-list)")
    name_check: bool = setting(True, parse_bool,
                               "refuse an upload whose file name names another municipality (name or NIS code)")
    max_rows: int = setting(100000, int_range(1, 10_000_000),
                            "kbi-list: most rows in one list (bounds the validator's memory, about 100 bytes a row)")


@dataclass(frozen=True)
class LogSettings:
    """[log]: what goes to stderr (journald)."""

    level: str = setting("info", one_of("debug", "info", "warning", "error"), "log level")


SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "defender": DefenderSettings,
    "storage": StorageSettings,
    "database": DatabaseSettings,
    "upload": UploadSettings,
    "limits": LimitSettings,
    "crypto": CryptoSettings,
    "sms": SmsSettings,
    "email": EmailSettings,
    "retention": RetentionSettings,
    "audit": AuditSettings,
    "policy": PolicySettings,
    "monitor": MonitorSettings,
    "incidents": IncidentSettings,
    "log": LogSettings,
}


@dataclass(frozen=True)
class Settings:
    """Everything sluis is configured with; built once by `load_settings` and passed down."""

    config_path: Path
    server: ServerSettings = field(default_factory=ServerSettings)
    defender: DefenderSettings = field(default_factory=DefenderSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    upload: UploadSettings = field(default_factory=UploadSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    crypto: CryptoSettings = field(default_factory=CryptoSettings)
    sms: SmsSettings = field(default_factory=SmsSettings)
    email: EmailSettings = field(default_factory=EmailSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    incidents: IncidentSettings = field(default_factory=IncidentSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @property
    def base_dir(self) -> Path:
        """Relative paths in the file are relative to the file's own directory."""
        return self.config_path.parent

    @property
    def data_dir(self) -> Path:
        return (self.base_dir / self.storage.data_dir).resolve()

    @property
    def database_path(self) -> Path:
        return self.data_dir / "state.db"

    def resolve(self, path: Path) -> Path:
        return (self.base_dir / path).resolve()


def section_fields(section: type) -> list[Any]:
    """The dataclass fields of a section, in declaration order."""
    return list(fields(section))
