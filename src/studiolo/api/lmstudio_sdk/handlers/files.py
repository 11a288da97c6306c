"""The ``files`` namespace: images a client uploads to put in a chat (``client.files.prepare_image``
in Python, ``client.files.prepareImage`` / ``prepareImageBase64`` in JavaScript).

``uploadFileBase64 {name, contentBase64}`` answers ``{identifier, fileType, sizeBytes}``; the SDK
then sends ``{type: "file", identifier, ...}`` parts in a prediction's history, which the predict
handler turns back into the image's bytes with ``image_bytes``.

Files are kept in memory, per client (the SDK's ``clientIdentifier``, which is the API token's
identifier when the server requires tokens), for as long as any socket of that client is open:
LM Studio deletes them "when the client disconnects" too. Bounded: one file at most the server's
``limits.max_image_mib``, a client's files together at most ``CLIENT_FILES_IMAGES`` times that.
The same bytes uploaded again get the same identifier and count once. Only images are taken
(studiolo serves no retrieval, the one use LM Studio has for other files); the bytes are checked
by their header here, and decoded with the server's limits when a prediction uses them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from studiolo.api.lmstudio_sdk.endpoints import Call, Client, SdkError, namespace, on_socket_closed, on_socket_opened
from studiolo.domain.errors import InvalidRequest, NotFound

files = namespace("files")

CLIENT_FILES_IMAGES = 5  # a client's files together: at most this many of the largest image allowed

# the headers of the image formats the engine decodes (engine/images.py DEFAULT_FORMATS)
_IMAGE_HEADERS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"), (b"BM", "bmp"))


class FileTooLarge(InvalidRequest):
    kind = "too_large"
    code = "file_too_large"


class FileNotFound(NotFound):
    code = "file_not_found"


@dataclass(frozen=True)
class StoredFile:
    name: str
    data: bytes


@dataclass
class ClientFiles:
    """One client's files, and how many of its sockets are open."""

    sockets: int = 0
    by_identifier: dict[str, StoredFile] = field(default_factory=dict)
    by_digest: dict[str, str] = field(default_factory=dict)  # sha256 of the bytes -> identifier
    total_bytes: int = 0


_CLIENTS: dict[str, ClientFiles] = {}


@on_socket_opened
def _client_socket_opened(client: Client) -> None:
    _CLIENTS.setdefault(client.identifier, ClientFiles()).sockets += 1


@on_socket_closed
def _client_socket_closed(client: Client) -> None:
    held = _CLIENTS.get(client.identifier)
    if held is None:
        return
    held.sockets -= 1
    if held.sockets <= 0:  # the client's last socket: its files go with it
        del _CLIENTS[client.identifier]


@files.rpc("uploadFileBase64")
async def upload_file_base64(call: Call, parameter: Any) -> dict[str, Any]:
    name, content = _upload_fields(parameter)
    max_bytes = call.state.settings.limits.max_image_mib * 2**20
    if len(content) // 4 * 3 > max_bytes + 3:  # refused before decoding what would be too much
        raise _too_large(max_bytes)
    data = await asyncio.to_thread(_decoded, content)  # tens of MiB of base64 would hold up the loop
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    extension = _image_extension(data)
    held = _CLIENTS.get(call.client.identifier)
    if held is None:  # the socket this call came on closed while it was decoded
        raise SdkError("the client's connection is closed")
    identifier = _stored(held, name, data, extension, max_bytes * CLIENT_FILES_IMAGES)
    # shown among the memory report's caches (GET /studiolo/memory): held by clients, bounded per client
    call.state.memory.register("sdk_files", lambda: (held_bytes(), None))
    return {"identifier": identifier, "fileType": "image", "sizeBytes": len(data)}


@files.rpc("getLocalFileAbsolutePath")
async def get_local_file_absolute_path(call: Call, parameter: Any) -> dict[str, Any]:
    # LM Studio keeps uploads in a folder and tells where; studiolo keeps them in memory, and shows
    # no path of the server's disk to a client either way
    raise SdkError("studiolo keeps uploaded files in memory: they have no path on the server")


def image_bytes(client_identifier: str, file_identifier: str, param: str | None = None) -> bytes:
    """The bytes of an image the client uploaded (``uploadFileBase64``), for a prediction's history;
    ``param``: the history field that named it, for the error when there is no such file."""
    held = _CLIENTS.get(client_identifier)
    stored = held.by_identifier.get(file_identifier) if held is not None else None
    if stored is None:
        raise FileNotFound(f"no file '{file_identifier}' was uploaded by this client: upload it with "
                           "prepare_image first (uploaded files last as long as the client's connection)",
                           param or file_identifier)
    return stored.data


def held_bytes() -> int:
    """What every connected client's files hold together."""
    return sum(held.total_bytes for held in _CLIENTS.values())


def _upload_fields(parameter: Any) -> tuple[str, str]:
    if not isinstance(parameter, dict):
        raise SdkError("uploadFileBase64 needs {name, contentBase64}")
    name, content = parameter.get("name"), parameter.get("contentBase64")
    if not isinstance(name, str):
        raise InvalidRequest("'name' must be a string: the file's name", "name")
    if not isinstance(content, str):
        raise InvalidRequest("'contentBase64' must be a string: the file's bytes in base64", "contentBase64")
    return name, content


def _decoded(content: str) -> bytes:
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("the file's base64 content is broken", "contentBase64",
                             code="invalid_base64") from None
    if not data:
        raise InvalidRequest("the file is empty", "contentBase64", code="invalid_image")
    return data


def _image_extension(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for header, extension in _IMAGE_HEADERS:
        if data.startswith(header):
            return extension
    raise InvalidRequest("studiolo takes images only (PNG, JPEG, WebP, GIF, BMP), for chats with a vision "
                         "model; this file is none of them", "contentBase64", code="unsupported_file_type")


def _stored(held: ClientFiles, name: str, data: bytes, extension: str, client_max: int) -> str:
    """The file's identifier in the client's files: the one it has already when the same bytes came
    before. An identifier is a bare file name, as the JavaScript SDK parses it (no ':' or '/')."""
    digest = hashlib.sha256(data).hexdigest()
    known = held.by_digest.get(digest)
    if known is not None:
        return known
    if held.total_bytes + len(data) > client_max:
        raise FileTooLarge(f"this client holds {held.total_bytes:,} bytes of files already; with this one it "
                           f"would hold more than {client_max:,} ({CLIENT_FILES_IMAGES} x the setting "
                           "limits.max_image_mib). Files are freed when the client disconnects",
                           "contentBase64")
    identifier = f"{secrets.token_hex(12)}.{extension}"
    held.by_identifier[identifier] = StoredFile(name[:255], data)
    held.by_digest[digest] = identifier
    held.total_bytes += len(data)
    return identifier


def _too_large(max_bytes: int) -> FileTooLarge:
    return FileTooLarge(f"the file is larger than {max_bytes:,} bytes (setting limits.max_image_mib)",
                        "contentBase64")
