"""How a decision question is put to a chat model, and how its answers are written (docs/API.md
"Decisions").

The input is rendered by the model's chat template as a conversation whose reply is next (thinking
off where the template can switch it off); that text is the prefix every question shares. Each
question is then written at the start of the assistant's reply, listing the labels it may answer
with, and ending with ``Answer:``::

    Question: Which team should handle this?
    Options:
    - billing: payments and refunds
    - shipping
    Answer with one of the options, exactly as written.
    Answer:

A label is read as written after that, behind one space (`` billing``): a label's probability is
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


LISTS = {  # a question kind: how its labels are introduced, and what the model is told to answer
    "choice": ("Options:", "Answer with one of the options, exactly as written."),
    "score": ("Levels, from lowest to highest:", "Answer with one of the levels, exactly as written."),
}


def question_text(question: Question) -> str:
    """What is appended after the assistant's start for ``question`` (the label follows it)."""
    lines = [f"Question: {question.instructions.strip()}"]
    descriptions = question.descriptions or (None,) * len(question.labels)
    listed = zip(question.labels, descriptions, strict=True)
    if question.kind == "predicate":  # its labels are listed only where described
        lines += [f"- {label}: {description.strip()}" for label, description in listed if description]
        lines.append("Answer yes or no.")
    else:
        heading, rule = LISTS[question.kind]
        lines.append(heading)
        lines += [f"- {label}: {description.strip()}" if description else f"- {label}" for label, description in listed]
        lines.append(rule)
    lines.append("Answer:")
    return "\n".join(lines)


def label_text(label: str) -> str:
    """A label as the model writes it after ``Answer:``."""
    return " " + label
