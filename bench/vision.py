"""Time to first token of an image prompt, studiolo next to llama-server on the same model and projector.

No vision model can be had offline, so the model is Qwen2.5-Coder-0.5B-Instruct with a projector of
random weights the size of CLIP ViT-B/16 (86M parameters, 224-pixel images, 196 image tokens, a LLaVA
MLP: tests/vision_projector.py's ``CLIP_B16``). Random weights cost what trained ones do: the figure
is the work of preprocessing, encoding and prefilling an image, not what the model makes of it.

Each request is a streamed greedy chat completion of one user message, a question and one JPEG
(llama.cpp's ``tools/mtmd/test-1.jpeg``, 640 x 488, redrawn per request so no server can reuse an
image's KV from the request before), end-of-generation tokens banned. Two figures per server:

- a new image: time to the first content token of a request whose image neither server has seen;
- the same image again: the identical request once more, where a server that keeps the image's
  KV (both do) prefills only the tail.

    python -m bench.vision [--repeats N] [--print-only]

`make bench` runs it after the other figures; run alone, it merges into bench/results/latest.json
(or, without one, replaces its own section of docs/BENCHMARKS.md) and rewrites the report.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from bench.config import BenchConfig
from bench.targets import HTTPTarget, _SSEReader

IMAGE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "test-1.jpeg"
QUESTION = "What is in this picture? Answer in one sentence."
MAX_TOKENS = 4
TARGET = 1.0  # issue 20: a new image's time to first token at least llama-server's


class _Chunks(_SSEReader):
    """Chat completion chunks: the content, and the usage's prompt tokens."""

    prompt_tokens = 0

    def _text(self, event: bytes) -> str | None:
        if not event.startswith(b"data: {"):
            return None
        payload = json.loads(event[6:])
        if payload.get("usage"):
            self.prompt_tokens = payload["usage"].get("prompt_tokens", 0)
        choices = payload.get("choices") or []
        return (choices[0].get("delta") or {}).get("content") if choices else None


def image_variants(count: int) -> list[str]:
    """``count`` data URLs of the test photo, each with a different band drawn on it (different bytes,
    so a different image to every cache), the same list for every server."""
    from PIL import Image, ImageDraw

    photo = Image.open(IMAGE).convert("RGB")
    urls = []
    for index in range(count):
        variant = photo.copy()
        top = (index * 37) % (variant.height - 40)
        ImageDraw.Draw(variant).rectangle((0, top, variant.width, top + 40), fill=(index * 53 % 256, 90, 160))
        buffer = io.BytesIO()
        variant.save(buffer, "JPEG", quality=90)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode())
    return urls


async def _ask(target: HTTPTarget, image_url: str, banned: dict[str, int]) -> tuple[float, int]:
    """Seconds to the first content token, and the prompt's tokens by the server's count."""
    content = [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": image_url}}]
    payload = {"model": target.model, "stream": True, "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": content}], "max_tokens": MAX_TOKENS,
               "temperature": 0, "top_k": 1, "seed": 7, "logit_bias": banned}
    timing, chunks = await target.stream("/v1/chat/completions", payload, _Chunks)
    if not timing.first:
        raise RuntimeError(f"{target.name}: no content token in {timing.text!r}")
    return timing.ttft, chunks.prompt_tokens


