"""The console calls the gRPC API's own handlers: one permission and audit code path.

A page does not check roles itself. It calls the same ``QueryService`` handler an RPC
would (``EngineerAuth.audited`` names the action and writes the audit row,
``EngineerAuth.require`` checks the token and its role) through :class:`WebContext`,
which stands in for the gRPC ``ServicerContext``: it carries the signed-in engineer's
token as the ``authorization`` metadata and the browser's address as the peer. A handler
ending with a status (``context.abort``) raises :class:`CallFailed`, which the console
answers with the matching HTTP status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Generic, NoReturn, TypeVar, cast

import grpc

__all__ = ["CallFailed", "Driven", "WebContext", "http_status", "servicer_context"]

T = TypeVar("T")

_HTTP = {
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP.get(code, 500)


class CallFailed(Exception):
    """A handler ended the call with a status: ``code``, ``message`` (already clipped)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def http(self) -> int:
        return http_status(self.code)


class WebContext:
    """What the handlers use of ``grpc.aio.ServicerContext``: metadata, peer and abort."""

    def __init__(self, token: str | None, peer: str) -> None:
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._peer = peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        raise CallFailed(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:  # pragma: no cover - unused by our handlers
        pass

    def set_details(self, details: str) -> None:  # pragma: no cover
        pass


def servicer_context(token: str | None, peer: str) -> grpc.aio.ServicerContext[Any, Any]:
    """A :class:`WebContext` typed as what the handlers take (it has all they use)."""
    return cast("grpc.aio.ServicerContext[Any, Any]", WebContext(token, peer))


_END = object()


class Driven(Generic[T]):
    """A server-streaming handler run to its end in one task of its own.

    The audit wrapper keeps its state in a context variable set and reset around the
    whole stream, so the stream must be iterated from one task; an HTTP response body
    is iterated from another. Items pass through a small queue (back-pressure); closing
    early cancels the task, and the handler's audit row says the caller went away.
    """

    def __init__(self, stream: AsyncIterator[T]) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=4)
        self._task = asyncio.create_task(self._run(stream))

    async def _run(self, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                await self._queue.put(item)
        except BaseException as exc:
            await self._queue.put(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        await self._queue.put(_END)

    async def next(self) -> T | None:
        """The next item; None at the end; raises what the handler ended with."""
        item = await self._queue.get()
        if item is _END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    async def close(self) -> None:
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
