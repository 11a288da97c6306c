"""Image URLs: a ``data:`` URL's bytes, for every API family that takes images and for the images of
stored conversations, read back from their items (docs/API.md "Images").

A base64 ``data:`` URL is read here. A remote ``http(s)`` URL is handed on as it is: the service
fetches it only from the hosts the server allows, and refuses it otherwise (service/image_fetch.py).
The media type is not trusted: the bytes' own header says what the image is (engine/images.py).
"""

from __future__ import annotations

import base64
import binascii
import re

from studiolo.domain.chat import ImageInput
from studiolo.domain.errors import InvalidRequest

MAX_URL_CHARS = 8192
# data:[<media type>][;<parameter>...];base64,<data>
_DATA_URL = re.compile(r"data:(?P<type>[^,;]*)(?P<params>(?:;[^,;]*)*),", re.IGNORECASE)


def image_from_url(url: str, param: str) -> ImageInput:
    """The image a client's URL carries; ``param`` names its field in errors and later checks."""
    head = _DATA_URL.match(url[:1024])
    if head is None:
        if url[:8].lower().startswith(("http://", "https://")):
            if len(url) > MAX_URL_CHARS:
                raise InvalidRequest(f"the image URL is longer than {MAX_URL_CHARS} characters", param,
                                     code="invalid_image_url")
            return ImageInput(b"", param, url=url)
        raise InvalidRequest("the image URL must be a base64 data: URL (data:image/png;base64,...)", param,
                             code="invalid_image_url")
    if "base64" not in (piece.strip().lower() for piece in head.group("params").split(";")):
        raise InvalidRequest("the image's data: URL must be base64 encoded (data:image/png;base64,...)", param,
                             code="invalid_image_url")
    try:
        data = base64.b64decode(url[head.end():], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("the image's base64 data is broken", param, code="invalid_base64") from None
    if not data:
        raise InvalidRequest("the image's data is empty", param, code="invalid_image")
    return ImageInput(data, param)
