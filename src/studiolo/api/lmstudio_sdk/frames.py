"""The protocol's frames: what a client may send, checked before anything acts on it, and what the
server sends back.

Client frames the SDKs send: ``rpcCall {endpoint, callId, parameter?}``, ``channelCreate {endpoint,
channelId, creationParameter?}``, ``channelSend {channelId, message, ackId?}``, ``keepAlive``,
``communicationWarning {warning}``; the signal frames of lmstudio-js's own UI (``signalSubscribe``
and its kin) are answered with their error frame, since studiolo has no signals. A frame that is not
one of these, or lacks a field, gets a ``communicationWarning`` back and is otherwise ignored, as
LM Studio's server does: one bad frame does not end a socket that may carry other work.

An error travels as LM Studio's serialized error: ``{"title", "cause"?, "displayData"?}``; the
SDKs show the title. No path on the server's disk reaches it (api/private.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studiolo.api.lmstudio_sdk.endpoints import SdkError
from studiolo.api.private import without_paths
from studiolo.domain.errors import StudioloError

# displayData codes the SDKs turn into their own exception types (lmstudio-python's json_api.py)
_DISPLAY_CODE_OF = {"model_not_found": "generic.noModelMatchingQuery", "preset_not_found": "generic.presetNotFound"}
SIGNAL_FRAMES = {"signalSubscribe": "signalError", "writableSignalSubscribe": "writableSignalError"}
IGNORED_FRAMES = {"channelAck", "signalUnsubscribe", "writableSignalUnsubscribe", "writableSignalUpdate"}


class BadFrame(Exception):
    """A frame that is not one of the protocol's: answered with a communicationWarning."""


@dataclass(frozen=True)
class RpcCall:
    endpoint: str
    call_id: int
    parameter: Any


@dataclass(frozen=True)
class ChannelCreate:
    endpoint: str
    channel_id: int
    parameter: Any


@dataclass(frozen=True)
class ChannelMessage:
    channel_id: int
    message: dict[str, Any]
    ack_id: int | None


@dataclass(frozen=True)
class SignalSubscribe:
    reply_type: str
    subscribe_id: int


@dataclass(frozen=True)
class KeepAlive:
    pass


@dataclass(frozen=True)
class Ignored:
    """A frame the protocol allows that needs no answer here (a warning from the client, an ack)."""

    type: str


ClientFrame = RpcCall | ChannelCreate | ChannelMessage | SignalSubscribe | KeepAlive | Ignored


def parse_client_frame(frame: Any) -> ClientFrame:
    """The frame the client sent, checked; BadFrame saying what is wrong with it."""
    if not isinstance(frame, dict):
        raise BadFrame("a frame must be a JSON object")
    kind = frame.get("type")
    if kind == "rpcCall":
        return RpcCall(_text(frame, "endpoint"), _id(frame, "callId"), frame.get("parameter"))
    if kind == "channelCreate":
        return ChannelCreate(_text(frame, "endpoint"), _id(frame, "channelId"), frame.get("creationParameter"))
    if kind == "channelSend":
        message = frame.get("message")
        if not isinstance(message, dict):
            raise BadFrame("channelSend needs 'message', an object")
        ack = frame.get("ackId")
        return ChannelMessage(_id(frame, "channelId"), message, ack if isinstance(ack, int) else None)
    if kind == "keepAlive":
        return KeepAlive()
    if kind in SIGNAL_FRAMES:
        return SignalSubscribe(SIGNAL_FRAMES[kind], _id(frame, "subscribeId"))
    if kind in IGNORED_FRAMES or kind == "communicationWarning":
        return Ignored(kind)
    raise BadFrame(f"unknown frame type {kind!r}" if isinstance(kind, str) else "a frame needs a 'type'")


def _text(frame: dict[str, Any], key: str) -> str:
    value = frame.get(key)
    if not isinstance(value, str) or not value:
        raise BadFrame(f"{frame.get('type')} needs '{key}', a string")
    return value


def _id(frame: dict[str, Any], key: str) -> int:
    value = frame.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadFrame(f"{frame.get('type')} needs '{key}', an integer")
    return value


def serialized_error(exc: BaseException) -> dict[str, Any]:
    """LM Studio's serialized error for ``exc``: its message as the title; a StudioloError's code as
    the cause's name, and as displayData where the SDKs know the code."""
    if not isinstance(exc, StudioloError):
        return {"title": "Internal error in studiolo: the server's log has the details"}
    error: dict[str, Any] = {"title": without_paths(str(exc)) or type(exc).__name__}
    if exc.param:
        error["cause"] = f"{exc.code or exc.kind} ({exc.param})"
    display = exc.display_code if isinstance(exc, SdkError) else _DISPLAY_CODE_OF.get(exc.code or "")
    if display:
        extra = exc.display_data if isinstance(exc, SdkError) else None
        error["displayData"] = {"code": display, **(extra or {})}
    return error


def rpc_result(call_id: int, result: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "rpcResult", "callId": call_id}
    if result is not None:
        frame["result"] = result
    return frame


def rpc_error(call_id: int, exc: BaseException) -> dict[str, Any]:
    return {"type": "rpcError", "callId": call_id, "error": serialized_error(exc)}


def channel_close(channel_id: int) -> dict[str, Any]:
    return {"type": "channelClose", "channelId": channel_id}


def channel_error(channel_id: int, exc: BaseException) -> dict[str, Any]:
    return {"type": "channelError", "channelId": channel_id, "error": serialized_error(exc)}


def channel_ack(channel_id: int, ack_id: int) -> dict[str, Any]:
    return {"type": "channelAck", "channelId": channel_id, "ackId": ack_id}


def signal_error(reply_type: str, subscribe_id: int) -> dict[str, Any]:
    return {"type": reply_type, "subscribeId": subscribe_id,
            "error": {"title": "studiolo serves no signals of LM Studio's SDK protocol"}}


def warning(text: str) -> dict[str, Any]:
    return {"type": "communicationWarning", "warning": text}


KEEP_ALIVE_ACK: dict[str, Any] = {"type": "keepAliveAck"}
