"""One socket of LM Studio's SDK protocol: the handshake, then frames until the client leaves.

Every RPC call and channel runs as its own task, so a long prediction never holds up a model
listing on the same socket; sends go through one lock, so frames never interleave. When the socket
closes, every task it started is cancelled: a prediction's sequence is freed as for an HTTP client
that disconnects. A revoked or expired token ends the socket at its next frame either way.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from studiolo.api.lmstudio_sdk import endpoints, frames
from studiolo.api.lmstudio_sdk.endpoints import Call, Channel, ChannelGone, Client, Endpoint, Namespace, SdkError
from studiolo.domain.auth import TOKEN_PREFIX
from studiolo.domain.errors import StudioloError
from studiolo.service.auth import StreamCheck, require

log = logging.getLogger(__name__)

HANDSHAKE_SECONDS = 10.0  # a socket that never authenticates is closed
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009


class Session:
    def __init__(self, websocket: WebSocket, namespace: Namespace):
        self.websocket = websocket
        self.namespace = namespace
        self.state = websocket.app.state
        settings = self.state.settings
        self.max_frame_bytes = settings.limits.max_body_mib * 2**20
        self.require_auth = settings.require_auth
        self.client = Client("")
        self.check: StreamCheck | None = None
        self.send_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.channels: dict[int, Channel] = {}
        self.closed = False

    async def run(self) -> None:
        await self.websocket.accept()
        opened = False
        try:
            if await self._authenticated():
                opened = True
                for hook in endpoints.SOCKET_OPENED:
                    hook(self.client)
                await self._serve()
        except WebSocketDisconnect:
            pass
        finally:
            self.closed = True
            for channel in self.channels.values():
                channel.inbox.put_nowait(None)
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.gather(*self.tasks, return_exceptions=True)
            if opened:  # once its work has ended: nothing of it reads the client's state any more
                for hook in endpoints.SOCKET_CLOSED:
                    hook(self.client)

    # -- the handshake

    async def _authenticated(self) -> bool:
        try:
            first = await asyncio.wait_for(self._receive_frame(), HANDSHAKE_SECONDS)
        except TimeoutError:
            await self.websocket.close(POLICY_VIOLATION, "no authentication frame")
            return False
        if first is None:
            return False
        refusal = self._authenticate(first)
        if refusal is not None:
            await self._send({"success": False, "error": refusal})
            await self.websocket.close(POLICY_VIOLATION, refusal[:120])
            return False
        await self._send({"success": True})
        return True

    def _authenticate(self, frame: Any) -> str | None:
        """Why the client may not go on (None: it may). Its identifier and passkey are an API token's
        two halves (``sk-lm-<identifier>:<passkey>``) when the server requires tokens; a guest's
        random pair otherwise."""
        if not (isinstance(frame, dict) and frame.get("authVersion") == 1
                and isinstance(frame.get("clientIdentifier"), str) and isinstance(frame.get("clientPasskey"), str)):
            return "the first frame must authenticate: {authVersion: 1, clientIdentifier, clientPasskey}"
        identifier = frame["clientIdentifier"]
        self.client = Client(identifier[:200])
        if not self.require_auth:
            return None
        text = f"{identifier if identifier.startswith(TOKEN_PREFIX) else TOKEN_PREFIX + identifier}:" \
               f"{frame['clientPasskey']}"
        try:
            info = self.state.tokens.verify(text)
        except StudioloError as exc:
            return f"{exc} This server requires an API token: pass it as the SDK's apiToken."
        self.client.token = info
        self.check = StreamCheck(self.state.tokens, info, text)
        return None

    def _token_holds(self) -> bool:
        return self.check is None or self.check.still_valid()

    # -- frames

    async def _serve(self) -> None:
        while True:
            raw = await self._receive_frame()
            if raw is None:
                return
            if not self._token_holds():
                await self.websocket.close(POLICY_VIOLATION, "the API token was revoked or has expired")
                return
            try:
                frame = frames.parse_client_frame(raw)
            except frames.BadFrame as exc:
                await self._send(frames.warning(str(exc)))
                continue
            await self._dispatch(frame)

    async def _receive_frame(self) -> Any:
        """The next frame, decoded; None once the client is gone or the frame was too big (the socket
        is then closed with 1009). A frame that is not JSON is answered with a warning and skipped."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            data = message.get("text")
            if data is None and message.get("bytes") is not None:
                data = message["bytes"].decode("utf-8", errors="replace")
            if data is None:
                continue
            if len(data) > self.max_frame_bytes:
                await self.websocket.close(MESSAGE_TOO_BIG, f"a frame may hold at most {self.max_frame_bytes} bytes")
                return None
            try:
                return json.loads(data)
            except ValueError:
                await self._send(frames.warning("a frame must be JSON"))

    async def _dispatch(self, frame: frames.ClientFrame) -> None:
        if isinstance(frame, frames.RpcCall):
            self._start(self._rpc(frame))
        elif isinstance(frame, frames.ChannelCreate):
            self._open_channel(frame)
        elif isinstance(frame, frames.ChannelMessage):
            channel = self.channels.get(frame.channel_id)
            if channel is None:
                await self._send(frames.warning(f"no open channel {frame.channel_id}"))
                return
            channel.inbox.put_nowait(frame.message)
            if frame.ack_id is not None:
                await self._send(frames.channel_ack(frame.channel_id, frame.ack_id))
        elif isinstance(frame, frames.KeepAlive):
            await self._send(frames.KEEP_ALIVE_ACK)
        elif isinstance(frame, frames.SignalSubscribe):
            await self._send(frames.signal_error(frame.reply_type, frame.subscribe_id))

    def _start(self, work: Any) -> None:
        task = asyncio.create_task(_quietly(work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- RPC calls and channels

    def _permitted(self, endpoint: Endpoint) -> None:
        if self.client.token is not None:
            require(self.client.token, endpoint.permission, f"{self.namespace.name}.{endpoint.name}")
        elif self.require_auth:  # cannot happen past the handshake; kept so a change cannot open a hole
            raise SdkError("not authenticated")

    async def _rpc(self, call: frames.RpcCall) -> None:
        try:
            endpoint = self.namespace.find_rpc(call.endpoint)
            self._permitted(endpoint)
            result = await endpoint.handler(Call(self.state, self.client, self.namespace.name), call.parameter)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every failure is the client's answer; the socket goes on
            _log_unexpected(exc, f"RPC {self.namespace.name}.{call.endpoint}")
            await self._send(frames.rpc_error(call.call_id, exc))
            return
        await self._send(frames.rpc_result(call.call_id, result))

    def _open_channel(self, create: frames.ChannelCreate) -> None:
        channel = Channel(self.state, self.client, self.namespace.name, create.channel_id, self._send_channel)
        if create.channel_id in self.channels:
            self._start(self._send(frames.channel_error(create.channel_id, SdkError(
                f"channel {create.channel_id} is open already"))))
            return
        self.channels[create.channel_id] = channel
        self._start(self._run_channel(channel, create))

    async def _run_channel(self, channel: Channel, create: frames.ChannelCreate) -> None:
        try:
            endpoint = self.namespace.find_channel(create.endpoint)
            self._permitted(endpoint)
            await endpoint.handler(channel, create.parameter)
        except (asyncio.CancelledError, ChannelGone):
            return
        except Exception as exc:
            _log_unexpected(exc, f"channel {self.namespace.name}.{create.endpoint}")
            await self._send(frames.channel_error(channel.id, exc))
            return
        else:
            await self._send(frames.channel_close(channel.id))
        finally:
            self.channels.pop(channel.id, None)

    async def _send_channel(self, frame: dict[str, Any]) -> None:
        if not self._token_holds():  # a stream to a revoked token ends at its next message
            await self.websocket.close(POLICY_VIOLATION, "the API token was revoked or has expired")
            raise ChannelGone()
        await self._send(frame)

    async def _send(self, frame: dict[str, Any]) -> None:
        if self.closed:
            raise ChannelGone()
        async with self.send_lock:
            try:
                await self.websocket.send_text(json.dumps(frame, ensure_ascii=False))
            except (WebSocketDisconnect, RuntimeError) as exc:  # the client left while we wrote
                self.closed = True
                raise ChannelGone() from exc


async def _quietly(work: Any) -> None:
    """Runs a call's or channel's work; the client leaving while it answers ends it, unreported."""
    try:
        await work
    except ChannelGone:
        pass


def _log_unexpected(exc: Exception, what: str) -> None:
    if not isinstance(exc, StudioloError):
        log.exception("%s failed", what, exc_info=exc)
