"""The SMS providers and the mailer against local stand-ins: the real twilio library over HTTP to
a Twilio look-alike, and smtplib to a real aiosmtpd server (with and without STARTTLS)."""

from __future__ import annotations

import datetime
import email.utils
import io
import socket
import time
from collections.abc import Iterator

import pytest

from sluis.keydelivery.mail import MailServer, send_mail
from sluis.keydelivery.passphrase import new_passphrase
from sluis.keydelivery.providers.base import (
    FINAL_STATUSES,
    PermanentProviderError,
    SendResult,
    SmsProvider,
    TransientProviderError,
)
from sluis.keydelivery.providers.console import ConsoleProvider
from sluis.keydelivery.providers.twilio import TwilioProvider
from sluis.keydelivery.templates import (
    DEFAULT_SMS_TEMPLATE,
    EMAIL_DISCLAIMER,
    render_email,
    render_sms,
)
from tests.support.smtp_standin import SmtpStandIn
from tests.support.twilio_standin import TwilioStandIn

MOBILE = "+32470123456"
OTHER_MOBILE = "+32499123456"
SENDER = "+3225550100"
SERVICE_SID = "MG" + "a" * 32

# --- Twilio --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    # requests honours HTTP(S)_PROXY; a CI proxy must not intercept calls to the stand-ins.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def twilio() -> Iterator[TwilioStandIn]:
    with TwilioStandIn(polls_to_deliver=2) as standin:
        yield standin


def _provider(standin: TwilioStandIn, **overrides: object) -> TwilioProvider:
    options: dict[str, object] = {
        "from_number": SENDER,
        "messaging_service_sid": None,
        "api_base": standin.url,
        "timeout": 2.0,
    }
    options.update(overrides)
    return TwilioProvider(
        standin.account_sid, standin.auth_token, **options  # type: ignore[arg-type]
    )


def _sms() -> str:
    return render_sms(
        DEFAULT_SMS_TEMPLATE,
        passphrase=new_passphrase(),
        file="inburgeraars_genk_2026.csv.age",
        tenant="Stad Genk",
        expires=datetime.date(2026, 12, 28),
    )


def test_twilio_provider_satisfies_the_protocol(twilio: TwilioStandIn) -> None:
    assert isinstance(_provider(twilio), SmsProvider)
    assert isinstance(ConsoleProvider(io.StringIO()), SmsProvider)


def test_send_with_from_number(twilio: TwilioStandIn) -> None:
    body = _sms()
    result = _provider(twilio).send(MOBILE, body)
    assert result.status == "queued"
    assert result.provider_id.startswith("SM") and len(result.provider_id) == 34
    [message] = twilio.messages
    assert (message.sid, message.to, message.from_, message.body) == (
        result.provider_id, MOBILE, SENDER, body,
    )
    assert message.messaging_service_sid is None


def test_send_with_messaging_service(twilio: TwilioStandIn) -> None:
    provider = _provider(twilio, from_number=None, messaging_service_sid=SERVICE_SID)
    result = provider.send(MOBILE, "hallo")
    assert result.status == "accepted"
    [message] = twilio.messages
    assert message.messaging_service_sid == SERVICE_SID and message.from_ is None


def test_send_to_two_phones(twilio: TwilioStandIn) -> None:
    provider = _provider(twilio)
    results = [provider.send(phone, "code") for phone in (MOBILE, OTHER_MOBILE)]
    assert len({result.provider_id for result in results}) == 2
    assert [message.to for message in twilio.messages] == [MOBILE, OTHER_MOBILE]


def test_rate_limit_is_transient_with_retry_after(twilio: TwilioStandIn) -> None:
    twilio.rate_limit_next(1, retry_after=7)
    provider = _provider(twilio)
    with pytest.raises(TransientProviderError) as caught:
        provider.send(MOBILE, "code")
    assert caught.value.retry_after == 7
    assert "429" in str(caught.value)
    # The next attempt goes through.
    assert provider.send(MOBILE, "code").status == "queued"


