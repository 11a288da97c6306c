"""The endpoints of LM Studio's SDK protocol: a registry per namespace, and what a handler gets.

An RPC handler is ``async def handler(call: Call, parameter) -> result`` (the result is sent as
``rpcResult``; None sends none, as the protocol's void calls do). A channel handler is ``async def
handler(channel: Channel, parameter) -> None``: it sends with ``channel.send``, reads the client's
messages with ``channel.receive`` and the channel is closed when it returns. Either raises a
StudioloError (or SdkError) to answer with the protocol's error, whose title is its message.

Each endpoint declares the permission it needs (domain/auth.py): checked against the token the
socket authenticated with when the server requires tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from studiolo.domain.auth import Permission, TokenInfo
from studiolo.domain.errors import InvalidRequest, NotFound

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class SdkError(InvalidRequest):
    """A protocol-level mistake by the client (a malformed frame, an unknown channel), or an endpoint
    studiolo does not serve; ``display_code``: LM Studio's ``displayData.code`` when it has one the
    SDKs recognise (``generic.noModelMatchingQuery``), and ``display_data`` the fields LM Studio gives
    with that code."""

    code = "invalid_sdk_request"

    def __init__(self, message: str, *, param: str | None = None, display_code: str | None = None,
                 display_data: dict[str, Any] | None = None):
        super().__init__(message, param)
        self.display_code = display_code
        self.display_data = display_data  # the displayData fields beside its code (the SDKs' zod lists them)


class UnknownEndpoint(NotFound):
    code = "unknown_endpoint"


@dataclass
class Client:
    """Who is on the other end of a socket: the SDK's client identifier, and its token when the
    server requires tokens (None otherwise: a guest)."""

    identifier: str
    token: TokenInfo | None = None


@dataclass
class Call:
    """What an RPC handler is given: the server's services (``state``: the app's state) and the client."""

    state: Any
    client: Client
    namespace: str


@dataclass
class Channel:
    """A channel's two directions. ``send`` writes ``channelSend`` to the client; ``receive`` waits for
    the client's next message (ChannelGone once the client closed the socket)."""

    state: Any
    client: Client
    namespace: str
    id: int
    _send: Callable[[dict[str, Any]], Awaitable[None]]
    inbox: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)

    async def send(self, message: dict[str, Any]) -> None:
        await self._send({"type": "channelSend", "channelId": self.id, "message": message})

    async def receive(self) -> dict[str, Any]:
        message = await self.inbox.get()
        if message is None:
            raise ChannelGone()
        return message


class ChannelGone(Exception):
    """The client is gone: a channel handler that waits on it stops (not an error anyone sees)."""


RpcHandler = Callable[[Call, Any], Awaitable[Any]]
ChannelHandler = Callable[[Channel, Any], Awaitable[None]]


@dataclass(frozen=True)
class Endpoint:
    name: str
    permission: Permission
    handler: Callable[..., Awaitable[Any]]


@dataclass
class Namespace:
    """One namespace's endpoints; its handlers join with ``@namespace.rpc(name)`` and ``.channel(name)``."""

    name: str
    rpcs: dict[str, Endpoint] = field(default_factory=dict)
    channels: dict[str, Endpoint] = field(default_factory=dict)

    def rpc(self, name: str, permission: Permission = Permission.inference) -> Callable[[F], F]:
        def join(handler: F) -> F:
            self.rpcs[name] = Endpoint(name, permission, handler)
            return handler
        return join

    def channel(self, name: str, permission: Permission = Permission.inference) -> Callable[[F], F]:
        def join(handler: F) -> F:
            self.channels[name] = Endpoint(name, permission, handler)
            return handler
        return join

    def find_rpc(self, name: str) -> Endpoint:
        return self._find(self.rpcs, name, "RPC endpoint")

    def find_channel(self, name: str) -> Endpoint:
        return self._find(self.channels, name, "channel endpoint")

    def _find(self, table: dict[str, Endpoint], name: str, what: str) -> Endpoint:
        found = table.get(name)
        if found is None:
            raise UnknownEndpoint(f"studiolo does not serve the {what} '{self.name}.{name}' of LM Studio's "
                                  f"SDK protocol", param=name)
        return found


# every namespace the SDKs open a socket to; those studiolo serves nothing of answer each call with
# an error naming the endpoint instead of refusing the socket (the SDKs open them all at start)
NAMESPACES: dict[str, Namespace] = {name: Namespace(name) for name in (
    "llm", "embedding", "system", "files", "repository", "diagnostics", "plugins", "runtime", "retrieval")}


def namespace(name: str) -> Namespace:
    return NAMESPACES[name]


# What lives per client rather than per socket (the files it uploaded) follows its sockets: each
# socket calls these once its handshake succeeded, and once more when it closed.
ClientHook = Callable[[Client], None]
SOCKET_OPENED: list[ClientHook] = []
SOCKET_CLOSED: list[ClientHook] = []


def on_socket_opened(hook: ClientHook) -> ClientHook:
    SOCKET_OPENED.append(hook)
    return hook


def on_socket_closed(hook: ClientHook) -> ClientHook:
    SOCKET_CLOSED.append(hook)
    return hook
