"""Constrained decoding: JSON-schema-constrained tokens per second next to free decoding of the
same prompt, on the servers that take a schema, and how long a schema takes to compile.

The schema asks for at least 100 records, so the grammar cannot end before the token budget and
both runs generate exactly as many tokens; records mix structure (keys, punctuation: a sparse
mask) with free strings (a dense one), as real JSON output does.
"""

from __future__ import annotations

import statistics
import time

from bench.config import BenchConfig, Prompts
from studiolo.engine.constraints import ConstraintCompiler, ConstraintSpec, build_tokenizer
from studiolo.engine.llama import LlamaModel

SCHEMA = {
    "type": "array",
    "minItems": 100,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 32},
            "year": {"type": "integer", "minimum": 1000, "maximum": 2100},
            "field": {"enum": ["physics", "chemistry", "biology", "astronomy", "mathematics"]},
            "discoveries": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
        },
        "required": ["name", "year", "field", "discoveries"],
    },
}

# "A typical schema" for the compile-time figure: an object of a few typed fields, an enum, a
# nested object and an array, the shape of a tool call's arguments or an extraction result.
TYPICAL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "format": "email"},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    },
    "required": ["name", "age", "role"],
}

# How each server takes a JSON schema on /v1/completions; servers not listed are left out.
SCHEMA_FIELDS = {"studiolo": "guided_json", "llama-server": "json_schema"}


async def free_and_constrained(target, prompts: Prompts, config: BenchConfig) -> tuple[float, float]:
    """Decode rates of the same prompt, free and then constrained by SCHEMA."""
    prompt = prompts.story() + "\nThe scientists of this story, as a JSON list:\n"
    free = await target.generate(prompt, config.decode_tokens)
    constrained = await target.generate(prompt, config.decode_tokens, {SCHEMA_FIELDS[target.name]: SCHEMA})
    if not "".join(constrained.text.split()).startswith('[{"name":'):  # SCHEMA allows nothing else
        raise RuntimeError(f"{target.name} did not follow the schema: {constrained.text[:80]!r}")
    return free.decode_rate, constrained.decode_rate


def compile_times(model: LlamaModel, runs: int = 20) -> dict[str, float]:
    """The tokenizer build (once per model) and the median compile of TYPICAL_SCHEMA and SCHEMA,
    each compile on an empty cache, as a new schema's first request pays it."""
    started = time.perf_counter()
    tokenizer = build_tokenizer(model)
    figures = {"tokenizer_build_s": time.perf_counter() - started}
    for name, schema in (("typical", TYPICAL_SCHEMA), ("bench", SCHEMA)):
        samples = []
        for _ in range(runs):
            compiler = ConstraintCompiler(model, tokenizer=tokenizer)
            started = time.perf_counter()
            compiler.compile(ConstraintSpec.json_schema(schema)).new_state().compute_mask()
            samples.append(time.perf_counter() - started)
        figures[f"compile_{name}_ms"] = statistics.median(samples) * 1000
    return figures