def test_retry_after_as_http_date(twilio: TwilioStandIn) -> None:
    twilio.rate_limit_next(1, retry_after=email.utils.formatdate(time.time() + 30, usegmt=True))
    with pytest.raises(TransientProviderError) as caught:
        _provider(twilio).send(MOBILE, "code")
    assert caught.value.retry_after is not None and 25 <= caught.value.retry_after <= 30


def test_service_unavailable_is_transient(twilio: TwilioStandIn) -> None:
    twilio.fail_next(1, status=503)
    with pytest.raises(TransientProviderError) as caught:
        _provider(twilio).send(MOBILE, "code")
    assert caught.value.retry_after is None
    assert twilio.messages == []


def test_outage_is_transient_until_it_ends(twilio: TwilioStandIn) -> None:
    provider = _provider(twilio)
    twilio.outage(True)
    for _ in range(2):
        with pytest.raises(TransientProviderError):
            provider.send(MOBILE, "code")
    twilio.outage(False)
    provider.send(MOBILE, "code")


@pytest.mark.parametrize("code", [21211, 21610, 21614])
def test_rejected_number_is_permanent_with_twilio_code(twilio: TwilioStandIn, code: int) -> None:
    twilio.reject_number(MOBILE, code=code)
    provider = _provider(twilio)
    with pytest.raises(PermanentProviderError) as caught:
        provider.send(MOBILE, "code")
    assert caught.value.code == code
    assert str(code) in str(caught.value)
    # Only that number is refused.
    provider.send(OTHER_MOBILE, "code")


def test_bad_credentials_are_permanent(twilio: TwilioStandIn) -> None:
    provider = TwilioProvider(
        twilio.account_sid, "wrong-token", from_number=SENDER, messaging_service_sid=None,
        api_base=twilio.url, timeout=2.0,
    )
    with pytest.raises(PermanentProviderError) as caught:
        provider.send(MOBILE, "code")
    assert caught.value.code == 20003


def test_revoked_credentials_are_permanent(twilio: TwilioStandIn) -> None:
    twilio.bad_credentials()
    with pytest.raises(PermanentProviderError) as caught:
        _provider(twilio).send(MOBILE, "code")
    assert caught.value.code == 20003


def test_connection_refused_is_transient() -> None:
    with TwilioStandIn() as standin:
        provider = _provider(standin)
    # The stand-in has stopped: its port now refuses connections.
    with pytest.raises(TransientProviderError, match="cannot reach Twilio"):
        provider.send(MOBILE, "code")


def test_timeout_is_transient(twilio: TwilioStandIn) -> None:
    twilio.stall_next(1, seconds=3)
    provider = _provider(twilio, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TransientProviderError, match="in time"):
        provider.send(MOBILE, "code")
    assert time.monotonic() - started < 2


def test_status_polling_reaches_delivered(twilio: TwilioStandIn) -> None:
    provider = _provider(twilio)
    sent = provider.send(MOBILE, "code")
    assert provider.fetch_status(sent.provider_id) == "sent"
    assert provider.fetch_status(sent.provider_id) == "delivered"
    assert "delivered" in FINAL_STATUSES


def test_status_polling_reaches_undelivered(twilio: TwilioStandIn) -> None:
    twilio.undeliver(OTHER_MOBILE)
    provider = _provider(twilio)
    sent = provider.send(OTHER_MOBILE, "code")
    statuses = [provider.fetch_status(sent.provider_id) for _ in range(3)]
    assert statuses == ["sent", "undelivered", "undelivered"]
    assert twilio.messages[0].error_code == 30003
    assert "undelivered" in FINAL_STATUSES


def test_polling_an_unknown_message_is_permanent(twilio: TwilioStandIn) -> None:
    with pytest.raises(PermanentProviderError) as caught:
        _provider(twilio).fetch_status("SM" + "0" * 32)
    assert caught.value.code == 20404


