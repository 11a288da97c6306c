"""How the next token is chosen: the sampling values of a request, with LM Studio's defaults.

One table of ranges (``SAMPLING_RANGES``) is what every API family accepts; a family's own
documentation may narrow a field (LM Studio's ``/api/v1/chat`` documents ``temperature`` in
[0, 1]) but never widen it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GREEDY_BELOW = 1e-5  # temperatures under this decode greedily
MAX_REPEAT_PENALTY = 10.0  # beyond this every repeated token is banned anyway

# field -> pydantic-style bounds (ge, gt, le): the widest any API family accepts
SAMPLING_RANGES: dict[str, dict[str, float]] = {
    "temperature": {"ge": 0, "le": 2},
    "top_p": {"ge": 0, "le": 1},
    "top_k": {"ge": -1},  # -1 or 0: off
    "min_p": {"ge": 0, "le": 1},
    "repeat_penalty": {"gt": 0, "le": MAX_REPEAT_PENALTY},
    "presence_penalty": {"ge": -2, "le": 2},
    "frequency_penalty": {"ge": -2, "le": 2},
}


@dataclass(frozen=True)
class SamplingParams:
    """Defaults are LM Studio's for llama.cpp models."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40  # <= 0 disables it
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None

    @classmethod
    def given(cls, **values: Any) -> SamplingParams:
        """LM Studio's defaults, with each value a request gave (None: not given)."""
        return cls(**{name: value for name, value in values.items() if value is not None})

    @property
    def greedy(self) -> bool:
        # below this, logits / temperature overflow float32 (30 / 1e-38 is inf) and the draw turns
        # random; well above it a temperature already picks the top token every time
        return self.temperature < GREEDY_BELOW

    @property
    def penalizes(self) -> bool:
        return self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
