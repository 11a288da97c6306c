"""Constrained decoding: one llguidance matcher per sequence masks that sequence's logits.

Every kind of constraint (JSON schema, any JSON object, regex, choice, Lark or GBNF grammar)
becomes an llguidance grammar string, is validated before any token is generated, and is
compiled once per model and definition (``ConstraintCompiler``, an LRU). Each sequence then gets
its own ``ConstraintState``: before sampling, ``apply`` sets every token the grammar forbids to
-inf in the logits buffer, in place; after sampling, ``accept`` advances the matcher.

End of generation: the matcher's EOS set is every end-of-generation token of the model (not just
its EOS), so the mask allows the model to end exactly where the grammar may end and nowhere else.
Once the grammar cannot be extended at all, ``finished`` is true and only EOS is allowed: the
engine should stop the sequence there rather than spend a step sampling that EOS.

Measured on this machine (2 cores, llguidance 1.9.1; greedy decoding loop in-process, a JSON
schema of 5 fields with an enum, a nested object and an array; several runs, ranges):

| | SmolLM2 135M (49k vocab) | Gemma 3 270M (262k vocab) |
| --- | --- | --- |
| LLTokenizer build (once per model, cached) | 0.24 s | 1.6-1.9 s |
| compile (validate + matcher), new schema | 0.9-1.3 ms | 0.9-1.3 ms |
| compile, cache hit / new sequence state | 3-5 µs / 70-90 µs | 2-5 µs / 150-210 µs |
| ``compute_mask`` per token, mean (p90) | 0.14 ms (0.2) | 0.15-0.17 ms (0.23-0.27) |
| ``apply`` per token, mean (p90) | 0.12 ms (0.15-0.17) | 0.16-0.2 ms (0.2-0.24) |
| llguidance.numpy's own apply, for comparison | 0.2 ms | 2 ms |
| constrained / free tokens per second | 0.99-1.09 | 0.95-0.97 |

``apply`` is not llguidance.numpy's helper, which expands the bitmask 32-fold and takes 2 ms on
Gemma. JSON masks are either sparse (structure: a few hundred tokens allowed) or nearly full
(string content: all but a few thousand), so the sparse case gathers the allowed logits, fills
the buffer with -inf and scatters them back, and the dense case does one vectorised copy
(engine/masks.py).

Computing the next mask while the model decodes: ``compute_mask`` releases the GIL, so it may run
on another thread during ``llama_decode``, and ``apply`` then uses the mask already computed. On
this 2-core machine that was slower (SmolLM2: 113 tok/s against 134 computing the mask inline),
because the extra thread competes with llama.cpp's OpenMP workers (see docs/ENGINE.md).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import llguidance.numpy as llg_numpy
import numpy as np
from llguidance import (
    LLMatcher,
    LLParserLimits,
    LLTokenizer,
    grammar_from,
)
from llguidance.llamacpp import lltokenizer_from_vocab

from studiolo.engine.byte_vocabulary import byte_tokenizer as _byte_tokenizer
from studiolo.engine.constraint_limits import InvalidConstraint
from studiolo.engine.constraint_spec import JSON_KINDS, ConstraintSpec
from studiolo.engine.gbnf import gbnf_to_lark
from studiolo.engine.grammar_cache import GRAMMAR_CACHE
from studiolo.engine.llama import LlamaModel
from studiolo.engine.masks import forbidden_log_mass, mask_logits
from studiolo.engine.process_memory import allocated_bytes

if TYPE_CHECKING:  # declared in llguidance's type stubs only
    from llguidance._lib import JsonCompileOptions

log = logging.getLogger(__name__)


# Error messages go back to API clients: without this llguidance appends the parser's state
# and the whole grammar to them.
_LIMITS = LLParserLimits(verbose_errors=False)
_QUIET = 0  # llguidance log level: problems surface through is_error / get_error instead


class ConstraintError(RuntimeError):
    """The matcher refused a token or a rollback; the sequence can no longer follow its grammar."""


# Between JSON tokens: nothing, one space, or a line break and up to 20 characters of indentation,
# as llama.cpp's JSON grammars allow. llguidance's default (any run of whitespace) lets a small
# model fill its whole budget with spaces, output that is valid but never ends.
JSON_WHITESPACE = r"(?: |\n[ \t]{0,20})?"


def grammar_of(spec: ConstraintSpec, tokenizer: LLTokenizer | None = None) -> str:
    """The spec as an llguidance grammar, validated; raises InvalidConstraint saying what is wrong.

    Without a tokenizer this checks everything but the grammar's references to special tokens,
    so an API can reject a bad definition before the model is even loaded.
    """
    grammar = _raw_grammar(spec)
    try:
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, tokenizer, limits=_LIMITS)
    except (ValueError, RuntimeError) as error:  # a panic in llguidance, reported as an exception
        is_error, messages = True, [str(error)]
    if is_error:
        raise InvalidConstraint(f"invalid {_NAMES[spec.kind]}: {_clean(spec.kind, messages[0])}")
    for message in messages:
        log.info("%s: %s", _NAMES[spec.kind], message)
    return grammar


def validate(spec: ConstraintSpec) -> None:
    """``grammar_of(spec)`` without a model's tokenizer, remembered: repeated requests check once.

    A definition that cannot name a model's tokens (all but grammars) also gets its first mask
    computed over single bytes: one that can never start (``{"$ref": "#"}``) is refused here,
    before any model loads. Any text starts with some byte, so this refuses nothing the model's
    own tokens could start; grammars are checked at compile, with the model's tokenizer.
    """
    key = ("valid", spec)
    if GRAMMAR_CACHE.get(key) is not None:
        return
    grammar = grammar_of(spec)
    if spec.kind in _BYTE_CHECKED:
        tokenizer = _byte_tokenizer()
        _check_first_mask(spec, LLMatcher(tokenizer, grammar, log_level=_QUIET, limits=_LIMITS), tokenizer)
    GRAMMAR_CACHE.put(key, True, _definition_size(spec))


def _definition_size(spec: ConstraintSpec) -> int:
    """What a spec kept as a cache key holds: its definition's text."""
    definition = spec.definition
    if isinstance(definition, tuple):
        return sum(len(choice) + 64 for choice in definition)
    return len(definition or "") + len(spec.whitespace_pattern or "")