async def _measure(targets: list[HTTPTarget], images: list[str], banned: dict[str, int]) -> dict:
    """Both servers up at once and asked in turns, the order swapped each round, so a change in the
    machine's load (it is shared) falls on both alike."""
    for target in targets:
        await _ask(target, images[0], banned)  # loads the projector, allocates its buffers
    new: dict[str, list[float]] = {target.name: [] for target in targets}
    again: dict[str, list[float]] = {target.name: [] for target in targets}
    tokens: dict[str, int] = {}
    for round_, image in enumerate(images[1:]):
        for target in targets if round_ % 2 == 0 else targets[::-1]:
            seconds, tokens[target.name] = await _ask(target, image, banned)
            new[target.name].append(seconds)
            again[target.name].append((await _ask(target, image, banned))[0])
    results = {}
    for name in new:
        results[name] = figures = {"new_image_ttft_s": statistics.median(new[name]), "new_image_best_s": min(new[name]),
                                   "same_image_ttft_s": statistics.median(again[name]), "prompt_tokens": tokens[name]}
        print(f"    {name:13} new image {figures['new_image_ttft_s'] * 1000:7.0f} ms, same image again "
              f"{figures['same_image_ttft_s'] * 1000:6.0f} ms, {tokens[name]} prompt tokens", flush=True)
    return results


def measure(config: BenchConfig, logs: Path, repeats: int) -> dict:
    from tests.vision_projector import CLIP_B16, VisionModel, projector_file

    from bench.config import end_of_generation_tokens
    from bench.servers import llama_server, studiolo
    from studiolo.engine.llama import LlamaModel
    from studiolo.models.defaults import QWEN05, target_path

    vision = VisionModel("bench/qwen2.5-coder-0.5b-vision", QWEN05, 896, vit=CLIP_B16)
    model_file, projector = target_path(QWEN05), projector_file(vision)
    banned = {str(token): -100 for token in end_of_generation_tokens(LlamaModel(model_file))}
    images = image_variants(repeats + 1)
    with ExitStack() as stack:
        targets = []
        for name, server in (("studiolo", studiolo), ("llama-server", llama_server)):
            print(f"  starting {name} ...", flush=True)
            url, model_name = stack.enter_context(server(vision.key, model_file, config, logs, projector=projector))
            targets.append(HTTPTarget(name, url, model_name, []))
        print("  measuring in turns ...", flush=True)
        servers = asyncio.run(_measure(targets, images, banned))
    return {"model": QWEN05.key, "projector": "CLIP ViT-B/16 shape, random weights",
            "image_tokens": CLIP_B16.image_tokens, "repeats": repeats, "servers": servers,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def lines(results: dict | None) -> list[str]:
    """The report's section (bench/report.py)."""
    if not results:
        return ["## Images", "", "Not measured yet (`python -m bench.vision`).", ""]
    ours, theirs = results["servers"]["studiolo"], results["servers"]["llama-server"]
    out = ["## Images", "",
           f"{results['model']} with a projector of {results['projector']} ({results['image_tokens']} image tokens; "
           f"bench/vision.py, measured {results['date']}, median of {results['repeats']}): time to first token of a "
           "streamed chat completion asking about one 640 x 488 JPEG. Ratio: llama-server's time over studiolo's.", "",
           "| figure | studiolo | llama-server | vs llama-server |", "| --- | --- | --- | --- |"]
    for figure, label in (("new_image_ttft_s", "a new image, ms"), ("new_image_best_s", "a new image, best run, ms"),
                          ("same_image_ttft_s", "the same image again, ms")):
        out.append(f"| time to first token, {label} | {ours[figure] * 1000:,.0f} | {theirs[figure] * 1000:,.0f} "
                   f"| {theirs[figure] / ours[figure]:.2f} |")
    out += ["", f"Prompt tokens by each server's count: studiolo {ours['prompt_tokens']}, "
            f"llama-server {theirs['prompt_tokens']}.", ""]
    return out


def targets(results: dict | None) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the report's Targets table."""
    if not results:
        return []
    ours, theirs = results["servers"]["studiolo"], results["servers"]["llama-server"]
    ratio = theirs["new_image_ttft_s"] / ours["new_image_ttft_s"]
    return [(f"images: time to first token of a new image >= {TARGET}x llama-server's", f"{ratio:.2f}x",
             ratio >= TARGET)]


def main() -> None:
    from bench import report

    report.run_section_alone(__doc__, "vision", measure, lines, targets)


if __name__ == "__main__":
    main()
