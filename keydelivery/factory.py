"""Choosing the SMS provider from [sms] settings."""

from __future__ import annotations

from ..config import ConfigError
from ..config.settings import SmsSettings
from .providers.base import SmsProvider
from .providers.console import ConsoleProvider


def make_provider(sms: SmsSettings) -> SmsProvider:
    if sms.provider == "console":
        return ConsoleProvider()
    missing = [name for name in ("account_sid", "auth_token") if not getattr(sms, name)]
    if missing:
        raise ConfigError(f"[sms] provider = 'twilio' needs {' and '.join(missing)} "
                          "(auth_token may come from $SLUIS_TWILIO_AUTH_TOKEN or credential sluis-twilio-token)")
    if bool(sms.from_number) == bool(sms.messaging_service_sid):
        raise ConfigError("[sms] set exactly one of from and messaging_service_sid")
    from .providers.twilio import TwilioProvider  # the twilio library is slow to import; only when used

    try:
        return TwilioProvider(sms.account_sid, sms.auth_token, from_number=sms.from_number or None,
                              messaging_service_sid=sms.messaging_service_sid or None, api_base=sms.api_base)
    except ValueError as exc:
        raise ConfigError(f"[sms] {exc}") from None
