"""Vision "models" for the tests: a real text model with a vision projector of random weights beside it.

No vision model can be had offline (docs/MODELS.md), so the tests write projectors with the ``gguf``
package (``clip`` architecture), each with a tiny ViT (3 blocks of width 64, 14-pixel patches):

- LLaVA 1.5's (``clip.projector_type`` ``mlp``) for SmolLM2 and Qwen2.5-0.5B: 112-pixel images, 64
  image tokens, a two-layer MLP out to the text model's embedding size; causal, like most projectors;
- Gemma 3's (``gemma3``) for Gemma 3 270M: 224-pixel images, 256 patches pooled 2 x 2 into 64 tokens,
  RMS norm and a projection; its images are decoded with non-causal attention and framed by
  ``<start_of_image>`` / ``<end_of_image>`` tokens.
- Qwen2-VL's (``qwen2vl_merger``) for Qwen2.5-0.5B rewritten as a ``qwen2vl`` model (``QWEN2VL_VISION``):
  images at their own size (rounded to 28 pixels), two patch-embedding convolutions added, no class
  token and no position embeddings (the ViT rotates by the patch's row and column), 2 x 2 patches
  merged into one MLP input; the text model places each image on a grid of M-RoPE positions
  (docs/ENGINE.md, "Vision"). The text model is the real Qwen weights, its keys renamed to
  ``qwen2vl.*`` and given ``rope.dimension_sections``: on text, where the sections' positions are all
  equal, M-RoPE rotates as Qwen2's RoPE does, so it still writes sensible text.

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
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from studiolo.models.defaults import GEMMA3, QWEN05, SMOLLM2, PyPIModel, target_path
from tests.gguf_rewrite import cached_test_model, rewrite_gguf

FORMAT_VERSION = 2  # bump when the tensors or keys below change: the cached files are named after it
IMAGE_SIZE = 112
PATCH_SIZE = 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 64: one token per patch, the class token is dropped
GEMMA_IMAGE_SIZE = 224  # 16 x 16 patches ...
GEMMA_POOL = 2  # ... averaged 2 x 2: 64 tokens too
SEED = 20
QWEN2VL_SECTIONS = [8, 12, 12, 0]  # Qwen2-VL's [16, 24, 24] scaled to the 0.5B's head (64 wide: 32 pairs)
QWEN2VL_MERGE = 2  # 2 x 2 patches into one image token


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
    projector_type: str = "mlp"  # or "gemma3", "qwen2vl_merger"
    vit: VitShape = TINY_VIT
    architecture: str | None = None  # the text model rewritten as this architecture (None: as it is)

    @property
    def projector_name(self) -> str:
        return f"mmproj-{self.key.split('/')[-1]}.gguf"


SMOLLM_VISION = VisionModel("studiolo-test/smollm2-135m-vision", SMOLLM2, 576)
QWEN_VISION = VisionModel("studiolo-test/qwen2.5-0.5b-vision", QWEN05, 896)
GEMMA_VISION = VisionModel("studiolo-test/gemma-3-270m-vision", GEMMA3, 640, "gemma3")
VISION_MODELS = (SMOLLM_VISION, QWEN_VISION, GEMMA_VISION)
# M-RoPE: Qwen2.5-0.5B as a qwen2vl model with a Qwen2-VL projector (not in VISION_MODELS: its own tests)
QWEN2VL_VISION = VisionModel("studiolo-test/qwen2vl-0.5b-vision", QWEN05, 896, "qwen2vl_merger",
                             architecture="qwen2vl")


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
    elif projector_type == "qwen2vl_merger":  # images keep their size; this is only the warm-up's
        writer.add_uint32("clip.vision.image_size", vit.image_size)
        writer.add_uint32("clip.vision.spatial_merge_size", QWEN2VL_MERGE)
    else:
        writer.add_uint32("clip.vision.image_size", vit.image_size)
    writer.add_uint32("clip.vision.patch_size", vit.patch_size)
    writer.add_uint32("clip.vision.embedding_length", vit.width)
    writer.add_uint32("clip.vision.feed_forward_length", vit.ffn)
    writer.add_uint32("clip.vision.projection_dim", n_embd)
    writer.add_uint32("clip.vision.attention.head_count", vit.heads)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_uint32("clip.vision.block_count", vit.blocks)
    if projector_type in ("gemma3", "qwen2vl_merger"):  # SigLIP's normalization (any will do)
        writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
        writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    else:  # CLIP's own normalization constants, as LLaVA's projector files carry them
        writer.add_array("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])
        writer.add_array("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])


def _vit(rng: np.random.Generator, vit: VitShape, n_patches: int, class_token: bool) -> dict[str, np.ndarray]:
    """The vision transformer's tensors (numpy shapes: ggml's dimensions reversed; matrices in F16)."""
    width, patch = vit.width, vit.patch_size
    tensors = {"v.patch_embd.weight": _random(rng, (width, 3, patch, patch), 0.05, np.float16)}
    if class_token:
        tensors["v.class_embd"] = _random(rng, (width,), 0.1)
    # F32: SigLIP adds it to the patches as it is (LLaVA picks rows of it first)
    tensors["v.position_embd.weight"] = _random(rng, (n_patches + int(class_token), width), 0.1)
    tensors.update(_blocks(rng, vit))
    return tensors


def _blocks(rng: np.random.Generator, vit: VitShape) -> dict[str, np.ndarray]:
    """The transformer blocks' tensors (drawn after the patch embeddings: the files' bytes depend on it)."""
    f16 = np.float16
    width, ffn = vit.width, vit.ffn
    tensors = {}
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
    if projector_type == "qwen2vl_merger":
        return _qwen2vl_tensors(rng, n_embd, vit)
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


def _qwen2vl_tensors(rng: np.random.Generator, n_embd: int, vit: VitShape) -> dict[str, np.ndarray]:
    """Qwen2-VL's ViT and merger, as clip.cpp's qwen2vl graph reads them: two patch convolutions (one
    per video frame of a pair; a still image goes through both, summed), no bias, class token or
    position embeddings; after the blocks a layer norm, then each 2 x 2 patches' rows side by side
    (4 x width) into a GELU MLP out to the text model's embeddings."""
    width, patch, hidden = vit.width, vit.patch_size, vit.mlp_hidden
    tensors = {"v.patch_embd.weight": _random(rng, (width, 3, patch, patch), 0.05, np.float16),
               "v.patch_embd.weight.1": _random(rng, (width, 3, patch, patch), 0.05, np.float16)}
    tensors.update(_blocks(rng, vit))
    tensors["v.post_ln.weight"] = np.ones(width, np.float32)  # the merger's ln_q
    tensors["v.post_ln.bias"] = np.zeros(width, np.float32)
    merged = width * QWEN2VL_MERGE**2
    tensors["mm.0.weight"] = _random(rng, (hidden, merged), merged ** -0.5, np.float16)
    tensors["mm.0.bias"] = _random(rng, (hidden,), 0.02)
    tensors["mm.2.weight"] = _random(rng, (n_embd, hidden), 0.05 * hidden ** -0.5, np.float16)
    tensors["mm.2.bias"] = _random(rng, (n_embd,), 0.01)
    return tensors


