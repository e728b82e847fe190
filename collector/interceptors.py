"""Server interceptors that wrap every method handler, whatever its shape.

grpc.aio accepts four behaviour shapes per method kind and picks how to drive one by
inspecting it: a coroutine function (unary responses, or a streaming response written
with ``context.write`` as grpc_health's ``Watch`` does), an async generator function,
or a plain function / generator run on a thread. A wrapper must keep the shape it was
given, or grpc drives it the wrong way (an ``async for`` over a coroutine fails on every
call). :func:`observe` does that for an ``after`` hook; :class:`MalformedRequests`
answers INVALID_ARGUMENT for request bytes that are not the method's message.

Undecodable requests: grpc.aio deserialises a unary request before the handler runs
and turns a decode error into ``UNKNOWN: Unexpected <class DecodeError>`` with an
11-line traceback in the log; in a request stream the error surfaces inside the
handler as an internal error. Anyone who can open a connection can send such bytes,
so each refusal is one log line, and at most one line per ``LOG_EVERY_S`` in all.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

__all__ = ["LOG_EVERY_S", "MalformedRequest", "MalformedRequests", "RateLimitedLog", "observe", "rebuild"]

log = logging.getLogger("casefile.collector")

LOG_EVERY_S = 10.0

Finish = Callable[[Any, BaseException | None], None]
"""Called once when a call's behaviour ends: (context, the exception or None)."""


def _streams_responses(kind: str) -> bool:
    return kind in ("unary_stream", "stream_stream")


def observe(behavior: Any, kind: str, finish: Finish) -> Any:
    """``behavior`` wrapped so ``finish`` runs when it ends, in the same shape."""
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                finish(context, exc)
                raise
            finish(context, None)

        return agen
    if inspect.iscoroutinefunction(behavior):

        async def coro(request: Any, context: Any) -> Any:
            try:
                result = await behavior(request, context)
            except BaseException as exc:
                finish(context, exc)
                raise
            finish(context, None)
            return result

        return coro
    if _streams_responses(kind):
        # A plain function returning an iterator is driven like a generator function.
        def gen(request: Any, context: Any) -> Iterator[Any]:
            try:
                yield from behavior(request, context)
            except BaseException as exc:
                finish(context, exc)
                raise
            finish(context, None)

        return gen

    def plain(request: Any, context: Any) -> Any:
        try:
            result = behavior(request, context)
        except BaseException as exc:
            finish(context, exc)
            raise
        finish(context, None)
        return result

    return plain


_KINDS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def rebuild(
    handler: Any, wrap: Callable[[Any, str], Any], request_deserializer: Any = None
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of ``handler``'s kind with ``wrap(behavior, kind)`` as its behaviour."""
    for kind, make in _KINDS.items():
        behavior = getattr(handler, kind, None)
        if behavior is not None:
            deserializer = request_deserializer or handler.request_deserializer
            made: grpc.RpcMethodHandler[Any, Any] = make(
                wrap(behavior, kind), deserializer, handler.response_serializer
            )
            return made
    return handler  # type: ignore[no-any-return]


class RateLimitedLog:
    """One warning line now, then at most one per ``every_s``, naming how many were held back."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self._every_s:
                self._held += 1
                return
            held, self._held, self._last = self._held, 0, now
        if held:
            log.warning(message + " (and %d more since the last such line)", *args, held)
        else:
            log.warning(message, *args)


class MalformedRequest(ValueError):
    """Request bytes that do not decode as the method's message type."""


class _Undecodable:
    """Stands in for a unary request that did not decode, so the handler wrapper can refuse it."""

    def __init__(self, error: MalformedRequest) -> None:
        self.error = error


def _describe(deserializer: Any, raw: bytes, exc: BaseException) -> MalformedRequest:
    owner = getattr(deserializer, "__self__", None)
    name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "") or "the expected"
    return MalformedRequest(f"malformed request: {len(raw)} bytes are not a valid {name} message")


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Every method: undecodable request bytes → INVALID_ARGUMENT and one rate-limited log line."""

    def __init__(self, log_every_s: float = LOG_EVERY_S) -> None:
        self._log = RateLimitedLog(log_every_s)
        # Method → (the handler given, the one returned): the wrappers depend on the method
        # only, so they are built once, not for every call (~2.5 KiB kept by each idle
        # agent's stream otherwise).
        self._built: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # type: ignore[no-any-return]
        method = str(handler_call_details.method)
        built = self._built.get(method)
        if built is not None and built[0] is handler:
            return built[1]  # type: ignore[no-any-return]
        wrapped = self._wrap(handler, method)
        self._built[method] = (handler, wrapped)
        return wrapped  # type: ignore[no-any-return]

    def _wrap(self, handler: Any, method: str) -> Any:
        decode = handler.request_deserializer
        streamed = handler.stream_unary is not None or handler.stream_stream is not None
        behavior = handler.stream_unary or handler.stream_stream or handler.unary_unary or handler.unary_stream
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            return handler  # a thread-run handler cannot await abort

        async def refuse(context: grpc.aio.ServicerContext[Any, Any], error: MalformedRequest) -> None:
            self._log.warning("%s from %s: %s", method, context.peer() or "?", error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

        if streamed:
            # Raised inside the handler's own reading of the stream, caught by the
            # iterator below before the handler sees it.
            def deserialize_streamed(raw: bytes) -> Any:
                try:
                    return decode(raw)
                except Exception as exc:
                    raise _describe(decode, raw, exc) from None

            def wrap_streamed(behavior: Any, kind: str) -> Any:
                async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
                    try:
                        async for item in requests:
                            yield item
                    except MalformedRequest as exc:
                        await refuse(context, exc)

                return _with_request(behavior, lambda request, context: checked(request, context))

            return rebuild(handler, wrap_streamed, deserialize_streamed)

        # A unary request is decoded before the handler runs, where an exception would be
        # grpc's own UNKNOWN: decode to a stand-in instead, refused by the wrapper.
        def deserialize_unary(raw: bytes) -> Any:
            try:
                return decode(raw)
            except Exception as exc:
                return _Undecodable(_describe(decode, raw, exc))

        def wrap_unary(behavior: Any, kind: str) -> Any:
            if inspect.isasyncgenfunction(behavior):

                async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
                    if isinstance(request, _Undecodable):
                        await refuse(context, request.error)
                    async for item in behavior(request, context):
                        yield item

                return agen

            async def coro(request: Any, context: Any) -> Any:
                if isinstance(request, _Undecodable):
                    await refuse(context, request.error)
                return await behavior(request, context)

            return coro

        return rebuild(handler, wrap_unary, deserialize_unary)


def _with_request(behavior: Any, transform: Callable[[Any, Any], Any]) -> Any:
    """``behavior`` called with ``transform(request, context)`` as its request, same shape."""
    if inspect.isasyncgenfunction(behavior):

        async def agen(request: Any, context: Any) -> AsyncIterator[Any]:
            async for item in behavior(transform(request, context), context):
                yield item

        return agen

    async def coro(request: Any, context: Any) -> Any:
        return await behavior(transform(request, context), context)

    return coro