_BYTE_CHECKED = JSON_KINDS | {"regex", "choice"}


_NAMES = {
    "json_schema": "JSON schema",
    "json_object": "JSON object constraint",
    "regex": "regex",
    "choice": "choice list",
    "lark": "Lark grammar",
    "gbnf": "GBNF grammar",
}


# A regex becomes the one-line Lark grammar `start: /.../`, so llguidance reports its errors with
# a Lark position and source excerpt the client never wrote; these strip them.
_LARK_POSITION = re.compile(r'^(at )?\d+\(\d+\): (invalid regex ".*?" \(in regex\): )?', re.DOTALL)
_LARK_EXCERPT_LINE = re.compile(r"^\s+\d+ \| ")


def _clean(kind: str, message: str) -> str:
    """llguidance's message, minus its debugging residue."""
    message = message.replace("<non-verbose/>", "").strip()
    if kind not in ("regex", "gbnf", "choice"):  # these reach llguidance as Lark the client never wrote
        return message
    lines = _LARK_POSITION.sub("", message).splitlines()
    excerpt = next((i for i, line in enumerate(lines) if _LARK_EXCERPT_LINE.match(line)), len(lines))
    return "\n".join(lines[:excerpt]).strip()


def _raw_grammar(spec: ConstraintSpec) -> str:
    """llguidance's grammar for the spec, not yet validated (llguidance validates separately)."""
    kind = spec.kind
    if kind in JSON_KINDS:
        schema: str | dict[str, Any] = cast(str, spec.definition) if kind == "json_schema" else {"type": "object"}
        whitespace = JSON_WHITESPACE if spec.whitespace_pattern is None else spec.whitespace_pattern
        options: JsonCompileOptions = {"whitespace_pattern": whitespace}
        try:
            return LLMatcher.grammar_from_json_schema(schema, overrides=options)
        except ValueError as error:
            raise InvalidConstraint(f"invalid JSON schema: {error}") from None
    if kind == "choice":  # as JSON text, the form llguidance documents (it reads it back as the list)
        return grammar_from("choice", json.dumps(list(cast(tuple[str, ...], spec.definition))))
    text = cast(str, spec.definition)  # the other kinds' definitions are text (ConstraintSpec checks)
    if kind == "regex":
        return LLMatcher.grammar_from_regex(text)
    if kind == "lark":
        return LLMatcher.grammar_from_lark(text)
    try:
        lark = gbnf_to_lark(text)
    except RecursionError:
        raise InvalidConstraint("invalid GBNF grammar: it nests too deeply") from None
    except Exception as error:  # noqa: BLE001 - llguidance's GBNF parser raises bare Exceptions on bad input
        raise InvalidConstraint(f"invalid GBNF grammar: {error}") from None
    return LLMatcher.grammar_from_lark(lark)


