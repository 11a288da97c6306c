"""A vision model's projector, loaded with its model (docs/ENGINE.md "Vision", docs/MODELS.md).

The projector's weights and compute buffer count in the memory guard with the model's: before the
load as the file's size and a compute allowance, after it as libmtmd logged them.
"""

from __future__ import annotations

from pathlib import Path

from studiolo.engine.llama import LlamaModel
from studiolo.engine.vision import VisionContext
from studiolo.models.memory import LoadEstimate

# libmtmd's compute buffer for a CLIP encoder: a few MiB for the test projector, ~100-300 MiB for a
# real ViT at its image size; the estimate errs high, as models/memory.py's does
PROJECTOR_COMPUTE_BYTES = 256 * 2**20


def projector_estimate(projector: Path | None) -> LoadEstimate:
    """What loading ``projector`` will take, before it is loaded (nothing for no projector)."""
    if projector is None:
        return LoadEstimate(0, 0, 0)
    return LoadEstimate(projector.stat().st_size, 0, PROJECTOR_COMPUTE_BYTES)


def load_projector(model: LlamaModel, projector: Path | None, threads: int) -> VisionContext | None:
    """The model's vision context (None without a projector); close it before the model."""
    return VisionContext(model, projector, n_threads=threads) if projector is not None else None


def projector_footprint(vision: VisionContext | None) -> LoadEstimate:
    """What a loaded projector holds, as libmtmd logged it (the file's size if it logged nothing)."""
    if vision is None:
        return LoadEstimate(0, 0, 0)
    sizes = vision.memory_bytes
    return LoadEstimate(sizes.get("weights", vision.projector.stat().st_size), 0, sizes.get("compute", 0))
