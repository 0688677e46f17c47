"""Idempotent creates: a retry with the same `Idempotency-Key` gets the first answer, never a second object.

A route opts in with one line, `opt={IDEMPOTENT: reread}` on its handler (`reread(stores, project_id, id)`: the
object the route created with that id, as the route answers it, or None); a request to it that carries an
`Idempotency-Key` header then goes through three steps:

1. **Claim**, once the guard knows the caller's project (`require_project` calls `claim_idempotency_key`): one
   transaction inserts the project's key (storage/metadata_idempotency.py), so of concurrent requests with one key,
   in any number of API processes sharing the database, one holds the claim and does the work. It holds it for a
   lease (`TUNEWRIGHT_IDEMPOTENCY_LEASE_S`) that it renews while it runs; the claim of a process that died lapses,
   and a retry then takes it over and does the work.
2. **Work**: the handler runs as without a key, while the request's fingerprint is taken as its body streams in
   (`RequestDigest`: SHA-256 of the method, path, query and body, a multipart boundary left out since a client
   draws a new one for each attempt): nothing is held in memory beyond the chunk in hand.
   Just before committing what it creates, the handler names it (`creating(id)`): the id is kept with the
   fingerprint, so that a retry that takes over the claim of a request that died after its commit, before its
   answer was kept, finds the object (the route's `opt={IDEMPOTENT: reread}` reads it back) and answers with it,
   as the first request would have, instead of creating a second one.
3. **Answer**: before the answer leaves, its status, headers and body are kept with the fingerprint for
   `TUNEWRIGHT_IDEMPOTENCY_TTL_S` (24 h; the sweeper deletes them after), unless a retry should do the work again:
   a 5xx, an answer that asks to be retried (408, 409, 429), or one given before the whole body arrived (the
   body's fingerprint is then unknown; nothing was created). Other 4xx answers are kept, as Stripe keeps them: the
   same request would get the same refusal. A request that ends without an answer drops its claim.

Another request with a key already claimed waits (at most `TUNEWRIGHT_IDEMPOTENCY_WAIT_S`) while the first runs,
then reads its own body to take its fingerprint: the same fingerprint is answered what the first was answered
(with `idempotent-replayed: true`), another one is a 409 `idempotency_key_reused` (`x-should-retry: false`). A wait
that runs out is a 409 `idempotency_key_in_use` that the SDK retries.

The layer is an ASGI middleware (`IdempotencyMiddleware`, a pass-through for routes that did not opt in and for
requests without the header) that wraps the request's `receive` (the fingerprint) and `send` (the answer kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import msgspec
from litestar import Response
from multipart import parse_options_header

from tunewright.api.errors import ConflictError, InvalidRequestError, echo
from tunewright.storage.errors import NotFound

if TYPE_CHECKING:
    from collections.abc import Callable

    from litestar import Request
    from litestar.connection import ASGIConnection
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from tunewright.storage.base import Stores
    from tunewright.storage.records import IdempotencyRecord
    from tunewright.storage.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

IDEMPOTENT = "idempotent"
"""`opt` key of the routes that honour `Idempotency-Key`: `@post("/", opt={IDEMPOTENT: reread})`, where
`reread(stores, project_id, id)` is the object with that id, as the route answers it, or None when there is none."""

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "idempotent-replayed"
RETRIED_STATUSES = frozenset({408, 409, 429})
"""4xx answers that tell the client to retry (the SDK does): kept, they would answer every retry the same."""
UNKEPT_HEADERS = frozenset({b"content-length", b"date", b"server", b"connection", b"keep-alive", b"transfer-encoding"})
"""Headers of an answer that belong to one response, not to what it says: never replayed."""
FIRST_POLL_S = 0.05
MAX_POLL_S = 0.5

_STATE = "idempotent_call"
_HEADER_BYTES = HEADER.lower().encode()
_CURRENT: contextvars.ContextVar[IdempotentCall | None] = contextvars.ContextVar("idempotent_call", default=None)


def found(read: Callable[[], T]) -> T | None:
    """What `read()` returns, or None when what it reads is not there (`NotFound`): the body of a `reread`."""
    try:
        return read()
    except NotFound:
        return None


def creating(resource_id: str) -> None:
    """Name the object the request is about to commit, if it came with an `Idempotency-Key` (else nothing).

    Call it from the code that commits the object (a worker thread or the event loop's), just before the commit:
    a retry that takes over the claim of a request that died after the commit answers with this object.
    """
    call = _CURRENT.get()
    if call is not None:
        call.note(resource_id)


class IdempotentReplay(Exception):  # noqa: N818 - reads as what happens
    """Raised in the guard to answer a retry with the kept answer of its first request (see `replay_response`)."""

    def __init__(self, record: IdempotencyRecord) -> None:
        super().__init__(record.idempotency_key)
        self.record = record


def replay_response(_request: Request[Any, Any, Any], exc: IdempotentReplay) -> Response[Any]:
    """The kept answer, as it was first sent, marked `idempotent-replayed: true` (the app's exception handler)."""
    record = exc.record
    headers = dict(record.headers or [])
    media_type = headers.pop("content-type", None)
    headers[REPLAYED_HEADER] = "true"
    return Response(
        content=record.body or b"", status_code=record.status_code or 200, headers=headers, media_type=media_type
    )


def key_reused(key: str) -> ConflictError:
    """409 for a key that answered another request (another method, path or body)."""
    return ConflictError(
        f"Keys for idempotent requests can only be used with the same request they were first used with: "
        f"'{echo(key)}' was used with another method, path or body. Use another key for another request.",
        param=HEADER,
        code="idempotency_key_reused",
    )


def key_in_use(key: str, waited_s: float) -> ConflictError:
    """409 for a key whose first request is still running after the wait: the SDK retries it."""
    return ConflictError(
        f"A request with the Idempotency-Key '{echo(key)}' is still being processed ({waited_s:g} s waited); "
        "retry once it has finished.",
        param=HEADER,
        code="idempotency_key_in_use",
        headers={"x-should-retry": "true", "retry-after": "1", "connection": "close"},
        retryable=True,
    )


def check_key(raw: bytes) -> str:
    """The header's value as a key: 1 to 255 printable ASCII characters.

    Raises:
        InvalidRequestError: empty, too long, or other characters.
    """
    if not 0 < len(raw) <= MAX_KEY_LENGTH or not all(0x20 <= byte < 0x7F for byte in raw):
        raise InvalidRequestError(
            f"Invalid '{HEADER}' header: expected 1 to {MAX_KEY_LENGTH} printable ASCII characters, got "
            f"{len(raw)} bytes.",
            param=HEADER,
            code="invalid_value",
        )
    return raw.decode("ascii")


class RequestDigest:
    """SHA-256 of a request's method, path, query and body, taken as the body streams in.

    A multipart body's delimiters (`CRLF--<boundary>`) are left out: a client draws a new boundary for each
    attempt of one request (the openai SDK does, through httpx), and nothing else can hold them. They are cut
    out as the chunks pass, keeping back at most a delimiter's length less one between chunks, without joining a
    chunk to anything.
    """

    def __init__(self, scope: Scope) -> None:
        """Start with the request line of `scope`."""
        path = scope.get("raw_path") or scope["path"].encode()
        self._hash = hashlib.sha256(b"%s %s?%s\n" % (scope["method"].encode(), path, scope["query_string"]))
        content_type = _header(scope, b"content-type") or b""
        kind, options = parse_options_header(content_type.decode("latin-1"))
        boundary = options.get("boundary") if kind == "multipart/form-data" else None
        self._delimiter = b"\r\n--" + boundary.encode("latin-1") if boundary else b""
        self._carry = b"\r\n" if boundary else b""  # the first delimiter comes without its line break
        self.complete = False

    def update(self, chunk: bytes) -> None:
        """Add the next chunk of the body."""
        delimiter = self._delimiter
        if not delimiter:
            self._hash.update(chunk)
            return
        if len(chunk) < len(delimiter):  # a small chunk: joining it to what was kept back costs nothing
            chunk, self._carry = self._carry + chunk, b""
            self._scan(chunk, 0)
            return
        start = 0
        if self._carry:  # a delimiter may start in what was kept back and end in this chunk
            seam = self._carry + chunk[: len(delimiter) - 1]
            at = seam.find(delimiter)
            if at == -1:
                self._hash.update(self._carry)
            else:
                self._hash.update(seam[:at])
                start = at + len(delimiter) - len(self._carry)
            self._carry = b""
        self._scan(chunk, start)

    def _scan(self, data: bytes, start: int) -> None:
        view, size = memoryview(data), len(self._delimiter)
        while (at := data.find(self._delimiter, start)) != -1:
            self._hash.update(view[start:at])
            start = at + size
        keep = max(start, len(data) - (size - 1))
        self._hash.update(view[start:keep])
        self._carry = bytes(view[keep:])

    def hexdigest(self) -> str:
        """The digest of the whole request (call once the body is complete)."""
        self._hash.update(self._carry)
        self._carry = b""
        return self._hash.hexdigest()


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope["headers"] if key == name), None)


