"""The request body, read before any route sees it: refused when larger than the server's limit (413) or when it
is not UTF-8 (422), each with a one-line JSON detail.

A body the limit refuses is never read whole: a Content-Length over the limit is refused from the header alone, and
a chunked body as soon as the bytes received pass the limit. Without this, one large request stalled the event loop
(and every health check) while its JSON was parsed and its prompt tokenized.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestBodyGuard:
    """ASGI middleware: reads the whole body (at most `max_bytes`), checks it, then hands it to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            detail = f"body: {declared} bytes exceed this server's limit of {self.max_bytes} (max_body_bytes)"
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        try:
            body = await self.read(receive)
        except ClientGone:
            return
        if body is None:
            detail = f"body: more than this server's limit of {self.max_bytes} bytes (max_body_bytes)"
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        if (error := utf8_error(body)) is not None:
            await JSONResponse({"detail": [error]}, status_code=422)(scope, receive, send)
            return
        await self.app(scope, replay(body, receive), send)

    async def read(self, receive: Receive) -> bytes | None:
        """The body, or None as soon as it passes the limit (the rest is never read)."""
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return None
        return bytes(body)


class ClientGone(Exception):
    """The client disconnected before its body was complete: there is no one to answer."""


def declared_length(scope: Scope) -> int | None:
    try:
        return int(Headers(scope=scope)["content-length"])
    except (KeyError, ValueError):  # chunked, or a header the server itself refuses
        return None


def utf8_error(body: bytes) -> dict | None:
    """FastAPI's shape for a body that is not JSON, since JSON is UTF-8 (RFC 8259): loc names the byte."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return {
            "type": "json_invalid",
            "loc": ["body", e.start],
            "msg": f"body is not UTF-8: {e.reason} at byte {e.start}",
        }
    return None


def replay(body: bytes, receive: Receive) -> Receive:
    """The body already read, as one message; after it, the client's own messages (its disconnect, say)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
