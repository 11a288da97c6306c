"""Images on the wire: every API family reads an image's URL with domain/image_urls.py, the rule stored
conversations (service/items.py) read them back with too."""

from studiolo.domain.image_urls import MAX_URL_CHARS, image_from_url

__all__ = ["MAX_URL_CHARS", "image_from_url"]
