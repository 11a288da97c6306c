"""Images from a client's bytes to RGB pixels, with limits, before libmtmd sees them.

libmtmd's own buffer helper decodes with stb_image (few limits) and hands WebP to an ``ffmpeg``
subprocess; a server decoding what strangers send wants neither. So images are decoded here with
Pillow, in this order, each step refusing before the next costs anything:

1. the byte size (``max_bytes``), before any parsing;
2. Pillow identifies the format from the header (``Image.open`` is lazy: no pixel is decoded yet):
   not an image at all is ``NotAnImage``, an image of another format ``UnsupportedImageFormat``;
3. the pixel count from the header (``max_pixels``): a 50 kB PNG can claim 100,000 x 100,000
   pixels (a "pixel bomb"), refused before a byte of it is inflated;
4. only then the pixels are decoded (a truncated or corrupt file is ``NotAnImage``), turned upright
   by their EXIF orientation (phones store photos sideways), composited on white when they have
   transparency, and converted to 8-bit RGB, the layout ``mtmd_bitmap_init`` takes.

Animated GIF, PNG and WebP files give their first frame, as stb_image does. The errors are
``InvalidRequest`` (400) whose ``param`` the service fills in with the request field
(``messages[1].content[0].image_url``).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

from PIL import Image, ImageOps, UnidentifiedImageError

from studiolo.domain.errors import InvalidRequest


class NotAnImage(InvalidRequest):
    """The bytes are not an image, or a broken one (truncated, corrupt)."""
    code = "invalid_image"


class UnsupportedImageFormat(InvalidRequest):
    """An image, but in a format the server does not take (TIFF, ICO, PSD, ...)."""
    code = "unsupported_image_format"


class ImageTooLarge(InvalidRequest):
    """More bytes or more pixels than the server's limits allow."""
    code = "image_too_large"


# What OpenAI's vision documents accept, and BMP, which llama-server's stb_image reads too.
DEFAULT_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP"})


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 2**20  # an encoded image, after base64 decoding (OpenAI's limit is 20 MB)
    max_pixels: int = 7680 * 4320  # width x height: 8K UHD, 33 Mpx, about 100 MB as RGB
    max_images: int = 16  # per request: the service counts them, the engine does not
    formats: frozenset[str] = field(default=DEFAULT_FORMATS)


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An image as libmtmd takes it: 8-bit RGB rows, top to bottom."""

    width: int
    height: int
    rgb: bytes = field(repr=False)  # width * height * 3 bytes
    format: str  # what the client sent: "PNG", "JPEG", ...
    # sha256 of the size and pixels: the same picture sent again (in any format) has the same digest,
    # and the KV cache knows the image by it (placeholder ids are derived from it)
    digest: str = ""

    def __post_init__(self) -> None:
        if len(self.rgb) != self.width * self.height * 3:
            raise ValueError(f"{len(self.rgb)} bytes are not {self.width} x {self.height} RGB pixels")
        if not self.digest:
            hasher = hashlib.sha256(f"{self.width}x{self.height}\n".encode())
            hasher.update(self.rgb)
            object.__setattr__(self, "digest", hasher.hexdigest())


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), param: str | None = None) -> DecodedImage:
    """Decode a client's image bytes to RGB within ``limits``; ``param`` names the field in errors."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"the image is {len(data):,} bytes; the limit is {limits.max_bytes:,}", param)
    image = _open(data, param)
    with image:
        # cameras write JPEGs with a second picture (MPO): Pillow names them apart, a client sent a JPEG
        kind = "JPEG" if image.format == "MPO" else str(image.format)
        if kind not in limits.formats:
            allowed = ", ".join(sorted(limits.formats))
            raise UnsupportedImageFormat(f"{kind} images are not supported (supported: {allowed})", param)
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageTooLarge(f"the image is {width} x {height} pixels ({width * height:,}); "
                                f"the limit is {limits.max_pixels:,} pixels", param)
        rgb = _rgb(image, param)
    return DecodedImage(rgb.width, rgb.height, rgb.tobytes(), kind)


def _open(data: bytes, param: str | None) -> Image.Image:
    """The image's header, read lazily; Pillow's own bomb check (twice MAX_IMAGE_PIXELS) is a backstop."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"the image has too many pixels ({error})", param) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise NotAnImage("the data is not an image (or not one the server can read)", param) from None


def _rgb(image: Image.Image, param: str | None) -> Image.Image:
    """The first frame, upright, on white where it is transparent, as 8-bit RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image)
            if upright.mode in ("RGBA", "LA", "PA") or (upright.mode == "P" and "transparency" in upright.info):
                rgba = upright.convert("RGBA")
                flat = Image.new("RGB", rgba.size, (255, 255, 255))
                flat.paste(rgba, mask=rgba.getchannel("A"))
                return flat
            return upright.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise NotAnImage("the image is broken or truncated", param) from None