class IdempotentCall:
    """One request with an `Idempotency-Key` on an idempotent route: its claim, its fingerprint, its answer."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, raw_key: bytes) -> None:
        """Wrap the request's channels; nothing is claimed until the guard calls `claim`."""
        app_state = scope["app"].state
        self.stores: Stores = app_state.stores
        self.settings: Settings = app_state.settings
        self.raw_key = raw_key
        self.key = ""
        self.project_id = ""
        self.token = secrets.token_hex(16)
        self.digest = RequestDigest(scope)
        self._receive = receive
        self._send = send
        self.holds_claim = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._start: Message | None = None
        self._body: list[bytes] = []
        handler = scope["route_handler"]
        reread = handler.opt.get(IDEMPOTENT)
        self._reread: Callable[[Stores, str, str], msgspec.Struct | None] | None = reread if callable(reread) else None
        self._status = handler.status_code or 200

    # --- the request's channels

    async def receive(self) -> Message:
        """The next message of the request, its body added to the fingerprint."""
        message = await self._receive()
        if message["type"] == "http.request" and not self.digest.complete:
            self.digest.update(message.get("body", b""))
            self.digest.complete = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        """Send the answer; while the claim is held, keep it first (the whole answer, then send it)."""
        if not self.holds_claim:
            await self._send(message)
        elif message["type"] == "http.response.start":
            self._start = message
        elif message["type"] == "http.response.body":
            self._body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start, body = self._start, b"".join(self._body)
            assert start is not None
            await self._finish(start["status"], start.get("headers", []), body)
            await self._send(start)
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
        else:
            await self._send(message)

    # --- claim

    async def claim(self, project_id: str) -> None:
        """Claim the key for this request, or answer it as the key's first request was answered.

        Raises:
            InvalidRequestError: the header is not a valid key.
            IdempotentReplay: the key's request with the same fingerprint was answered; that answer is its answer.
            ConflictError: the key answered another request (`idempotency_key_reused`), or its first request
                is still running after the wait (`idempotency_key_in_use`).
        """
        if self.holds_claim:  # a second project guard on the route
            return
        self.key = check_key(self.raw_key)
        self.project_id = project_id
        started = time.monotonic()
        delay = FIRST_POLL_S
        record = await self._claim()
        while record.token != self.token:
            if record.answered:
                await self._answer_from(record)
            waited = time.monotonic() - started
            if waited >= self.settings.idempotency_wait_s:
                raise key_in_use(self.key, round(waited, 1))
            await anyio.sleep(min(delay, self.settings.idempotency_wait_s - waited))
            delay = min(delay * 2, MAX_POLL_S)
            seen = await anyio.to_thread.run_sync(self._read)
            record = await self._claim() if seen is None or _lapsed(seen) else seen
        if record.resource is not None:  # taken over from a request that died: did it commit its object?
            await self._answer_with_resource(record)
        self.holds_claim = True
        self._heartbeat = asyncio.get_running_loop().create_task(self._renew())

    async def _answer_with_resource(self, record: IdempotencyRecord) -> None:
        """Answer with the object the request that died named, if it committed it (kept as the key's answer).

        Returns (this request does the work) when it did not commit it.

        Raises:
            IdempotentReplay: the object, to the same request.
            ConflictError: the key's request was another (`idempotency_key_reused`).
        """
        reread, resource = self._reread, record.resource
        if reread is None or resource is None:
            return
        found = await anyio.to_thread.run_sync(reread, self.stores, self.project_id, resource)
        if found is None:
            return
        body = msgspec.json.encode(found)
        headers = [("content-type", "application/json")]
        answer = msgspec.structs.replace(
            record, status_code=self._status, headers=[list(pair) for pair in headers], body=body
        )
        fingerprint = record.fingerprint or ""
        try:
            await anyio.to_thread.run_sync(
                lambda: self.stores.metadata.complete_idempotency_key(
                    project_id=self.project_id,
                    key=self.key,
                    token=self.token,
                    fingerprint=fingerprint,
                    status_code=self._status,
                    headers=headers,
                    body=body,
                )
            )
        except Exception:  # the next retry looks the object up again
            logger.exception("could not keep the answer for idempotency key %r", self.key)
        logger.warning(
            "idempotency key %r: its first request committed %s and died before answering; answering with it",
            self.key,
            resource,
        )
        await self._answer_from(answer)

    def note(self, resource_id: str) -> None:
        """Keep `resource_id` with the fingerprint while the claim is held (see `creating`); never raises.

        Only once the whole body has arrived: without its fingerprint a retry could not be told from another
        request.
        """
        if not self.holds_claim or not self.digest.complete:
            return
        fingerprint = self.digest.hexdigest()
        try:
            self.stores.metadata.note_idempotency_resource(
                project_id=self.project_id,
                key=self.key,
                token=self.token,
                fingerprint=fingerprint,
                resource=resource_id,
            )
        except Exception:  # the request goes on; a crash before its answer is kept may then repeat the work
            logger.exception("could not note %s for idempotency key %r", resource_id, self.key)

    def _read(self) -> IdempotencyRecord | None:
        return self.stores.metadata.get_idempotency_key(project_id=self.project_id, key=self.key)

    async def _claim(self) -> IdempotencyRecord:
        settings = self.settings
        return await anyio.to_thread.run_sync(
            lambda: self.stores.metadata.claim_idempotency_key(
                project_id=self.project_id,
                key=self.key,
                token=self.token,
                now=time.time(),
                lease_s=settings.idempotency_lease_s,
                ttl_s=settings.idempotency_ttl_s,
            )
        )

    async def _answer_from(self, record: IdempotencyRecord) -> None:
        """Read this request's body for its fingerprint; raise the replay of `record`, or the 409 of another."""
        if await self._drain() != record.fingerprint:
            raise key_reused(self.key)
        raise IdempotentReplay(record)

    async def _drain(self) -> str | None:
        """Read the rest of the body (into the fingerprint only); its digest, or None if the client went away."""
        while not self.digest.complete:
            if (await self.receive())["type"] == "http.disconnect":
                return None
        return self.digest.hexdigest()

    async def _renew(self) -> None:
        every = self.settings.idempotency_lease_s / 3
        while True:
            await anyio.sleep(every)
            try:
                held = await anyio.to_thread.run_sync(self._renew_once)
            except Exception:  # the database is away: the next beat tries again, the lease may lapse meanwhile
                logger.warning("could not renew the claim on idempotency key %r", self.key, exc_info=True)
                continue
            if not held:
                logger.warning("the claim on idempotency key %r lapsed while its request ran", self.key)
                return

    def _renew_once(self) -> bool:
        return self.stores.metadata.renew_idempotency_key(
            project_id=self.project_id,
            key=self.key,
            token=self.token,
            lease_expires_at=time.time() + self.settings.idempotency_lease_s,
        )

    # --- answer

    async def _finish(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Keep the answer for retries, or drop the claim so that a retry does the work; never raises."""
        self._stop_renewing()
        self.holds_claim = False
        try:
            fingerprint = await self._fingerprint(status)
            if fingerprint is None:
                await self._release()
                return
            kept = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
            stored = await anyio.to_thread.run_sync(
                lambda: self.stores.metadata.complete_idempotency_key(
                    project_id=self.project_id,
                    key=self.key,
                    token=self.token,
                    fingerprint=fingerprint,
                    status_code=status,
                    headers=[(name, value) for name, value in kept if name.encode() not in UNKEPT_HEADERS],
                    body=body,
                )
            )
            if not stored:
                logger.warning("idempotency key %r was taken over before its request answered", self.key)
        except Exception:  # the claim lapses after its lease; the answer still goes out
            logger.exception("could not keep the answer for idempotency key %r", self.key)

    async def _fingerprint(self, status: int) -> str | None:
        """The request's fingerprint if its answer is to be kept, else None."""
        if status >= 500 or status in RETRIED_STATUSES:
            return None
        if not self.digest.complete and status >= 300:  # refused before the whole body arrived
            return None
        return await self._drain()  # a success whose handler left the body unread: read it now

    async def _release(self) -> None:
        await anyio.to_thread.run_sync(
            lambda: self.stores.metadata.release_idempotency_key(
                project_id=self.project_id, key=self.key, token=self.token
            )
        )

    def _stop_renewing(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    async def close(self) -> None:
        """After the request: drop a claim that no answer ended (an error before any, a client gone)."""
        self._stop_renewing()
        if not self.holds_claim:
            return
        self.holds_claim = False
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self._release()


def _lapsed(record: IdempotencyRecord) -> bool:
    """True when a retry may take the key over: its holder's lease ended unanswered, or its answer expired."""
    now = time.time()
    return record.expires_at <= now or (not record.answered and record.lease_expires_at <= now)


class IdempotencyMiddleware:
    """ASGI middleware of the idempotent routes; a pass-through for every other request."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap the route's app."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request, through an `IdempotentCall` when the route opted in and the request has a key."""
        handler = scope.get("route_handler")
        raw_key = _header(scope, _HEADER_BYTES) if handler is not None and handler.opt.get(IDEMPOTENT) else None
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        call = IdempotentCall(scope, receive, send, raw_key)
        scope["state"][_STATE] = call
        current = _CURRENT.set(call)
        try:
            await self.app(scope, call.receive, call.send)
        finally:
            _CURRENT.reset(current)
            await call.close()


async def claim_idempotency_key(connection: ASGIConnection[Any, Any, Any, Any], project_id: str) -> None:
    """From the guard, once the caller's project is known: claim the request's key, if it has one (see `claim`)."""
    call: IdempotentCall | None = connection.scope["state"].get(_STATE)
    if call is not None:
        await call.claim(project_id)
