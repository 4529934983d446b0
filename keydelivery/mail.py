"""Sending plain-text notification and alert e-mails over SMTP, with STARTTLS when configured.

Failures map onto the provider errors of `providers.base`, so the outbox worker treats a mail
the same way as an SMS: 4xx replies and network trouble are retried, 5xx replies are not.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sluis.keydelivery.providers.base import PermanentProviderError, TransientProviderError

if TYPE_CHECKING:
    from email.message import EmailMessage

# smtplib and the email package (about 1 MiB) are imported when a mail is sent, not with this
# module: `sluis serve` imports it always and sends mail only when [email] is set up.

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class MailServer:
    """Where and how to submit mail; the password is kept out of repr()."""

    host: str
    port: int
    starttls: bool
    username: str | None
    password: str | None = field(repr=False)
    sender: str
    timeout: float = 10.0
    ca_file: str | None = None  # trust anchors to use instead of the system's (private CA)

    def __post_init__(self) -> None:
        """Refuse settings that would send the SMTP password in clear text over a network."""
        if self.username is not None and not self.starttls and self.host not in _LOOPBACK:
            raise ValueError(
                f"mail server {self.host}:{self.port}: login without STARTTLS would send the "
                "password unencrypted; enable starttls"
            )


def send_mail(settings: MailServer, *, to: list[str], subject: str, body: str) -> None:
    """Submit one UTF-8 plain-text message to all of `to`; raises a provider error on failure.

    If the server refuses only some recipients the others have already received the message;
    the error then names the refused ones. Send one mail per recipient to retry individually.
    """
    import smtplib

    if not to:
        raise ValueError("send_mail needs at least one recipient")
    message = _build_message(settings, to=to, subject=subject, body=body)
    context = _tls_context(settings) if settings.starttls else None
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as smtp:
            if context is not None:
                smtp.starttls(context=context)
            if settings.username is not None:
                smtp.login(settings.username, settings.password or "")
            refused = smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        raise _refused_error(exc.recipients, everyone=True) from exc
    except smtplib.SMTPNotSupportedError as exc:
        # Typically STARTTLS or AUTH not offered: a configuration problem, not a hiccup.
        raise PermanentProviderError(f"mail server {_where(settings)}: {exc}") from exc
    except smtplib.SMTPResponseException as exc:
        raise _reply_error(settings, exc.smtp_code, exc.smtp_error) from exc
    except ssl.SSLCertVerificationError as exc:
        # A certificate that does not verify will not start verifying by itself.
        raise PermanentProviderError(
            f"mail server {_where(settings)}: TLS certificate not trusted: {exc.verify_message}"
        ) from exc
    except (smtplib.SMTPException, OSError) as exc:
        # Connection refused/reset, timeouts, DNS, TLS handshake, server hung up.
        raise TransientProviderError(f"mail server {_where(settings)}: {exc}") from exc
    if refused:
        raise _refused_error(refused, everyone=False)


def _tls_context(settings: MailServer) -> ssl.SSLContext:
    """Verifying TLS context; an unreadable CA file is a configuration error, not a hiccup."""
    try:
        return ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentProviderError(f"cannot load CA file {settings.ca_file}: {exc}") from exc


def _build_message(settings: MailServer, *, to: list[str], subject: str, body: str) -> EmailMessage:
    """Compose the message with the headers a well-behaved submission needs."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    domain = settings.sender.rpartition("@")[2].strip("> ") or None
    message["Message-ID"] = make_msgid(domain=domain)
    # Automatic notifications: ask autoresponders not to answer (RFC 3834).
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(body, charset="utf-8")
    return message


def _reply_error(
    settings: MailServer, code: int, reply: bytes | str
) -> TransientProviderError | PermanentProviderError:
    """4xx replies (and unknown ones) are worth retrying; 5xx replies are final."""
    description = f"mail server {_where(settings)} replied {code} {_text(reply)}"
    if 500 <= code < 600:
        return PermanentProviderError(description, code=code)
    return TransientProviderError(description)


def _refused_error(
    refused: dict[str, tuple[int, bytes]], *, everyone: bool
) -> TransientProviderError | PermanentProviderError:
    """Report refused recipients; permanent only if every refusal was a 5xx."""
    details = ", ".join(
        f"{address}: {code} {_text(reply)}" for address, (code, reply) in refused.items()
    )
    scope = "all recipients refused" if everyone else "some recipients refused"
    codes = [code for code, _ in refused.values()]
    if codes and all(500 <= code < 600 for code in codes):
        return PermanentProviderError(f"{scope}: {details}", code=max(codes))
    return TransientProviderError(f"{scope}: {details}")


def _where(settings: MailServer) -> str:
    """host:port, for error messages."""
    return f"{settings.host}:{settings.port}"


def _text(reply: bytes | str) -> str:
    """An SMTP reply text as str (smtplib hands over bytes)."""
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
