"""How a decision question is put to a chat model, and how its answers are written (docs/API.md
"Decisions").

The input is rendered by the model's chat template as a conversation whose reply is next (thinking
off where the template can switch it off); that text is the prefix every question shares. Each
question is then written at the start of the assistant's reply: its instructions, the labels it may
answer with, and the cue ``Answer:``::

    Which team should handle this?
    Options:
    - billing: payments and refunds
    - shipping
    Answer:

A predicate names its labels first, ``Yes or no: Is the customer angry?``, and below its instructions
lists only the labels it describes (``- yes: ...``). The wording is short because every question's
tokens are computed for each of its reads: a predicate takes its instructions and 7 tokens more with
SmolLM2's tokenizer, 6 with Qwen2.5's (11 and 9 with the wording before, ``Question: ...`` / ``Answer
yes or no.`` / ``Answer:``), and its labels come first so that questions that are all predicates start
alike: what every read starts with is prefilled once (service/decisions.py), ``Yes or no:`` included.
The choice above, or a score of three levels, takes 14 tokens fewer than with ``Question:`` and
``Answer with one of the options, exactly as written.`` (13 with Qwen2.5's).

A label is read as written after the cue, behind one space (`` billing``): a label's probability is
the model's probability of writing all its tokens there. Predicates answer `` yes`` or `` no``
(lower case, one spelling). The space starts a new word in the tokenizers of Llama, Qwen, SmolLM
and Gemma alike, so the prefix, the question and the label tokenize the same apart as together.
"""

from __future__ import annotations

from dataclasses import dataclass

PREDICATE_LABELS = ("yes", "no")  # a predicate's probability is the first's


@dataclass(frozen=True)
class Question:
    """One question about the input: what is asked, and the labels it is answered with, in order.

    ``param`` is the request field the question came from and ``label_params`` those of its labels,
    to name them in errors (``questions[2]``, ``questions[2].choices[1].value``)."""

    kind: str  # "predicate" | "choice" | "score"
    instructions: str
    labels: tuple[str, ...]
    descriptions: tuple[str | None, ...] = ()  # per label; empty: none
    param: str = "questions"
    labels_param: str = "questions"  # the field that lists the labels
    label_params: tuple[str, ...] = ()


HEADINGS = {  # how a question kind introduces its labels
    "choice": "Options:",
    "score": "Levels, from lowest to highest:",
}
CUE = "Answer:"  # the label is read after it


def question_text(question: Question) -> str:
    """What is appended after the assistant's start for ``question`` (the label follows it)."""
    instructions = question.instructions.strip()
    descriptions = question.descriptions or (None,) * len(question.labels)
    listed = zip(question.labels, descriptions, strict=True)
    if question.kind == "predicate":  # its labels first (questions that start alike share their cells)
        lines = [f"{' or '.join(question.labels).capitalize()}: {instructions}"]
        lines += [f"- {label}: {description.strip()}" for label, description in listed if description]
    else:
        lines = [instructions, HEADINGS[question.kind]]
        lines += [f"- {label}: {description.strip()}" if description else f"- {label}" for label, description in listed]
    lines.append(CUE)
    return "\n".join(lines)


def label_text(label: str) -> str:
    """A label as the model writes it after ``Answer:``."""
    return " " + label
