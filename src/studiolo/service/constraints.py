"""A request's structured-output constraint, built and checked: the wire fields that ask for one
(OpenAI's ``response_format``, BladeLLM's ``guided_*``, vLLM's ``structured_outputs``, Responses'
``text.format``) are read by their API family, which hands each asked constraint here.

A request may carry one constraint: two (``guided_json`` with a ``json_schema`` response format,
say) is an InvalidRequest naming the second, as vLLM refuses it, rather than a silent pick. A
whitespace pattern applies to JSON output only. Every problem names the request's field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from studiolo.domain.errors import InvalidRequest
from studiolo.engine.constraints import CompiledConstraint, ConstraintSpec, InvalidConstraint, compiler_for, grammar_of
from studiolo.engine.constraints import validate as validate_constraint
from studiolo.engine.llama import LlamaModel
from studiolo.service.types import GenerationOptions

# What a request may ask the output to match, and how each becomes a spec; ``whitespace`` (the
# pattern between JSON tokens) applies to the JSON kinds only, and a false json_object asks nothing.
_SPEC_OF: dict[str, Callable[[Any, str | None], ConstraintSpec | None]] = {
    "json": lambda schema, whitespace: ConstraintSpec.json_schema(schema, whitespace),
    "json_object": lambda wanted, whitespace: ConstraintSpec.json_object(whitespace) if wanted else None,
    "regex": lambda pattern, _: ConstraintSpec.regex(pattern),
    "choice": lambda choices, _: ConstraintSpec.choice(choices),
    "grammar": lambda text, _: ConstraintSpec.grammar(text),
}
KINDS = tuple(_SPEC_OF)
_JSON_KINDS = ("json_schema", "json_object")

# What the service takes as a request's output constraint: the engine's spec (the key its grammar
# cache compiles by; its builders bound what reaches llguidance's native code, an engine concern),
# built only here, from what an API family read off the wire.
Constraint = ConstraintSpec
AskedConstraint = tuple[Constraint, str]  # a built spec and the field that asked for it


def spec_of(kind: str, definition: Any, whitespace: str | None, param: str) -> Constraint | None:
    """The spec ``param`` asks for (a schema, pattern, choices or grammar text as ``definition``), or
    None when it asks for nothing (json_object false); InvalidRequest naming ``param`` if it is bad."""
    try:
        return _SPEC_OF[kind](definition, whitespace)
    except InvalidConstraint as exc:
        raise InvalidRequest(str(exc), param) from None


def check_whitespace_pattern(pattern: str | None, param: str) -> None:
    """A bad pattern is its own field's error, not the constraint's it would be used in."""
    if pattern is not None:
        try:
            grammar_of(ConstraintSpec.json_object(pattern))
        except InvalidConstraint as exc:
            raise InvalidRequest(str(exc), param) from None


def the_one_constraint(asked: Sequence[AskedConstraint], whitespace_params: Sequence[str]) -> AskedConstraint | None:
    """The request's one constraint, or None; ``whitespace_params`` are the whitespace-pattern fields
    it gave, which need a JSON constraint to apply to."""
    if len(asked) > 1:
        (_, first), (_, second) = asked[0], asked[1]
        raise InvalidRequest(f"'{second}' and '{first}' both constrain the output; send only one of them", second)
    is_json = bool(asked) and asked[0][0].kind in _JSON_KINDS
    if whitespace_params and not is_json:
        unused = whitespace_params[0]
        raise InvalidRequest(f"'{unused}' applies to JSON output only (a JSON schema or json_object)", unused)
    return asked[0] if asked else None


async def check_constraint(options: GenerationOptions) -> None:
    """Refuse a schema, regex or grammar that cannot compile, naming the field it came from;
    compiling is never done on the event loop (bounded, it can still take a second)."""
    if options.constraint is not None:
        try:
            await asyncio.to_thread(validate_constraint, options.constraint)
        except InvalidConstraint as exc:
            raise InvalidRequest(str(exc), options.constraint_param) from None


async def compiled_constraint(model: LlamaModel, options: GenerationOptions) -> CompiledConstraint | None:
    """The options' constraint compiled for the model: cached, else compiled off the event loop
    (the first constraint on a model also builds llguidance's view of its vocabulary: ~2 s on
    a 262k vocabulary)."""
    spec = options.constraint
    if spec is None:
        return None
    compiler = compiler_for(model)
    compiled = compiler.cached(spec)
    if compiled is not None:
        return compiled
    try:
        return await asyncio.to_thread(compiler.compile, spec)
    except InvalidConstraint as exc:  # e.g. a grammar naming a special token the model lacks
        raise InvalidRequest(str(exc), options.constraint_param) from None