def write_projector(dest: Path, n_embd: int, seed: int = SEED, projector_type: str = "mlp",
                    vit: VitShape = TINY_VIT) -> Path:
    """Write a random-weight projector for a text model of ``n_embd`` to ``dest``."""
    writer = gguf.GGUFWriter(dest, "clip")
    _add_keys(writer, n_embd, projector_type, vit)
    for name, data in _tensors(n_embd, seed, projector_type, vit).items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def projector_file(model: VisionModel, seed: int = SEED) -> Path:
    """The model's projector, written the first time it is asked for."""
    shape = f"{FORMAT_VERSION}\n{model.projector_type}\n{model.n_embd}\n{seed}"
    shape += "" if model.vit == TINY_VIT else f"\n{model.vit}"  # the tests' files keep their names
    digest = hashlib.sha256(shape.encode()).hexdigest()[:12]
    return cached_test_model(f"mmproj-{model.projector_type}-{model.n_embd}-{digest}.gguf",
                           lambda path: write_projector(path, model.n_embd, seed, model.projector_type, model.vit))


def rewrite_architecture(source: Path, dest: Path, architecture: str) -> Path:
    """``source`` (a qwen2 model) as an ``architecture`` model: its ``qwen2.*`` keys renamed, and the
    M-RoPE sections a qwen2vl model must have."""
    reader = gguf.GGUFReader(source)
    old = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    renamed = [field for field in reader.fields.values() if field.name.startswith(f"{old}.")]

    def add(writer: gguf.GGUFWriter) -> None:
        for field in renamed:
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(architecture + field.name[len(old):], field.contents(), value_type,
                                 sub_type=sub_type)
        writer.add_array(f"{architecture}.rope.dimension_sections", QWEN2VL_SECTIONS)

    rewrite_gguf(reader, gguf.GGUFWriter(dest, architecture), skip=tuple(f.name for f in renamed), add=add)
    return dest


def text_model_file(model: VisionModel) -> Path:
    """The vision model's text model: the real file, or its rewritten copy (written the first time)."""
    source = target_path(model.source)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing; run `make setup`")
    if model.architecture is None:
        return source
    shape = f"{model.source.sha256}\n{model.architecture}\n{QWEN2VL_SECTIONS}"
    digest = hashlib.sha256(shape.encode()).hexdigest()[:16]
    return cached_test_model(f"{model.key.replace('/', '--')}-{digest}.gguf",
                           lambda path: rewrite_architecture(source, path, model.architecture))


def link_vision_models(home: Path, models: tuple[VisionModel, ...] = VISION_MODELS) -> Path:
    """Link each vision model (the real text model and its projector) into the test home ``home``."""
    for model in models:
        source = text_model_file(model)
        folder = home / "models" / model.key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / source.name).symlink_to(source)
        (folder / model.projector_name).symlink_to(projector_file(model))
    return home
