"""Does a vision projector fit a text model? A cheap look at both headers before an import.

A projector (GGUF architecture ``clip``) maps image patches to vectors of its
``clip.vision.projection_dim``; the text model reads vectors of its ``<arch>.embedding_length``.
When both files say, the two must be equal: libmtmd would refuse the pair at load anyway ("mismatch
between text model and mmproj"), and an import should say so before it places anything.
"""

from __future__ import annotations

from pathlib import Path

from studiolo.domain.errors import InvalidRequest
from studiolo.models.gguf_info import ModelInfo, read_header

PROJECTION_DIM_KEY = "clip.vision.projection_dim"


class ProjectorMismatch(InvalidRequest):
    """A projector that is no vision projector, or one made for another text model."""


def check_projector_fits(projector: Path, model: ModelInfo) -> None:
    """Raise ProjectorMismatch unless ``projector`` is a vision projector that fits ``model``.

    A file that is not a whole GGUF raises InvalidModelFile (from read_header)."""
    metadata = read_header(projector).metadata
    architecture = metadata.get("general.architecture")
    if architecture != "clip" or metadata.get("clip.has_vision_encoder") is False:
        raise ProjectorMismatch(
            f"{projector} is not a vision projector "
            f"(architecture '{architecture}', expected 'clip' with a vision encoder)"
        )
    projection_dim = metadata.get(PROJECTION_DIM_KEY)
    if isinstance(projection_dim, int) and model.embedding_length and projection_dim != model.embedding_length:
        raise ProjectorMismatch(
            f"{projector} does not fit the model: it projects to {projection_dim} dimensions, "
            f"the model's embedding length is {model.embedding_length}"
        )
