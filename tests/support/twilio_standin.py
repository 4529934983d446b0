"""A local stand-in for Twilio's Messages API, so the real `twilio` library can be tested offline.

It speaks just enough of https://api.twilio.com/2010-04-01 for sending and polling SMS:

    POST /2010-04-01/Accounts/{AccountSid}/Messages.json  (To, From | MessagingServiceSid, Body)
    GET  /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json

with HTTP Basic auth (account SID : auth token), Twilio-shaped JSON error bodies, and failure
injection for the cases the outbox worker must survive. It listens on 127.0.0.1 only, on a free
port, and `with TwilioStandIn() as twilio:` stops it again.

    with TwilioStandIn() as twilio:
        provider = TwilioProvider(twilio.account_sid, twilio.auth_token,
                                  from_number="+3225550000", messaging_service_sid=None,
                                  api_base=twilio.url)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from sluis.keydelivery.templates import sms_segments

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "standin-auth-token-" + "f" * 13

_MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages\.json$")
_MESSAGE_PATH = re.compile(
    r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)\.json$"
)

# Texts as Twilio words them (https://www.twilio.com/docs/errors/<code>).
_ERROR_TEXTS = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    20503: "Service unavailable",
    21211: "Invalid 'To' Phone Number",
    21408: (
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' number"
    ),
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
}
_UNDELIVERED_CODE = 30003
_UNDELIVERED_TEXT = "Unreachable destination handset"


@dataclass(frozen=True)
class ReceivedMessage:
    """A message as the stand-in holds it now (a snapshot: status may move on afterwards)."""

    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str                  # what the phone received
    status: str
    error_code: int | None = None
    polls: int = 0
    redacted: bool = False     # True once the stored copy's body was erased (the API then shows "")


@dataclass(frozen=True)
class RequestRecord:
    """One request the stand-in answered: for asserting on retries and polling."""

    method: str
    path: str
    status: int


@dataclass
class _Behaviour:
    """Failure injection state; guarded by TwilioStandIn._lock."""

    outage: bool = False
    bad_credentials: bool = False
    fail_statuses: deque[int] = field(default_factory=deque)
    rate_limits: deque[float | str] = field(default_factory=deque)
    stalls: deque[float] = field(default_factory=deque)
    holds: deque[float] = field(default_factory=deque)
    rejected: dict[str, int] = field(default_factory=dict)
    undelivered: set[str] = field(default_factory=set)


class TwilioStandIn:
    """Twilio's Messages API on 127.0.0.1 with failure injection; use as a context manager."""

    def __init__(
        self,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        polls_to_deliver: int = 2,
    ) -> None:
        """`polls_to_deliver`: GETs of a message until it is final (earlier GETs say "sent")."""
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.polls_to_deliver = polls_to_deliver
        self._lock = threading.Condition()
        self._messages: dict[str, ReceivedMessage] = {}
        self._manual_status: set[str] = set()
        self._requests: list[RequestRecord] = []
        self._held = 0                       # accepted messages whose answer is being held back
        self._release = threading.Event()
        self._behaviour = _Behaviour()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> TwilioStandIn:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        self._stopping.clear()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name="twilio-standin",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (later requests get "connection refused")."""
        if self._server is None:
            return
        self._stopping.set()  # wakes stalled handlers
        self._release.set()   # and held ones
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> TwilioStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL to pass as `api_base`, e.g. http://127.0.0.1:PORT."""
        if self._server is None:
            raise RuntimeError("stand-in not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- inspection --------------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """Messages accepted so far, oldest first, with their current status."""
        with self._lock:
            return list(self._messages.values())

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request answered so far, including injected failures."""
        with self._lock:
            return list(self._requests)

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Block until at least `count` messages arrived; AssertionError after `timeout`."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= count, timeout):
                raise AssertionError(
                    f"expected {count} message(s) within {timeout}s, got {len(self._messages)}"
                )
            return list(self._messages.values())

    # --- failure injection -------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next `n` requests with `status` (a 5xx by default)."""
        with self._lock:
            self._behaviour.fail_statuses.extend([status] * n)

    def rate_limit_next(self, n: int = 1, retry_after: float | str = 1) -> None:
        """Answer the next `n` requests with 429 and Retry-After (seconds, or a verbatim str)."""
        with self._lock:
            self._behaviour.rate_limits.extend([retry_after] * n)

    def stall_next(self, n: int = 1, seconds: float = 2.0) -> None:
        """Delay the next `n` answers by `seconds`, to exercise client timeouts."""
        with self._lock:
            self._behaviour.stalls.extend([seconds] * n)

    def hold_next(self, n: int = 1, seconds: float = 30.0) -> None:
        """Accept the next `n` new messages (the phone gets them) but hold each answer back for up
        to `seconds`, or until `release()`: a sender killed meanwhile never learns it was accepted."""
        with self._lock:
            self._behaviour.holds.extend([seconds] * n)
            self._release.clear()

    @property
    def held(self) -> int:
        """How many accepted messages are waiting for their answer right now."""
        with self._lock:
            return self._held

    def release(self) -> None:
        """Answer every held request now."""
        self._release.set()

    def reject_number(self, e164: str, code: int = 21211) -> None:
        """Refuse sends to `e164` with HTTP 400 and Twilio error `code` (21211, 21610, 21614...)."""
        with self._lock:
            self._behaviour.rejected[e164] = code

    def bad_credentials(self, enabled: bool = True) -> None:
        """Answer every request with 401 / 20003, as for a revoked auth token."""
        with self._lock:
            self._behaviour.bad_credentials = enabled

    def outage(self, enabled: bool = True) -> None:
        """Answer every request with 503 until switched off again."""
        with self._lock:
            self._behaviour.outage = enabled

    def undeliver(self, e164: str) -> None:
        """Let messages to `e164` end as "undelivered" with error 30003 instead of delivered."""
        with self._lock:
            self._behaviour.undelivered.add(e164)

    def set_status(self, sid: str, status: str, error_code: int | None = None) -> None:
        """Force a message's status; polling no longer moves it on."""
        with self._lock:
            self._messages[sid] = replace(self._messages[sid], status=status, error_code=error_code)
            self._manual_status.add(sid)

    def reset(self) -> None:
        """Forget messages, requests and injected failures (the server keeps running)."""
        with self._lock:
            self._messages.clear()
            self._manual_status.clear()
            self._requests.clear()
            self._behaviour = _Behaviour()

    # --- request handling (called from server threads) ----------------------------------------

    def _handle(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Decide the answer to one request: (status, JSON body, extra headers)."""
        with self._lock:
            behaviour = self._behaviour
            if behaviour.outage:
                return _error(503, 20503)
            stall = behaviour.stalls.popleft() if behaviour.stalls else 0.0
        if stall:
            self._stopping.wait(stall)
        with self._lock:
            if behaviour.bad_credentials or not self._authorised(headers.get("Authorization")):
                return _error(401, 20003)
            if behaviour.fail_statuses:
                status = behaviour.fail_statuses.popleft()
                return _error(status, 20000 + status if status in (500, 503) else None)
            if behaviour.rate_limits:
                retry_after = behaviour.rate_limits.popleft()
                status, payload, extra = _error(429, 20429)
                extra["Retry-After"] = _format_seconds(retry_after)
                return status, payload, extra
            if method == "POST" and (match := _MESSAGES_PATH.match(path)):
                if match["account"] != self.account_sid:
                    return _error(404, 20404)
                created = self._create(parse_qs(body.decode("utf-8"), keep_blank_values=True))
                hold = behaviour.holds.popleft() if created[0] == 201 and behaviour.holds else 0.0
                if not hold:
                    return created
                self._held += 1
            else:
                created = None
        if created is not None:  # accepted (the phone has it); the answer waits, outside the lock
            try:
                self._release.wait(hold)
            finally:
                with self._lock:
                    self._held -= 1
            return created
        with self._lock:
            if method == "GET" and (match := _MESSAGE_PATH.match(path)):
                if match["account"] != self.account_sid or match["sid"] not in self._messages:
                    return _error(404, 20404)
                return 200, self._poll(match["sid"]), {}
            if method == "POST" and (match := _MESSAGE_PATH.match(path)):
                if match["account"] != self.account_sid or match["sid"] not in self._messages:
                    return _error(404, 20404)
                return self._redact(match["sid"], parse_qs(body.decode("utf-8"), keep_blank_values=True))
            return _error(404, 20404)

    def _redact(self, sid: str, form: dict[str, list[str]]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Twilio redacts a post-flight message's body when it is updated with an empty Body."""
        message = self._messages[sid]
        if form.get("Body") != [""] or message.status not in ("delivered", "undelivered", "failed"):
            return _error(400, 30400)
        self._messages[sid] = replace(message, redacted=True)
        return 200, self._resource(self._messages[sid]), {}

    def _authorised(self, header: str | None) -> bool:
        """Check HTTP Basic credentials against account SID and auth token."""
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return secrets.compare_digest(f"{user}:{password}", f"{self.account_sid}:{self.auth_token}")

    def _create(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Accept a new message (lock held)."""
        to = form.get("To", [""])[0]
        from_ = form.get("From", [None])[0]
        service = form.get("MessagingServiceSid", [None])[0]
        body = form.get("Body", [""])[0]
        if not to:
            return _error(400, 21604)
        if not from_ and not service:
            return _error(400, 21603)
        if not body:
            return _error(400, 21602)
        if to in self._behaviour.rejected:
            code = self._behaviour.rejected[to]
            return _error(400, code, detail=f"{_ERROR_TEXTS.get(code, 'Rejected')}: {to}")
        sid = "SM" + secrets.token_hex(16)
        # Through a Messaging Service Twilio first says "accepted" and picks the sender later.
        message = ReceivedMessage(
            sid=sid,
            to=to,
            from_=from_,
            messaging_service_sid=service,
            body=body,
            status="accepted" if service and not from_ else "queued",
        )
        self._messages[sid] = message
        self._lock.notify_all()
        return 201, self._resource(message), {}

    def _poll(self, sid: str) -> dict[str, Any]:
        """Advance a message one poll along queued -> sent -> delivered/undelivered (lock held)."""
        message = self._messages[sid]
        polls = message.polls + 1
        status, error_code = message.status, message.error_code
        if sid not in self._manual_status:
            if polls >= self.polls_to_deliver:
                if message.to in self._behaviour.undelivered:
                    status, error_code = "undelivered", _UNDELIVERED_CODE
                else:
                    status, error_code = "delivered", None
            else:
                status = "sent"
        message = replace(message, polls=polls, status=status, error_code=error_code)
        self._messages[sid] = message
        return self._resource(message)

    def _resource(self, message: ReceivedMessage) -> dict[str, Any]:
        """The JSON message resource, shaped like Twilio's."""
        now = formatdate(usegmt=True)
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message.sid}.json"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": "" if message.redacted else message.body,
            "date_created": now,
            "date_sent": now if message.status not in ("queued", "accepted") else None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": message.error_code,
            "error_message": _UNDELIVERED_TEXT if message.error_code == _UNDELIVERED_CODE else None,
            "from": message.from_,
            "messaging_service_sid": message.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(sms_segments(message.body)),
            "price": None,
            "price_unit": "USD",
            "sid": message.sid,
            "status": message.status,
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": message.to,
            "uri": uri,
        }

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append(RequestRecord(method=method, path=path, status=status))


def _error(
    status: int, code: int | None, *, detail: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A Twilio-style error answer: {"code", "message", "more_info", "status"}."""
    if code is None:
        payload: dict[str, Any] = {"message": HTTPStatus(status).phrase, "status": status}
    else:
        payload = {
            "code": code,
            "message": detail or _ERROR_TEXTS.get(code, HTTPStatus(status).phrase),
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
    return status, payload, {}


def _format_seconds(seconds: float | str) -> str:
    """Retry-After wants whole seconds; keep fractions, or an HTTP date, when a test asks."""
    if isinstance(seconds, str):
        return seconds
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def _make_handler(standin: TwilioStandIn) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one stand-in (http.server wants a class)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "TwilioStandIn/1.0"
        timeout = 5  # a silent client must not pin a handler thread forever

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            status, payload, extra = standin._handle(method, path, self.headers, body)
            data = json.dumps(payload).encode()
            # Record before answering, so a test that asserts right after the call sees it.
            standin._record(method, path, status)
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            # Requests are kept in standin.requests; keep test output clean.
            pass

    return Handler
