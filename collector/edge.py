"""The service edge: where Casefile exceptions become gRPC statuses, in one place.

Every handler is wrapped by :func:`unary` or :func:`server_stream`; a handler raises
domain errors and never calls ``context.abort`` for them itself. A rejection message
names what and where (bundle id, member, offset) and never carries a secret.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from agent.errors import CasefileError, VerificationError
from collector.storage.errors import AuthError, Conflict, NotFound, StoreError
from collector.storage.text import clip

__all__ = ["Rejected", "server_stream", "status_for", "unary"]

log = logging.getLogger("casefile.collector")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Rejected(CasefileError):
    """A request refused for a stated reason, with the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, Rejected):
        return exc.code, str(exc)
    if isinstance(exc, AuthError):
        return grpc.StatusCode.UNAUTHENTICATED, str(exc)
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, Conflict):
        return grpc.StatusCode.ALREADY_EXISTS, str(exc)
    if isinstance(exc, VerificationError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"bundle rejected: {exc}"
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, StoreError | CasefileError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error (see the collector log)"


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, where: str) -> None:
    code, message = status_for(exc)
    # Bounded: a message echoing a huge request field would exceed the peer's metadata
    # limit, and the client would see "Stream removed" instead of the status.
    message = clip(message)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", where, exc_info=exc)
    else:
        log.info("%s: %s: %s", where, code.name, message)
    await context.abort(code, message)


def unary(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Wrap a unary (or stream-unary) handler: map raised errors to statuses."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, fn.__qualname__)
            raise AssertionError("unreachable: context.abort raises") from exc

    return wrapper


def server_stream(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    """Wrap a server-streaming handler (an async generator) the same way."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, fn.__qualname__)

    return wrapper
