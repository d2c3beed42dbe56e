"""The checks every HTTP request passes before any route sees it, in this order:

1. Host: a loopback server answers only to loopback host names (DNS rebinding: a page on
   evil.example resolving to 127.0.0.1 sends ``Host: evil.example``) -> 403.
2. Origin: a browser request from another origin is refused (cross-site POSTs, as in ComfyUI's
   CVE-2024-10481) -> 403. Requests without an Origin header (curl, scripts) pass.
3. API key: ``Authorization: Bearer KEY`` (or HTTP Basic with KEY as the password, as A1111's
   clients send it), compared in constant time -> 401. ``/health`` and the docs stay open.
4. Body size: over the limit by Content-Length, or by the bytes actually received -> 413,
   before anything is parsed or decoded.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json

from .config import ServerConfig

# Open without the API key: health, docs, and the web page's own files (they hold no data; the
# page asks for the key and sends it with every API call). Host and Origin checks still apply.
PUBLIC_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
PUBLIC_PREFIXES = ("/static/",)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class RequestGuard:
    """Pure ASGI middleware: nothing is buffered but an accepted request's body."""

    def __init__(self, app, config: ServerConfig):
        self.app, self.config = app, config
        self._key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _send_error(send, *refusal)
            return
        if scope["method"] in BODY_METHODS:
            body = await self._read_body(headers, receive)
            if body is None:
                limit = self.config.max_body_bytes
                await _send_error(send, 413, "too_large", f"body: at most {limit} bytes")
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        host = headers.get("host", "")
        allowed = self.config.allowed_hosts
        if allowed is not None and _host_name(host) not in allowed:
            return 403, "forbidden", f"host: {host!r} is not this server's (a loopback name)"
        origin = headers.get("origin")
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{host}".lower()
            if origin.lower() != own:
                return 403, "forbidden", f"origin: {origin!r} may not call this server ({own})"
        if self._key is not None and not _is_public(scope["path"]):
            if not self._authorized(headers.get("authorization", "")):
                return 401, "unauthorized", "authorization: a valid API key (Bearer) is required"
        return None

    def _authorized(self, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        given = b""
        if scheme.lower() == "bearer":
            given = credentials.strip().encode()
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            given = decoded.partition(b":")[2]  # the password
        return hmac.compare_digest(given, self._key)

    async def _read_body(self, headers: dict[str, str], receive) -> bytes | None:
        """The whole body, or None as soon as it is over the limit (declared or received)."""
        limit = self.config.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive that gives the buffered body once, then the connection's own messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _host_name(host: str) -> str:
    """``127.0.0.1:7860`` -> ``127.0.0.1``; ``[::1]:7860`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def _send_error(send, status: int, kind: str, message: str) -> None:
    field = message.partition(":")[0]
    body = json.dumps(
        {"error": {"kind": kind, "field": field, "message": message}, "detail": message}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="sdgen"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
