"""The cluster token: a shared secret that every RPC between Tandem's own processes carries
(gateway -> workers, prefill -> decode KV pages), checked by an interceptor on each worker server.

A call without it, or with another one, gets UNAUTHENTICATED naming the metadata key. Tokens are
compared in constant time and never printed (the configs that hold them keep them out of their
repr). The standard health service is exempt: probes and orchestrators (compose, the launchers)
read a worker's SERVING / NOT_SERVING without the secret, and learn nothing else from it.

    server = grpc.aio.server(interceptors=server_interceptors(token))        # [] without a token
    channel = aio_channel(address, token, options)                           # adds the metadata
    channel = sync_channel(grpc.insecure_channel(address, options), token)
"""

from __future__ import annotations

import collections
import hmac
import pathlib
import secrets

import grpc

from services.engine.errors import ConfigError

METADATA_KEY = "x-tandem-cluster-token"
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
_REFUSAL = f"missing or wrong cluster token (metadata {METADATA_KEY!r})"


def new_token() -> str:
    """A random token: what `tandem serve` hands the workers it starts."""
    return secrets.token_urlsafe(32)


def read_token_file(path: str) -> str:
    """The token in `path` (surrounding whitespace dropped); ConfigError naming the flag."""
    try:
        token = pathlib.Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--cluster-token-file {path}: cannot read it ({exc.strerror})") from None
    if not token:
        raise ConfigError(f"--cluster-token-file {path} is empty")
    return token


def _authorized(metadata, token: bytes) -> bool:
    for key, value in metadata or ():
        if key == METADATA_KEY:
            given = value.encode() if isinstance(value, str) else value
            return hmac.compare_digest(given, token)
    return False


def _deny_handler(handler, deny):
    """A handler of the same shape as `handler` whose behaviour is `deny`."""
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(deny, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class ClusterTokenCheck(grpc.aio.ServerInterceptor):
    """For grpc.aio servers (the workers' own services)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if (handler is None or details.method.startswith(EXEMPT_PREFIXES)
                or _authorized(details.invocation_metadata, self._token)):
            return handler

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)
        return _deny_handler(handler, deny)


class SyncClusterTokenCheck(grpc.ServerInterceptor):
    """For thread-pool grpc servers (the decode worker's KVTransfer endpoint)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if (handler is None or details.method.startswith(EXEMPT_PREFIXES)
                or _authorized(details.invocation_metadata, self._token)):
            return handler

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)
        return _deny_handler(handler, deny)


def server_interceptors(token: str, sync: bool = False) -> list:
    if not token:
        return []
    return [SyncClusterTokenCheck(token) if sync else ClusterTokenCheck(token)]


def _with_token(metadata, token: str) -> tuple:
    return (*(metadata or ()), (METADATA_KEY, token))


class _AioTokenSender:
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d):
        return grpc.aio.ClientCallDetails(d.method, d.timeout, grpc.aio.Metadata(*_with_token(d.metadata, self._token)),
                                          d.credentials, d.wait_for_ready)


# A grpc.aio channel files each interceptor under the first of the four kinds it is an instance
# of, so each kind needs an interceptor of its own.
class _AioUnaryUnary(_AioTokenSender, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _AioUnaryStream(_AioTokenSender, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _AioStreamUnary(_AioTokenSender, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


class _AioStreamStream(_AioTokenSender, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._details(details), request_iterator)


class _SyncDetails(collections.namedtuple("_SyncDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _SyncTokenSender(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                       grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d):
        return _SyncDetails(d.method, d.timeout, _with_token(d.metadata, self._token), d.credentials,
                            getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def aio_channel(address: str, token: str, options=None) -> grpc.aio.Channel:
    """An asyncio channel whose every call carries `token` ("" : none)."""
    interceptors = [kind(token) for kind in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary,
                                             _AioStreamStream)] if token else None
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


def sync_channel(channel: grpc.Channel, token: str) -> grpc.Channel:
    """`channel` with `token` on its every call ("" : `channel` as it is)."""
    return grpc.intercept_channel(channel, _SyncTokenSender(token)) if token else channel
