"""A sluis server whose SMS go through the Twilio stand-in, with fast retries and polls."""

from __future__ import annotations

from typing import Any, Callable

from tests.support.server import SluisServer
from tests.support.twilio_standin import TwilioStandIn

FROM_NUMBER = "+3228001234"


def sms_settings(standin: TwilioStandIn, **extra: Any) -> dict[str, Any]:
    """The [sms] section for the stand-in: retries after 1 s (at most 2 s), a poll a second."""
    return {"provider": "twilio", "account_sid": standin.account_sid, "from_number": FROM_NUMBER,
            "api_base": standin.url, "retry_initial": "1s", "retry_max": "2s", "poll_interval": "1s",
            **extra}


def twilio_server(make_server: Callable[..., SluisServer], standin: TwilioStandIn, *, tenant: str,
                  phones: tuple[str, ...], senders: tuple[str, ...] = ("agency",),
                  **overrides: dict[str, Any]) -> SluisServer:
    """A server (not started) for `tenant` with `phones` and the `senders`, its SMS through
    `standin`; the auth token comes from $SLUIS_TWILIO_AUTH_TOKEN, not from the file."""
    server = make_server(overrides={"sms": sms_settings(standin), **overrides},
                         env={"SLUIS_TWILIO_AUTH_TOKEN": standin.auth_token})
    server.add_tenant(tenant, phones=phones)
    for sender in senders:
        server.add_user(sender, "sender")
    return server
