"""What a request must be before the UI or the API looks at it: the guard both servers share.

Owns the checks that do not depend on a route: the Host header (a DNS-rebinding page reaches
a loopback app under its own name), the Origin of cross-site requests (a web page the user
visits may send simple requests without a preflight), the body size, the API's
`application/json` Content-Type, and a per-client throttle on failed logins and API keys.
It does not own authentication itself (Gradio's login, the API's key middleware) nor the
wire format of the answers: each server passes the function that builds its error response.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD = ("0.0.0.0", "::", "")
SHARE_SUFFIX = ".gradio.live"  # the hosts Gradio's share links are served under
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_name(host: str) -> str:
    """The name in a Host header or an origin's netloc, without port or IPv6 brackets, lowercased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True)
class HostPolicy:
    """Which Host headers an app bound to `bound` answers: its address, loopback names, names the user allows."""

    bound: str                                  # the address the server listens on
    allowed: tuple[str, ...] = ()               # extra names (--allowed-host), e.g. a LAN or reverse-proxy name
    share: bool = False                         # Gradio share links reach the app under *.gradio.live

    def allows(self, host: str) -> bool:
        name = host_name(host)
        if name in (n.lower() for n in self.allowed):
            return True
        if self.share and name.endswith(SHARE_SUFFIX):
            return True
        ip = _ip(name)
        wildcard = self.bound in WILDCARD
        if ip is not None:
            # An address cannot be rebound: a page served from it is the app's own origin.
            return wildcard or ip.is_loopback or ip == _ip(self.bound)
        if name in LOOPBACK_NAMES or name.endswith(".localhost"):
            bound_ip = _ip(self.bound)
            return wildcard or self.bound in LOOPBACK_NAMES or bool(bound_ip and bound_ip.is_loopback)
        return name == self.bound.lower()


@dataclass
class FailureThrottle:
    """Per-client failure counter: after `free` failures a client waits 1, 2, 4 ... up to `max_wait_s` seconds
    between attempts; a success forgets it. Holds at most `max_clients` clients (the oldest go first)."""

    free: int = 5
    max_wait_s: float = 300.0
    forget_s: float = 3600.0
    max_clients: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _seen: OrderedDict = field(default_factory=OrderedDict)  # client -> (failures, time of the last one)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the UI's and the API's servers share one
    _tried: dict = field(default_factory=dict)  # client -> digests of the wrong credentials it sent lately

    def wait_s(self, client: str) -> float:
        """Seconds `client` must still wait before its next attempt (0: it may try now)."""
        with self._lock:
            failures, last = self._seen.get(client, (0, 0.0))
            now = self.clock()
            if failures and now - last > self.forget_s:
                del self._seen[client]
                self._tried.pop(client, None)
                return 0.0
            if failures < self.free:
                return 0.0
            return max(0.0, last + min(self.max_wait_s, 2.0 ** (failures - self.free)) - now)

    def failed(self, client: str, credential: bytes = b"") -> None:
        """Count a failure of `client`; the same wrong `credential` sent again (a client retrying with a
        stale key) counts once, since only new guesses are an attack."""
        import hashlib

        digest = hashlib.sha256(credential).digest()[:8]
        with self._lock:
            failures, _ = self._seen.pop(client, (0, 0.0))
            tried = self._tried.setdefault(client, [])
            if digest not in tried:
                failures += 1
                tried[:] = (tried + [digest])[-32:]
            self._seen[client] = (failures, self.clock())
            while len(self._seen) > self.max_clients:
                gone, _ = self._seen.popitem(last=False)
                self._tried.pop(gone, None)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._seen.pop(client, None)
            self._tried.pop(client, None)