def test_polling_during_rate_limit_is_transient(twilio: TwilioStandIn) -> None:
    provider = _provider(twilio)
    sent = provider.send(MOBILE, "code")
    twilio.rate_limit_next(1, retry_after=2)
    with pytest.raises(TransientProviderError) as caught:
        provider.fetch_status(sent.provider_id)
    assert caught.value.retry_after == 2


def test_environment_edge_does_not_reroute(
    twilio: TwilioStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TWILIO_EDGE would make the library rewrite the host to 127.sydney.us1.0.1:PORT.
    monkeypatch.setenv("TWILIO_EDGE", "sydney")
    monkeypatch.setenv("TWILIO_REGION", "au1")
    _provider(twilio).send(MOBILE, "code")
    assert len(twilio.messages) == 1


@pytest.mark.parametrize(
    "options",
    [
        {"from_number": None, "messaging_service_sid": None},
        {"from_number": SENDER, "messaging_service_sid": SERVICE_SID},
        {"from_number": None, "messaging_service_sid": "+3225550100"},
        {"api_base": "api.twilio.com"},
    ],
)
def test_twilio_configuration_mistakes_are_refused(options: dict[str, object]) -> None:
    settings: dict[str, object] = {"from_number": SENDER, "messaging_service_sid": None}
    settings.update(options)
    with pytest.raises(ValueError):
        TwilioProvider("AC" + "0" * 32, "token", **settings)  # type: ignore[arg-type]


# --- console -----------------------------------------------------------------------------------


def test_console_provider_prints_and_reports_delivered() -> None:
    stream = io.StringIO()
    provider = ConsoleProvider(stream)
    first = provider.send(MOBILE, "wachtwoord K7RF-2MXD")
    second = provider.send(OTHER_MOBILE, "ander")
    assert first == SendResult(provider_id="console-1", status="sent")
    assert second.provider_id == "console-2"
    output = stream.getvalue()
    assert MOBILE in output and "wachtwoord K7RF-2MXD" in output and OTHER_MOBILE in output
    assert provider.fetch_status(first.provider_id) == "delivered"


def test_console_provider_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    ConsoleProvider().send(MOBILE, "hallo")
    assert "hallo" in capsys.readouterr().err


# --- mail --------------------------------------------------------------------------------------

SENDER_ADDRESS = "sluis@integratie-inburgering.be"
RECIPIENT = "dienst.inburgering@genk.be"


def _settings(smtp: SmtpStandIn, **overrides: object) -> MailServer:
    options: dict[str, object] = {
        "host": smtp.host,
        "port": smtp.port,
        "starttls": smtp.starttls,
        "username": None,
        "password": None,
        "sender": SENDER_ADDRESS,
        "timeout": 3.0,
        "ca_file": smtp.ca_file,
    }
    options.update(overrides)
    return MailServer(**options)  # type: ignore[arg-type]


def _notification() -> tuple[str, str]:
    return render_email(
        file="inburgeraars_genk_2026.csv.age",
        tenant="Stad Genk",
        expires=datetime.date(2026, 12, 28),
        host="sftp.integratie-inburgering.be",
        port=22,
    )


def test_mail_without_tls() -> None:
    subject, body = _notification()
    with SmtpStandIn() as smtp:
        send_mail(_settings(smtp), to=[RECIPIENT], subject=subject, body=body)
        [mail] = smtp.messages
    assert mail.rcpt_tos == (RECIPIENT,)
    assert mail.mail_from == SENDER_ADDRESS
    assert not mail.tls
    assert mail.message["Subject"] == subject
    assert mail.message["Auto-Submitted"] == "auto-generated"
    assert EMAIL_DISCLAIMER in mail.body


def test_mail_with_starttls_and_auth_never_carries_a_passphrase() -> None:
    passphrase = new_passphrase()
    render_sms(DEFAULT_SMS_TEMPLATE, passphrase=passphrase, file="f", tenant="t", expires="x")
    subject, body = _notification()
    with SmtpStandIn(starttls=True, credentials=("sluis", "s3cret")) as smtp:
        settings = _settings(smtp, username="sluis", password="s3cret")
        send_mail(settings, to=[RECIPIENT, "tweede@genk.be"], subject=subject, body=body)
        [mail] = smtp.messages
    assert mail.tls and mail.authenticated
    assert set(mail.rcpt_tos) == {RECIPIENT, "tweede@genk.be"}
    assert "verwijder deze e-mail dan onmiddellijk" in mail.body
    assert "sftp.integratie-inburgering.be" in mail.body
    assert passphrase not in mail.data.decode("utf-8", "replace")
    assert "wachtwoord" in mail.body.lower()  # it says the password comes by SMS ...
    assert "per sms" in mail.body


def test_mail_refuses_an_untrusted_certificate() -> None:
    with SmtpStandIn(starttls=True) as smtp:
        with pytest.raises(PermanentProviderError, match="not trusted"):
            send_mail(_settings(smtp, ca_file=None), to=[RECIPIENT], subject="s", body="b")
        assert smtp.messages == []


def test_mail_wrong_password_is_permanent() -> None:
    with SmtpStandIn(starttls=True, credentials=("sluis", "s3cret")) as smtp:
        settings = _settings(smtp, username="sluis", password="wrong")
        with pytest.raises(PermanentProviderError) as caught:
            send_mail(settings, to=[RECIPIENT], subject="s", body="b")
    assert caught.value.code == 535


def test_mail_recipient_refused_5xx_is_permanent() -> None:
    with SmtpStandIn() as smtp:
        smtp.refuse_recipient(RECIPIENT)
        with pytest.raises(PermanentProviderError, match=RECIPIENT) as caught:
            send_mail(_settings(smtp), to=[RECIPIENT], subject="s", body="b")
    assert caught.value.code == 550


def test_mail_recipient_refused_4xx_is_transient() -> None:
    with SmtpStandIn() as smtp:
        smtp.refuse_recipient(RECIPIENT, "450 4.2.1 Mailbox busy")
        with pytest.raises(TransientProviderError, match="450"):
            send_mail(_settings(smtp), to=[RECIPIENT], subject="s", body="b")


def test_mail_partly_refused_names_the_refused_recipient() -> None:
    with SmtpStandIn() as smtp:
        smtp.refuse_recipient("weg@genk.be")
        with pytest.raises(PermanentProviderError, match="weg@genk.be"):
            send_mail(_settings(smtp), to=[RECIPIENT, "weg@genk.be"], subject="s", body="b")
        [mail] = smtp.messages
    assert mail.rcpt_tos == (RECIPIENT,)


def test_mail_temporary_data_failure_is_transient() -> None:
    with SmtpStandIn() as smtp:
        smtp.fail_next_data()
        with pytest.raises(TransientProviderError, match="451"):
            send_mail(_settings(smtp), to=[RECIPIENT], subject="s", body="b")
        send_mail(_settings(smtp), to=[RECIPIENT], subject="s", body="b")
        assert len(smtp.messages) == 1


def test_mail_connection_refused_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        settings = MailServer(
            host="127.0.0.1", port=port, starttls=False, username=None, password=None,
            sender=SENDER_ADDRESS, timeout=2.0,
        )
        with pytest.raises(TransientProviderError):
            send_mail(settings, to=[RECIPIENT], subject="s", body="b")


def test_mail_login_without_tls_to_a_remote_host_is_refused() -> None:
    with pytest.raises(ValueError, match="STARTTLS"):
        MailServer(
            host="smtp.example.org", port=25, starttls=False, username="u", password="p",
            sender=SENDER_ADDRESS,
        )


def test_mail_password_is_not_in_repr() -> None:
    settings = MailServer(
        host="smtp.example.org", port=587, starttls=True, username="u", password="hunter2",
        sender=SENDER_ADDRESS,
    )
    assert "hunter2" not in repr(settings)