# --- per model: tokenizer and compile cache ----------------------------------------------------


def build_tokenizer(model: LlamaModel) -> LLTokenizer:
    """llguidance's view of the model's vocabulary (slow on a large vocabulary: cache it).

    EOS is every end-of-generation token (SmolLM2: <|endoftext|>, <|im_end|>, ...; Gemma 3:
    <eos>, <end_of_turn>, ...): whichever the model ends with, the grammar decides when it may.
    """
    eog = [token for token in range(model.n_vocab) if model.is_eog(token)]
    # The builder calls llama-cpp-python's deprecated llama_token_get_attr once per token, and
    # each call issues a DeprecationWarning: 262k of them cost Gemma's build 0.2-0.4 s (and
    # minutes under pytest, which records them). Filters are process-wide: one build at a time.
    with _build_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # _vocab: the llama_vocab pointer llguidance reads pieces and attributes from
        return lltokenizer_from_vocab(model._vocab, n_vocab=model.n_vocab, eos_token=eog or None)


_build_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class CompiledConstraint:
    """A validated grammar bound to one model's tokenizer; starts any number of sequences."""

    spec: ConstraintSpec
    grammar: str
    tokenizer: LLTokenizer
    _template: LLMatcher  # never advanced: each sequence gets a deep copy

    def new_state(self) -> ConstraintState:
        return ConstraintState(self._template.deep_copy(), self.tokenizer, end_outside=self.spec.end_outside)