def client_of(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


Reply = Callable[[int, str, str], Awaitable[None] | object]  # (status, message, code) -> an ASGI response


@dataclass(frozen=True)
class GuardRules:
    """What the guard enforces on one server."""

    hosts: HostPolicy
    max_body: int = 8 << 20                       # bytes in any request body
    max_upload: int | None = None                 # bytes in an upload (paths ending in upload_paths); None: max_body
    upload_paths: tuple[str, ...] = ("/upload",)
    require_json: bool = False                    # POST bodies must be application/json (the API)
    allowed_origins: tuple[str, ...] = ()         # cross-origin pages allowed in (the API's --api-cors-origin)
    login_paths: tuple[str, ...] = ()             # POSTs whose 4xx answer counts as a failed login


class RequestGuard:
    """ASGI middleware applying GuardRules before the app sees a request.

    `reply(status, message, code)` builds the refusal in the server's own error shape.
    """

    def __init__(self, app, rules: GuardRules, reply, throttle: FailureThrottle | None = None):
        self.app, self.rules, self.reply = app, rules, reply
        self.throttle = throttle if throttle is not None else FailureThrottle()

    async def _refuse(self, scope, receive, send, status: int, message: str, code: str, headers: dict | None = None):
        response = self.reply(status, message, code)
        for key, value in (headers or {}).items():
            response.headers[key] = value
        await response(scope, receive, send)

    def _problem(self, scope, headers: dict) -> tuple[int, str, str] | None:
        rules = self.rules
        host = headers.get(b"host", b"").decode("latin-1")
        if host and not rules.hosts.allows(host):
            return (403, f"This app does not answer to the host name '{host_name(host)[:100]}'; "
                         f"start it with --allowed-host {host_name(host)[:100]} if that name is yours.", "host_not_allowed")
        origin = headers.get(b"origin", b"").decode("latin-1")
        if origin and not self._origin_allowed(origin, host):
            return 403, "Requests from other web sites are refused.", "cross_origin"
        if scope["method"] not in SAFE_METHODS and not origin and headers.get(b"sec-fetch-site") == b"cross-site":
            return 403, "Requests from other web sites are refused.", "cross_origin"
        if scope["method"] in ("POST", "PUT", "PATCH"):
            if rules.require_json:
                media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
                if media != b"application/json":
                    return 415, "The request body must be JSON sent with 'Content-Type: application/json'.", \
                        "unsupported_media_type"
            limit = self._limit(scope)
            length = headers.get(b"content-length")
            if length is not None:
                if not length.isdigit():
                    return 400, "The Content-Length header must be a number.", "bad_request"
                if int(length) > limit:
                    return 413, f"The request body is larger than the limit of {_size(limit)}.", "body_too_large"
            elif self._is_upload(scope):
                return 411, "An upload must say its size (Content-Length).", "length_required"
        return None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        """Same origin as the Host, an origin the user named, or the app's own share link."""
        netloc = urlsplit(origin).netloc.lower()
        if netloc and netloc == host.lower():
            return True
        if origin.rstrip("/") in self.rules.allowed_origins:
            return True
        return self.rules.hosts.share and host_name(netloc).endswith(SHARE_SUFFIX)

    def _is_upload(self, scope) -> bool:
        return scope["path"].rstrip("/").endswith(self.rules.upload_paths)

    def _limit(self, scope) -> int:
        if self._is_upload(scope) and self.rules.max_upload is not None:
            return self.rules.max_upload
        return self.rules.max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                headers = dict(scope["headers"])
                host = headers.get(b"host", b"").decode("latin-1")
                origin = headers.get(b"origin", b"").decode("latin-1")
                if (host and not self.rules.hosts.allows(host)) or (origin and not self._origin_allowed(origin, host)):
                    await send({"type": "websocket.close", "code": 1008})
                    return
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        problem = self._problem(scope, headers)
        if problem:
            await self._refuse(scope, receive, send, *problem)
            return
        login = scope["method"] == "POST" and scope["path"].rstrip("/").endswith(self.rules.login_paths or ("\0",))
        client = client_of(scope)
        if login:
            wait = self.throttle.wait_s(client)
            if wait > 0:
                await self._refuse(scope, receive, send, 429,
                                   f"Too many failed logins; try again in {wait:.0f} s.", "too_many_failures",
                                   {"Retry-After": str(int(wait) + 1)})
                return
        limit = self._limit(scope)
        receive = _bounded_receive(receive, limit)
        if not login:
            try:
                await self.app(scope, receive, send)
            except BodyTooLarge:
                await self._refuse(scope, receive, send, 413,
                                   f"The request body is larger than the limit of {_size(limit)}.", "body_too_large")
            return
        status, body = [], []

        async def watch(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        async def keep(message=None):
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
            return message

        await self.app(scope, keep, watch)
        if status and 400 <= status[0] < 500:
            self.throttle.failed(client, b"".join(body))  # the credentials tried
        elif status and status[0] < 400:
            self.throttle.succeeded(client)


class BodyTooLarge(Exception):
    """A body without a Content-Length ran past the limit (raised into the app, answered 413 by the guard)."""


def _bounded_receive(receive, limit: int):
    """`receive` that raises BodyTooLarge once more than `limit` body bytes arrive."""
    seen = [0]

    async def bounded():
        message = await receive()
        if message["type"] == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise BodyTooLarge()
        return message

    return bounded


def _size(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n:,} bytes"


def json_reply(status: int, message: str, code: str):
    """A refusal as Gradio's routes word theirs: {"detail": message}."""
    from starlette.responses import Response

    return Response(json.dumps({"detail": message, "code": code}), status_code=status, media_type="application/json")
