"""A generation's events as the packets of LM Studio's ``predict`` channel.

- ``fragment {content, tokensCount, containsDrafted, reasoningType, isStructural}``: one per text
  delta (a delta is the text released after one token: ``tokensCount`` 1). A reasoning model's
  reasoning comes as ``reasoningType: "reasoning"`` between a ``reasoningStartTag`` fragment
  ``<think>`` and a ``reasoningEndTag`` fragment ``</think>`` that studiolo writes (``tokensCount``
  0, ``isStructural``): the SDKs join every fragment into the result's content, as LM Studio's show
  a reasoning model's reply.
- ``promptProcessingProgress {progress, details}`` after each chunk of prompt the engine takes in.
- ``toolCallGenerationStart {toolCallId}``, ``...NameReceived {name}``,
  ``...ArgumentFragmentGenerated {content}`` as a call is written, then ``toolCallGenerationEnd
  {toolCallRequest: {type: "function", id, name, arguments}}`` once it is whole (or
  ``toolCallGenerationFailed`` if its arguments are not a JSON object). A call's text is never a
  fragment: the SDKs put the requests, not the text, in the chat.
- ``success {stats, modelInfo, loadModelConfig, predictionConfig}`` at the end (handlers/predict.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from studiolo.api.lmstudio.models import STOP_REASONS  # the REST API's stats say the same
from studiolo.service.generation import Generation
from studiolo.service.types import Finished, GenerationEvent, PromptProgress, ReasoningDelta, TextDelta, ToolCallDelta

REASONING_OPEN, REASONING_CLOSE = "<think>", "</think>"


def fragment(content: str, reasoning_type: str = "none", tokens: int = 1, structural: bool = False) -> dict[str, Any]:
    return {"type": "fragment", "fragment": {"content": content, "tokensCount": tokens, "containsDrafted": False,
                                             "reasoningType": reasoning_type, "isStructural": structural}}


@dataclass
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass
class PacketWriter:
    """Turns one choice's events into packets, keeping what spans events: whether the reasoning is
    open, the call being written, how the generation ended."""

    prompt_tokens: int
    reasoning_open: bool = False
    call: _Call | None = None
    finished: Finished | None = None

    def packets(self, event: GenerationEvent) -> list[dict[str, Any]]:
        if isinstance(event, TextDelta):
            return [*self._end_reasoning(), *self._end_call(), fragment(event.text)] if event.text else []
        if isinstance(event, ReasoningDelta):
            opening = [] if self.reasoning_open else [fragment(REASONING_OPEN, "reasoningStartTag", 0, True)]
            self.reasoning_open = True
            return [*opening, fragment(event.text, "reasoning")] if event.text else opening
        if isinstance(event, ToolCallDelta):
            return self._call_delta(event)
        if isinstance(event, PromptProgress):
            return [self._progress(event.fraction)]
        self.finished = event
        return self.close()

    def close(self) -> list[dict[str, Any]]:
        """What ends the reasoning or call still open when the output ends."""
        return [*self._end_reasoning(), *self._end_call()]

    def _end_reasoning(self) -> list[dict[str, Any]]:
        if not self.reasoning_open:
            return []
        self.reasoning_open = False
        return [fragment(REASONING_CLOSE, "reasoningEndTag", 0, True)]

    def _call_delta(self, delta: ToolCallDelta) -> list[dict[str, Any]]:
        packets = []
        if delta.name is not None:  # a call's first delta
            packets = [*self._end_reasoning(), *self._end_call()]
            self.call = _Call(delta.id or "", delta.name)
            packets += [{"type": "toolCallGenerationStart", "toolCallId": self.call.id},
                        {"type": "toolCallGenerationNameReceived", "name": delta.name}]
        if delta.arguments and self.call is not None:
            self.call.arguments.append(delta.arguments)
            packets.append({"type": "toolCallGenerationArgumentFragmentGenerated", "content": delta.arguments})
        return packets

    def _end_call(self) -> list[dict[str, Any]]:
        call, self.call = self.call, None
        if call is None:
            return []
        raw = "".join(call.arguments)
        try:
            arguments = json.loads(raw) if raw.strip() else {}
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):  # the tool grammar makes this rare: a call cut short by max tokens
            return [{"type": "toolCallGenerationFailed", "rawContent": raw,
                     "error": {"title": f"the arguments of the call to '{call.name}' are not a JSON object"}}]
        return [{"type": "toolCallGenerationEnd",
                 "toolCallRequest": {"type": "function", "id": call.id, "name": call.name, "arguments": arguments}}]

    def _progress(self, fraction: float) -> dict[str, Any]:
        total = self.prompt_tokens
        done = min(total, round(fraction * total))
        # cached tokens count as processed (the engine's progress does); how many were cached is
        # known only at the end (stats), so the details say 0
        details = {"cachedTokenCount": 0, "totalPromptTokenCount": total, "processedPromptTokenCount": done,
                   "unprocessedPromptTokenCount": total - done}
        return {"type": "promptProcessingProgress", "progress": fraction, "details": details}


def stop_reason(finished: Finished | None) -> str:
    if finished is None:
        return "failed"
    if finished.reason == "tool_calls":
        return "toolCalls"
    return STOP_REASONS.get(finished.cause, "eosFound")


def unloaded_stats(generation: Generation) -> dict[str, Any]:
    """The stats of a prediction whose model was unloaded under it: its output was never counted."""
    return {"stopReason": "modelUnloaded", "promptTokensCount": generation.prompt_tokens}


def stats(generation: Generation, finished: Finished | None) -> dict[str, Any]:
    """LM Studio's prediction stats, measured on this generation."""
    usage, timing = generation.usage, generation.timing
    body: dict[str, Any] = {
        "stopReason": stop_reason(finished),
        "tokensPerSecond": round(timing.decode_rate(usage.completion_tokens), 2),
        "timeToFirstTokenSec": round(max(timing.time_to_first_token, 0.0), 3),
        "totalTimeSec": round(max(timing.ended - timing.started, 0.0), 3),
        "promptTokensCount": usage.prompt_tokens,
        "predictedTokensCount": usage.completion_tokens,
        "totalTokensCount": usage.total_tokens,
    }
    if finished is not None and finished.stop_string is not None:
        body["stopString"] = finished.stop_string
    drafts = generation.drafts
    if drafts is not None:
        if generation.draft_model is not None:
            body["usedDraftModelKey"] = generation.draft_model
        body.update({"totalDraftTokensCount": drafts.drafted, "acceptedDraftTokensCount": drafts.accepted,
                     "rejectedDraftTokensCount": drafts.rejected, "ignoredDraftTokensCount": drafts.ignored})
    return body