class ConstraintCompiler:
    """One model's LLTokenizer (built on first use) and its compiled constraints, kept in the
    process's byte-bounded ``GRAMMAR_CACHE`` under ``(compiler, spec)``.

    Thread-safe: compiles run on worker threads, while the compute thread only uses the results.
    """

    def __init__(self, model: LlamaModel, tokenizer: LLTokenizer | None = None):
        self.model = model
        self._tokenizer = tokenizer  # one already built for this model, or None to build it
        self.tokenizer_bytes = 0  # what building it took from the heap (Gemma 3's 262k tokens: ~110 MiB)

    @property
    def tokenizer(self) -> LLTokenizer:
        """Built once, on first use; call it ahead (off the event loop) to pay the cost early."""
        if self._tokenizer is None:
            with self.model.vocabulary_lock:  # the model must not close while this reads it
                self.model.require_open()
                if self._tokenizer is None:
                    before = allocated_bytes()
                    self._tokenizer = build_tokenizer(self.model)
                    self.tokenizer_bytes = allocated_bytes() - before
        return self._tokenizer

    def cached(self, spec: ConstraintSpec) -> CompiledConstraint | None:
        """The compiled constraint if it is in the cache (cheap: no tokenizer, no compiling)."""
        return GRAMMAR_CACHE.get((self, spec))

    def compile(self, spec: ConstraintSpec) -> CompiledConstraint:
        """The compiled constraint for spec: from the cache, or validated and compiled now."""
        compiled = self.cached(spec)
        if compiled is not None:
            return compiled
        tokenizer = self.tokenizer  # built (once) outside the measure below
        with self.model.vocabulary_lock:  # not the cache's lock: a slow grammar must not block hits
            self.model.require_open()
            before = allocated_bytes()
            compiled = self._compile(spec, tokenizer)
            grown = allocated_bytes() - before
        # at least 32 bytes of compiled state per byte of grammar (measured: 20-120) and a bitmask
        size = max(grown, 32 * len(compiled.grammar) + tokenizer.vocab_size // 8)
        return GRAMMAR_CACHE.put((self, spec), compiled, size)  # a racing thread's copy wins

    def _compile(self, spec: ConstraintSpec, tokenizer: LLTokenizer) -> CompiledConstraint:
        grammar = grammar_of(spec, tokenizer)
        template = LLMatcher(tokenizer, grammar, log_level=_QUIET, limits=_LIMITS)
        if template.is_error():  # validation passed, so only resource limits land here
            raise InvalidConstraint(f"invalid {_NAMES[spec.kind]}: {_clean(spec.kind, template.get_error())}")
        _check_first_mask(spec, template, tokenizer)
        return CompiledConstraint(spec, grammar, tokenizer, template)

    def __len__(self) -> int:
        """How many compiled constraints of this model the cache holds."""
        return GRAMMAR_CACHE.count_where(lambda key: key[0] is self)


def _check_first_mask(spec: ConstraintSpec, template: LLMatcher, tokenizer: LLTokenizer) -> None:
    """Refuse a grammar whose first token mask fails or allows nothing (a rule defined only by
    itself, ``$ref: "#"``, an empty character class, a lexer past llguidance's limits): found
    here, it is the request's 400; found in the engine, it would be that sequence's failure."""
    probe = template.deep_copy()
    bitmask = llg_numpy.allocate_token_bitmask(1, tokenizer.vocab_size)
    llg_numpy.fill_next_token_bitmask(probe, bitmask)
    error = _clean(spec.kind, probe.get_error()) if probe.is_error() else None
    if (error is None and not bitmask.any()) or (error is not None and "NoExtensionBias" in error):
        error = "it matches no text at all (no token can start it)"  # llguidance says "NoExtensionBias"
    if error is not None:
        raise InvalidConstraint(f"invalid {_NAMES[spec.kind]}: {error}")


_compilers: weakref.WeakKeyDictionary[LlamaModel, ConstraintCompiler] = weakref.WeakKeyDictionary()
_compilers_lock = threading.Lock()


def compiler_for(model: LlamaModel) -> ConstraintCompiler:
    """The model's compiler, shared by everyone holding the model."""
    with _compilers_lock:
        compiler = _compilers.get(model)
        if compiler is None:
            compiler = _compilers[model] = ConstraintCompiler(model)
        return compiler


def tokenizer_bytes(model: LlamaModel) -> int:
    """Memory the model's llguidance tokenizer holds (0 until a constraint first needs it)."""
    with _compilers_lock:
        compiler = _compilers.get(model)
    return compiler.tokenizer_bytes if compiler is not None else 0


def forget(model: LlamaModel) -> None:
    """Drop the model's tokenizer and grammars; call before ``model.close()``.

    The LLTokenizer keeps the model's llama_vocab pointer and tokenizes through it, so it must
    not outlive the model.
    """
    with _compilers_lock:
        compiler = _compilers.pop(model, None)
    if compiler is not None:
        GRAMMAR_CACHE.discard_where(lambda key: key[0] is compiler)


# --- per sequence ------------------------------------------------------------------------------


class ConstraintState:
    """One sequence's matcher, its next-token bitmask, and the tokens it has accepted.

    Call ``apply`` on the logits before sampling and ``accept`` with the sampled token after;
    ``rollback`` undoes accepted tokens (speculative decoding's rejected drafts).
    """

    def __init__(self, matcher: LLMatcher, tokenizer: LLTokenizer, *, end_outside: bool = False):
        self._matcher = matcher
        self._end_outside = end_outside
        self._eos = frozenset(tokenizer.eos_tokens)
        self._eos_ids = np.fromiter(self._eos, dtype=np.int64)
        self._bitmask = llg_numpy.allocate_token_bitmask(1, tokenizer.vocab_size)
        self._mask_ready = False
        self._consumed = 0  # how many tokens rollback may undo
        self._check()

    @property
    def eos_tokens(self) -> frozenset[int]:
        return self._eos

    @property
    def finished(self) -> bool:
        """The grammar is complete and cannot be extended: only EOS is allowed; stop here."""
        return self._matcher.is_stopped()

    @property
    def can_stop(self) -> bool:
        """The output so far is a complete match: EOS is allowed now."""
        return self._matcher.is_accepting()

    @property
    def consumed(self) -> int:
        return self._consumed

    def compute_mask(self) -> None:
        """Compute the next token's mask (releases the GIL; may run while the model decodes)."""
        llg_numpy.fill_next_token_bitmask(self._matcher, self._bitmask)
        self._check()
        self._mask_ready = True

    def apply(self, logits: np.ndarray, *, allow_end: bool = True) -> None:
        """Set every token the grammar forbids next to -inf, in place (float32, one row).

        ``allow_end=False`` (a request with ``ignore_eos``) also forbids EOS wherever the grammar
        could go on, so the output ends only where the grammar cannot be extended.

        With ``end_outside``, where the grammar may end but could go on, the probability the model
        gives to tokens the grammar forbids goes to its end token, not, through the mask's
        renormalisation, to whatever the grammar allows. After a tool call the model that meant to
        write text is done calling; spread over what is allowed, that text's probability made
        small models open another call, again and again.
        """
        if not self._mask_ready:
            self.compute_mask()
        fold = allow_end and self._end_outside and self._matcher.is_accepting() and not self._matcher.is_stopped()
        removed = forbidden_log_mass(logits, self._bitmask[0]) if fold else -np.inf
        mask_logits(logits, self._bitmask[0])
        if removed > -np.inf:  # to the end token the model likes best
            end = self._eos_ids[np.argmax(logits[self._eos_ids])]
            logits[end] = np.logaddexp(logits[end], removed)
        if not allow_end and not self._matcher.is_stopped():
            logits[self._eos_ids] = -np.inf

    def accept(self, token: int) -> None:
        """Advance past a sampled token; raises ConstraintError if the grammar forbids it."""
        if token in self._eos and self._matcher.is_stopped():
            return  # the grammar already ended; llguidance records nothing for this EOS either
        self._mask_ready = False
        if not self._matcher.consume_token(token):
            raise ConstraintError(self._error())
        self._consumed += 1

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of ``tokens`` (draft tokens, say) the grammar would accept, in order."""
        return self._matcher.validate_tokens(tokens)

    def rollback(self, n: int) -> None:
        """Undo the last n accepted tokens."""
        if not 0 <= n <= self._consumed:
            raise ValueError(f"cannot roll back {n} tokens: {self._consumed} were accepted")
        if n == 0:
            return
        self._mask_ready = False
        if not self._matcher.rollback(n):
            raise ConstraintError(self._error())
        self._consumed -= n

    def _check(self) -> None:
        if self._matcher.is_error():
            raise ConstraintError(self._error())

    def _error(self) -> str:
        return _clean("", self._matcher.get_error())
