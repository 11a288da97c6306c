"""The engine's reasoning gate for a chat: its ``ReasoningSpec``, from the model's reasoning
format (chat/reasoning.py), the rendered prompt and the request's budget.

- ``think`` formats: the markers are ``<think>`` and ``</think>``; the output starts where the
  prompt leaves it (``starting_phase``); the cut is ``budget_cut_text``.
- Harmony (gpt-oss): the output opens with a channel header (the gate writes the analysis one
  itself when a budget or constraint waits); everything before the ``final`` channel's
  ``<|channel|>final<|message|>`` is reasoning (analysis, and commentary calls in between); the
  cut is the end of the message and the final channel's header. Harmony's forced tool calls are a
  grammar over the whole output (the calls are in the commentary channel, not the answer), so with
  one the constraint does not wait and no budget applies (there would be no room for a cut the
  call's grammar does not allow).
"""

from __future__ import annotations

from studiolo.chat.reasoning import (
    ANSWER,
    REASONING,
    UNDECIDED,
    ReasoningFormat,
    budget_cut_text,
    starting_phase,
)
from studiolo.domain.errors import InvalidRequest
from studiolo.engine.llama import LlamaModel
from studiolo.engine.reasoning_gate import ReasoningSpec

HARMONY_FINAL = "<|channel|>final<|message|>"
HARMONY_ANALYSIS = "<|channel|>analysis<|message|>"


def _harmony_start(prompt_text: str) -> str:
    """Where a Harmony output starts: in the answer after the final channel's header, in the
    reasoning inside an open message, else undecided: at ``<|start|>assistant`` the model writes a
    channel header, and the gate writes the analysis one itself when a budget or constraint waits
    (a model that wrote none would leave its reasoning outside any message, lost to the parser)."""
    if prompt_text.endswith(HARMONY_FINAL):
        return ANSWER
    return REASONING if prompt_text.endswith("<|message|>") else UNDECIDED


def reasoning_spec(model: LlamaModel, fmt: ReasoningFormat, prompt_text: str, budget: int | None,
                   constrained: bool) -> ReasoningSpec | None:
    """The gate of a chat's sequences (None: the model does not reason, or this prompt switched
    its reasoning off). ``constrained``: the request's constraint applies to the answer only."""
    if budget is not None and budget < 0:
        raise InvalidRequest(f"reasoning_budget must be 0 or more, got {budget}", "reasoning_budget")
    if not fmt.reasons:
        return None
    if fmt.name == "harmony":
        phase, opener, close = _harmony_start(prompt_text), HARMONY_ANALYSIS, HARMONY_FINAL
    else:
        phase = starting_phase(fmt, prompt_text)
        opener, close = fmt.open, fmt.close
    if phase == ANSWER:
        return None  # thinking is off: nothing to gate, nothing to count

    def tokens(text: str) -> tuple[int, ...]:
        return tuple(model.tokenize(text, add_special=False, parse_special=True))

    return ReasoningSpec(
        open=opener.encode(), close=close.encode(), phase=phase, budget=budget,
        cut=tokens(budget_cut_text(fmt, "")), cut_mid_line=tokens(budget_cut_text(fmt, "…")),
        open_tokens=tokens(opener if fmt.name == "harmony" else f"{opener}\n") if opener else (),
        constraint_waits=constrained,
    )


def chat_reasoning_spec(model: LlamaModel, fmt: ReasoningFormat, prompt_text: str, budget: int | None,
                        constrained: bool, tools_constrained: bool) -> ReasoningSpec | None:
    """``reasoning_spec`` for a chat whose constraint (if any) came from its forced tool calls
    (``tools_constrained``) or from its structured output."""
    if fmt.name == "harmony" and tools_constrained:  # the call grammar covers the whole output
        if budget is not None:
            raise InvalidRequest("reasoning_budget cannot be combined with tools on a Harmony (gpt-oss) model: "
                                 "its calls' grammar covers the reasoning too, and a cut would break it",
                                 "reasoning_budget")
        constrained = False
    with model.vocabulary_lock:  # the model must not close while its vocabulary tokenizes
        model.require_open()
        return reasoning_spec(model, fmt, prompt_text, budget, constrained)
