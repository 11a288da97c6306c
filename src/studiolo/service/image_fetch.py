"""Remote image URLs: off unless the server allows hosts (``studiolo server start --allow-image-urls``).

A server that fetches any URL a client names is a door into the network it sits in (SSRF: a
client on loopback makes the server reach a router's admin page, a cloud's metadata address). So
URLs are fetched only from the hosts the operator listed, and only so:

- ``http`` and ``https`` only, no credentials in the URL;
- the URL's host (and port) must be on the allow-list, as written: an entry ``host`` allows that
  host on any port, ``host:port`` that port alone; names are compared, not the addresses they
  resolve to, so list the name clients use;
- no redirect is followed (its target would escape the list), no proxy from the environment;
- at most ``max_image_mib`` bytes are read, within ``FETCH_TIMEOUT_SECONDS``; anything but a 200 is
  the client's 400 naming the image's field.

The bytes then go through the same checks as a ``data:`` URL's (engine/images.py).
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlsplit

import httpx

from studiolo.domain.chat import ChatMessage, ImageInput
from studiolo.domain.errors import InvalidRequest
from studiolo.engine.images import ImageTooLarge

FETCH_TIMEOUT_SECONDS = 10.0
DEFAULT_PORTS = {"http": 80, "https": 443}


class ImageFetch:
    def __init__(self, allowed_hosts: tuple[str, ...], max_bytes: int):
        self.allowed = {entry.strip().lower() for entry in allowed_hosts if entry.strip()}
        self.max_bytes = max_bytes

    async def fetch(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        """The messages with each remote image's bytes read (the same list if none is remote)."""
        if not any(isinstance(part, ImageInput) and part.url for message in messages for part in message.parts):
            return messages
        fetched = []
        for message in messages:
            parts = tuple([await self._read(part) if isinstance(part, ImageInput) and part.url else part
                           for part in message.parts])
            fetched.append(replace(message, parts=parts) if message.parts else message)
        return fetched

    async def _read(self, image: ImageInput) -> ImageInput:
        assert image.url is not None
        self._check_allowed(image.url, image.param)
        try:
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                         timeout=FETCH_TIMEOUT_SECONDS) as client:
                async with client.stream("GET", image.url) as response:
                    if response.status_code != 200:
                        raise _failed(f"fetching the image gave HTTP {response.status_code} (redirects are not "
                                      "followed)", image.param)
                    data = bytearray()
                    async for piece in response.aiter_bytes():
                        data += piece
                        if len(data) > self.max_bytes:
                            raise ImageTooLarge(f"the image at the URL is more than {self.max_bytes:,} bytes, "
                                                "the limit (setting limits.max_image_mib)", image.param)
        except httpx.HTTPError as exc:
            raise _failed(f"the image could not be fetched: {type(exc).__name__}", image.param) from None
        return replace(image, data=bytes(data), url=None)

    def _check_allowed(self, url: str, param: str) -> None:
        if not self.allowed:
            raise InvalidRequest("remote image URLs are not fetched; send the image inline as a base64 data: URL "
                                 "(data:image/png;base64,...)", param, code="image_url_unsupported")
        try:
            parts = urlsplit(url)
            port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
        except ValueError:
            raise InvalidRequest("the image URL is not a valid URL", param, code="invalid_image_url") from None
        host = (parts.hostname or "").lower()
        if parts.scheme.lower() not in DEFAULT_PORTS or parts.username is not None or parts.password is not None:
            raise InvalidRequest("an image URL must be http or https, without credentials", param,
                                 code="invalid_image_url")
        shown = f"[{host}]" if ":" in host else host
        if host not in self.allowed and f"{shown}:{port}" not in self.allowed:
            raise InvalidRequest(f"the server does not fetch images from {shown}:{port} (not on its allow-list, "
                                 "--allow-image-urls)", param, code="image_url_not_allowed")


def _failed(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param, code="image_fetch_failed")
