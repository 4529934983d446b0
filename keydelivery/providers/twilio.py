"""Sending passphrase SMS through Twilio's Messages API with the official `twilio` library.

Two library details shape this module:

* URLs: every Twilio domain object holds a `base_url` (the Api domain: "https://api.twilio.com",
  see twilio/rest/api/ApiBase.py) and `Domain.absolute_url` joins it with the versioned path at
  request time. Pointing `client.api.base_url` at `api_base` therefore reroutes the Messages API
  (regional endpoint or a local stand-in) without touching anything else. The client's
  `edge`/`region` would rewrite the host again, so they are cleared: only `api_base` decides.
* Errors: `TwilioRestException` carries the HTTP status and Twilio's error code but not the
  response headers, so Retry-After is lost. A small `TwilioHttpClient` subclass records the
  headers of the last response per thread, which `_map_rest_error` reads.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from sluis.keydelivery.providers.base import (
    PermanentProviderError,
    ProviderError,
    SendResult,
    TransientProviderError,
)

DEFAULT_API_BASE = "https://api.twilio.com"

_T = TypeVar("_T")


class _HeaderRecordingHttpClient(TwilioHttpClient):
    """TwilioHttpClient that remembers, per thread, the headers of the last response."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout)
        # Per thread because several outbox worker threads may share one provider.
        self._last = threading.local()

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        """Send the request as the library would, then keep the response headers."""
        self._last.headers = None
        response = super().request(method, url, *args, **kwargs)
        self._last.headers = response.headers
        return response

    def last_headers(self) -> Mapping[str, str] | None:
        """Headers of this thread's most recent response, or None if there was none."""
        return getattr(self._last, "headers", None)


class TwilioProvider:
    """An `SmsProvider` backed by Twilio Programmable Messaging."""

    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str | None,
        messaging_service_sid: str | None,
        api_base: str = DEFAULT_API_BASE,
        timeout: float = 10.0,
    ) -> None:
        """Configure the sender: exactly one of `from_number` or `messaging_service_sid`."""
        if not account_sid or not auth_token:
            # An empty value would make the library fall back to TWILIO_* environment variables.
            raise ValueError("Twilio account SID and auth token are both required")
        if (from_number is None) == (messaging_service_sid is None):
            raise ValueError("give exactly one of from_number or messaging_service_sid")
        if messaging_service_sid is not None and not messaging_service_sid.startswith("MG"):
            raise ValueError(
                f"messaging_service_sid {messaging_service_sid!r} does not start with 'MG'"
            )
        if not api_base.startswith(("https://", "http://")):
            raise ValueError(f"api_base {api_base!r} must be an http(s) URL")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._from_number = from_number
        self._messaging_service_sid = messaging_service_sid
        self._http = _HeaderRecordingHttpClient(timeout=timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        # Ignore TWILIO_EDGE / TWILIO_REGION from the environment: they would rewrite the host
        # of api_base, and the configuration file, not the environment, says where SMS go.
        self._client.edge = None
        self._client.region = None
        self._client.api.base_url = api_base.rstrip("/")

    def __repr__(self) -> str:
        return f"TwilioProvider(api_base={self._client.api.base_url!r})"

    def send(self, to: str, body: str) -> SendResult:
        """Create the message; raises Transient/PermanentProviderError on failure.

        A timeout after the request left may still have sent the SMS; the caller's retry then
        sends the same text twice, which is the lesser evil compared to sending none.
        """
        sender: dict[str, str] = (
            {"from_": self._from_number}
            if self._from_number is not None
            else {"messaging_service_sid": self._messaging_service_sid or ""}
        )
        message = self._call(lambda: self._client.messages.create(to=to, body=body, **sender))
        if not message.sid:
            raise TransientProviderError("Twilio accepted the message but returned no SID")
        return SendResult(provider_id=message.sid, status=str(message.status or "queued"))

    def fetch_status(self, provider_id: str) -> str:
        """Return Twilio's status for a message: queued, sent, delivered, undelivered, ..."""
        message = self._call(lambda: self._client.messages(provider_id).fetch())
        return str(message.status)

    def redact(self, provider_id: str) -> None:
        """Twilio erases a finished message's stored body when it is updated with an empty Body."""
        self._call(lambda: self._client.messages(provider_id).update(body=""))

    def _call(self, operation: Callable[[], _T]) -> _T:
        """Run one library call, translating its failures into provider errors."""
        try:
            return operation()
        except (TwilioRestException, TwilioServiceException) as exc:
            raise _map_rest_error(exc, self._http.last_headers()) from exc
        except requests.Timeout as exc:
            raise TransientProviderError(f"Twilio did not answer in time: {exc}") from exc
        except requests.RequestException as exc:
            # Connection refused or reset, DNS failure, TLS handshake failure, broken response.
            raise TransientProviderError(f"cannot reach Twilio: {exc}") from exc
        except (TwilioException, ValueError) as exc:
            # ValueError covers a 2xx body that is not JSON (a proxy's error page, say).
            raise TransientProviderError(f"unexpected answer from Twilio: {exc}") from exc


def _map_rest_error(
    exc: TwilioRestException | TwilioServiceException, headers: Mapping[str, str] | None
) -> ProviderError:
    """Classify an HTTP error from Twilio: 429 and 5xx are transient, other 4xx permanent."""
    status = int(exc.status)
    # Without a JSON body the library reuses the HTTP status as "code"; that is no Twilio code.
    code = exc.code if exc.code is not None and exc.code != status else None
    text = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", "")
    description = f"Twilio answered HTTP {status}" + (f", error {code}" if code else "")
    description += f": {text}" if text else ""
    if status == 429 or status >= 500:
        return TransientProviderError(description, retry_after=_retry_after(headers))
    return PermanentProviderError(description, code=code)


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Parse Retry-After as delay-seconds or an HTTP date; None when absent or unreadable."""
    if not headers:
        return None
    value = headers.get("Retry-After")  # requests' CaseInsensitiveDict
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
