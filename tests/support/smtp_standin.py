"""A real SMTP server on 127.0.0.1 (aiosmtpd) that collects messages, for testing mail sending.

Optionally it offers STARTTLS with a freshly generated self-signed certificate (so the client's
certificate verification is really exercised: trust `standin.ca_file`), requires it, and
requires AUTH with one username/password.

    with SmtpStandIn(starttls=True, credentials=("sluis", "secret")) as smtp:
        send_mail(MailServer(host=smtp.host, port=smtp.port, starttls=True, username="sluis",
                             password="secret", sender="sluis@example.org",
                             ca_file=smtp.ca_file), ...)
        [mail] = smtp.messages
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import ssl
import tempfile
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"


@dataclass(frozen=True)
class ReceivedMail:
    """One message as the server received it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool  # whether the session had switched to TLS when the message was sent
    authenticated: bool

    @property
    def message(self) -> EmailMessage:
        """The parsed message (headers decoded, body via get_content())."""
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def body(self) -> str:
        """The decoded text body."""
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return part.get_content()


class _Handler:
    """aiosmtpd handler: applies injected refusals and collects messages."""

    def __init__(self, standin: SmtpStandIn) -> None:
        self._standin = standin

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self._standin._refusal_for(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self._standin._take_data_failure()
        if reply is not None:
            return reply
        self._standin._collect(
            ReceivedMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=bytes(envelope.original_content or b""),
                tls=session.ssl is not None,
                authenticated=bool(session.authenticated),
            )
        )
        return "250 Message accepted for delivery"


class _LoopbackController(Controller):
    """Controller that may bind port 0: it learns the real port before probing the server."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpStandIn:
    """An SMTP server on 127.0.0.1 with optional STARTTLS and AUTH; use as a context manager."""

    def __init__(
        self,
        *,
        starttls: bool = False,
        require_starttls: bool | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """`require_starttls` defaults to `starttls`; `credentials` makes AUTH mandatory."""
        self.starttls = starttls
        self.require_starttls = starttls if require_starttls is None else require_starttls
        self.credentials = credentials
        self._lock = threading.Condition()
        self._messages: list[ReceivedMail] = []
        self._refused: dict[str, str] = {}
        self._data_failures: list[str] = []
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._controller: _LoopbackController | None = None
        self.ca_file: str | None = None

    def start(self) -> SmtpStandIn:
        """Generate the certificate if needed and start serving on a free port."""
        if self._controller is not None:
            raise RuntimeError("stand-in already started")
        kwargs: dict[str, Any] = {}
        if self.starttls:
            self._tempdir = tempfile.TemporaryDirectory(prefix="smtp-standin-")
            cert, key = _self_signed_certificate(Path(self._tempdir.name))
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            kwargs.update(tls_context=context, require_starttls=self.require_starttls)
            self.ca_file = str(cert)
        if self.credentials is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                # Without TLS the test is about AUTH alone; with it, AUTH must wait for TLS.
                auth_require_tls=self.starttls,
            )
        self._controller = _LoopbackController(
            _Handler(self), hostname=HOST, port=0, ready_timeout=5.0,
            server_hostname="smtp-standin.test", **kwargs,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop the server and remove the generated certificate."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> SmtpStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("stand-in not started")
        return self._controller.port

    @property
    def messages(self) -> list[ReceivedMail]:
        """Messages received so far, oldest first."""
        with self._lock:
            return list(self._messages)

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[ReceivedMail]:
        """Block until at least `count` messages arrived; AssertionError after `timeout`."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= count, timeout):
                raise AssertionError(
                    f"expected {count} mail(s) within {timeout}s, got {len(self._messages)}"
                )
            return list(self._messages)

    def refuse_recipient(self, address: str, reply: str = "550 5.1.1 No such user") -> None:
        """Answer RCPT TO for `address` with `reply` (a 4xx reply for a temporary refusal)."""
        with self._lock:
            self._refused[address.lower()] = reply

    def fail_next_data(self, reply: str = "451 4.3.0 Try again later") -> None:
        """Answer the next DATA with `reply` instead of accepting the message."""
        with self._lock:
            self._data_failures.append(reply)

    # --- called from the server's event loop thread -----------------------------------------

    def _refusal_for(self, address: str) -> str | None:
        with self._lock:
            return self._refused.get(address.lower())

    def _take_data_failure(self) -> str | None:
        with self._lock:
            return self._data_failures.pop(0) if self._data_failures else None

    def _collect(self, mail: ReceivedMail) -> None:
        with self._lock:
            self._messages.append(mail)
            self._lock.notify_all()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self.credentials is not None
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        username, password = self.credentials
        ok = auth_data.login == username.encode() and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False)


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a one-day self-signed certificate for 127.0.0.1/localhost; return (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp-standin")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        # A self-signed leaf that is also its own trust anchor must say it is a CA, or
        # OpenSSL's strict chain checks (Python 3.13+ VERIFY_X509_STRICT) reject it.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
