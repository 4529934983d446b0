"""The SMS, e-mail and operator-alert texts, with placeholder checks and SMS segment counting.

Templates use `str.format` placeholders, but only plain names (`{file}`): attribute access,
indexing, conversions and format specs are refused, so a template from the configuration cannot
reach into Python objects, and a typo is reported at startup rather than when a file is waiting.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

# Expiry dates are shown in the recipients' local time: a file that expires at 23:30 UTC on the
# 28th is still available on the 29th in Belgium, and that is the date people will read.
_LOCAL_TIME = ZoneInfo("Europe/Brussels")
_DATE_FORMAT = "%d-%m-%Y"

SMS_PLACEHOLDERS = frozenset({"passphrase", "file", "tenant", "expires"})
EMAIL_PLACEHOLDERS = frozenset({"file", "tenant", "expires", "host", "port"})
ALERT_PLACEHOLDERS = frozenset({"file", "tenant", "phone", "reason", "expires"})

# The space before the full stop keeps the period from being copied along with the passphrase
# when someone long-presses it on their phone.
DEFAULT_SMS_TEMPLATE = (
    "Agentschap Integratie en Inburgering: wachtwoord voor {file} ({tenant}): {passphrase} . "
    "Beschikbaar tot {expires}. Deel deze code met niemand."
)

EMAIL_DISCLAIMER = (
    "Deze e-mail is uitsluitend bestemd voor de geadresseerde. Bent u niet de bedoelde "
    "ontvanger, verwijder deze e-mail dan onmiddellijk. Het is niet toegestaan de inhoud "
    "ervan te gebruiken, te kopiëren of door te sturen."
)


class TemplateError(ValueError):
    """A template has an unknown or malformed placeholder, or lacks / leaks the passphrase."""


@dataclass(frozen=True)
class MailTemplate:
    """Subject and body of an e-mail, both with `{placeholder}` fields."""

    subject: str
    body: str


DEFAULT_EMAIL_TEMPLATE = MailTemplate(
    subject="Er staat een bestand voor u klaar: {file}",
    body=(
        "Beste,\n"
        "\n"
        "Op de beveiligde server van het Agentschap Integratie en Inburgering staat een "
        "bestand voor {tenant} klaar:\n"
        "\n"
        "    {file}\n"
        "\n"
        "Het bestand is beschikbaar tot {expires}. Daarna wordt het automatisch verwijderd.\n"
        "\n"
        "U haalt het bestand op via SFTP, met uw persoonlijke account:\n"
        "\n"
        "    server: {host}\n"
        "    poort:  {port}\n"
        "\n"
        "Het bestand is versleuteld. Het wachtwoord om het te openen ontvangt u apart per sms "
        "op het geregistreerde gsm-nummer. Wij sturen dat wachtwoord nooit per e-mail.\n"
        "\n"
        "Met vriendelijke groeten,\n"
        "Agentschap Integratie en Inburgering\n"
        "\n"
        "--\n" + EMAIL_DISCLAIMER + "\n"
    ),
)

DEFAULT_ALERT_TEMPLATE = MailTemplate(
    subject="[sluis] Tussenkomst nodig: {file} ({tenant})",
    body=(
        "Voor {file} ({tenant}) is een tussenkomst van de beheerder nodig.\n"
        "\n"
        "Betreft: {phone}\n"
        "Reden:   {reason}\n"
        "\n"
        "Het bestand blijft beschikbaar tot {expires}. Bekijk de toestand met 'sluis status'; "
        "controleer zo nodig het gsm-nummer van {tenant} ('sluis tenant show {tenant}') en "
        "verstuur het wachtwoord opnieuw met 'sluis key resend'.\n"
        "\n"
        "Dit bericht bevat het wachtwoord niet.\n"
    ),
)


# --- rendering ---------------------------------------------------------------------------------


def format_expiry(expires: date | str) -> str:
    """Show an expiry as `28-12-2026`; aware datetimes are converted to Belgian time first."""
    if isinstance(expires, str):
        return expires
    if isinstance(expires, datetime) and expires.tzinfo is not None:
        expires = expires.astimezone(_LOCAL_TIME)
    return expires.strftime(_DATE_FORMAT)


def validate_sms_template(template: str) -> None:
    """Check an SMS template at startup: known placeholders only, and `{passphrase}` present."""
    fields = _placeholders(template, SMS_PLACEHOLDERS, what="SMS template")
    if "passphrase" not in fields:
        raise TemplateError("SMS template has no {passphrase} placeholder: it would send no code")


def render_sms(
    template: str, *, passphrase: str, file: str, tenant: str, expires: date | str
) -> str:
    """Fill in the SMS template; raises `TemplateError` for a bad template."""
    validate_sms_template(template)
    return template.format(
        passphrase=passphrase, file=file, tenant=tenant, expires=format_expiry(expires)
    )


def validate_email_template(template: MailTemplate) -> None:
    """Check an e-mail template at startup; `{passphrase}` is refused outright."""
    for part, text in (("subject", template.subject), ("body", template.body)):
        _refuse_passphrase(text, what=f"e-mail {part}")
        _placeholders(text, EMAIL_PLACEHOLDERS, what=f"e-mail {part}")


def render_email(
    template: MailTemplate = DEFAULT_EMAIL_TEMPLATE,
    *,
    file: str,
    tenant: str,
    expires: date | str,
    host: str,
    port: int,
) -> tuple[str, str]:
    """Return (subject, body) of the "a file is waiting" e-mail, always with the disclaimer."""
    validate_email_template(template)
    values = {
        "file": file,
        "tenant": tenant,
        "expires": format_expiry(expires),
        "host": host,
        "port": str(port),
    }
    subject = _one_line(template.subject.format(**values))
    body = template.body.format(**values)
    # The protocol requires the disclaimer in every notification; a custom template that forgot
    # it still gets it rather than being sent without.
    if EMAIL_DISCLAIMER not in body:
        body = body.rstrip("\n") + "\n\n--\n" + EMAIL_DISCLAIMER + "\n"
    return subject, body


def validate_alert_template(template: MailTemplate) -> None:
    """Check an operator-alert template; it may never carry the passphrase either."""
    for part, text in (("subject", template.subject), ("body", template.body)):
        _refuse_passphrase(text, what=f"alert {part}")
        _placeholders(text, ALERT_PLACEHOLDERS, what=f"alert {part}")


def render_alert(
    template: MailTemplate = DEFAULT_ALERT_TEMPLATE,
    *,
    file: str,
    tenant: str,
    phone: str,
    reason: str,
    expires: date | str,
) -> tuple[str, str]:
    """Return (subject, body) of the operator alert for an SMS that failed permanently."""
    validate_alert_template(template)
    values = {
        "file": file,
        "tenant": tenant,
        "phone": phone,
        "reason": reason,
        "expires": format_expiry(expires),
    }
    return _one_line(template.subject.format(**values)), template.body.format(**values)


def _placeholders(template: str, allowed: frozenset[str], *, what: str) -> set[str]:
    """Return the placeholder names in `template`, refusing unknown or non-plain ones."""
    if not isinstance(template, str):
        raise TemplateError(f"{what} must be text, got {type(template).__name__}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"{what} is malformed ({exc}); write a literal brace as {{{{ or }}}}")
    names: set[str] = set()
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise TemplateError(
                f"{what} has placeholder {{{field}}}: only plain names such as {{file}} are allowed"
            )
        if spec or conversion:
            raise TemplateError(f"{what} has placeholder {{{field}}} with a format or conversion")
        if field not in allowed:
            raise TemplateError(
                f"{what} has unknown placeholder {{{field}}}; allowed: "
                + ", ".join("{" + name + "}" for name in sorted(allowed))
            )
        names.add(field)
    return names


def _refuse_passphrase(template: str, *, what: str) -> None:
    """Refuse `{passphrase}` with a message that says why, not just "unknown placeholder"."""
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field}
    except (ValueError, TypeError):
        return  # malformed or not text: _placeholders reports that with a better message
    if any(field.split(".")[0].split("[")[0].split("!")[0] == "passphrase" for field in fields):
        raise TemplateError(
            f"{what} contains {{passphrase}}: the passphrase travels only by SMS, never by e-mail"
        )


def _one_line(text: str) -> str:
    """Collapse whitespace so a file name with a newline cannot break a mail header."""
    return " ".join(text.split())


# --- SMS segments ------------------------------------------------------------------------------

# GSM 03.38 default alphabet (one septet each) and its extension table (escape + septet).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

_GSM7_SINGLE, _GSM7_PART = 160, 153  # a multipart header (UDH) takes 7 septets per part
_UCS2_SINGLE, _UCS2_PART = 70, 67  # ... or 3 UTF-16 units


def is_gsm7(text: str) -> bool:
    """True if `text` can be sent in the GSM-7 alphabet (basic or extension table)."""
    return all(char in _GSM7_BASIC or char in _GSM7_EXTENSION for char in text)


def sms_segments(text: str) -> int:
    """Count the SMS parts `text` needs (0 for empty): GSM-7 160/153, else UCS-2 70/67."""
    if not text:
        return 0
    if is_gsm7(text):
        costs = [2 if char in _GSM7_EXTENSION else 1 for char in text]
        single, part = _GSM7_SINGLE, _GSM7_PART
    else:
        # UCS-2 in practice means UTF-16: characters outside the BMP (emoji) take two units.
        costs = [2 if ord(char) > 0xFFFF else 1 for char in text]
        single, part = _UCS2_SINGLE, _UCS2_PART
    if sum(costs) <= single:
        return 1
    # An escape pair or surrogate pair is never split across parts, so pack greedily.
    segments, used = 1, 0
    for cost in costs:
        if used + cost > part:
            segments += 1
            used = 0
        used += cost
    return segments
