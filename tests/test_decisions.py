"""``POST /v1/decisions`` on ordinary chat models (Qwen2.5-Coder-0.5B-Instruct and SmolLM2), through the
``openai`` package's ``client.decisions.create`` and raw httpx.

Each answer is checked against the same probabilities computed by hand: the prompt studiolo documents
(docs/API.md "Decisions": the input rendered by the chat template, the question after the assistant's
start, the label after ``Answer:``) scored by ``/v1/completions`` with ``echo`` and ``logprobs``, one
request per label, its label tokens' logprobs summed and normalised over the labels. The models are
small: the tests check the arithmetic and the plumbing, not that the answers are wise.

They agree to rounding, not to the last bit: rows computed in chunks of other shapes (the input
prefilled apart, then a question, against ``/v1/completions``' chunks of 64 rows), batched with other
sequences, or with their cells elsewhere in the KV cache round differently (docs/ENGINE.md "What
batching does to numbers"; measured on Qwen2.5-Coder-0.5B: one label's logprob -4.848 by echo, -4.786
with the input prefilled apart). So the probabilities are compared within ``ONE_SLOT`` on a server with
one slot (every sequence alone, as the by-hand requests run; seen up to 0.033) and ``BATCHED`` with
the default four (the reads batched); the engine's own test (tests/test_prompt_scoring.py) checks the
scores equal echo's where the rows are computed in the same shapes.
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from studiolo.api.decisions.openai_wire import questions_of
from studiolo.models.defaults import QWEN05, target_path
from studiolo.service.decision_prompt import question_text
from studiolo.service.decisions import _answer, _Read, _shared_start
from tests.conftest import MINILM, QWEN, SMOLLM, RunningServer, free_port, home_with_models

TICKET = ("Customer: I was charged twice for order 1182 last week, and nobody answers my emails. "
          "Refund the second charge today or I cancel my account.")
ANGRY = {"type": "predicate", "name": "angry", "instructions": "Is the customer angry?"}
TEAM = {"type": "choice", "name": "team", "instructions": "Which team should handle this ticket?",
        "choices": [{"value": "billing", "description": "payments and refunds"}, {"value": "shipping"},
                    {"value": "technical support", "description": "bugs and outages"}]}
URGENCY = {"type": "score", "instructions": "How urgent is this ticket?",
           "levels": [{"label": "low"}, {"label": "medium"}, {"label": "high", "description": "answer today"}]}
QUESTIONS = [ANGRY, TEAM, URGENCY]
ONE_SLOT = 0.05  # how far a probability may move with chunking's rounding (module docstring)
BATCHED = 0.08  # and with batching's too (docs/ENGINE.md: logprobs moved up to 0.27 nats)

# the questions as docs/API.md says the model reads them (after the assistant's start)
ASKED = {
    "angry": ("Yes or no: Is the customer angry?\nAnswer:", ["yes", "no"]),
    "team": ("Which team should handle this ticket?\nOptions:\n- billing: payments and refunds\n"
             "- shipping\n- technical support: bugs and outages\nAnswer:",
             ["billing", "shipping", "technical support"]),
    "urgency": ("How urgent is this ticket?\nLevels, from lowest to highest:\n- low\n- medium\n"
                "- high: answer today\nAnswer:", ["low", "medium", "high"]),
}


# --- without a model ---------------------------------------------------------------------------------


def test_questions_are_phrased_as_documented():
    for item, name in ((ANGRY, "angry"), (TEAM, "team"), ({**URGENCY, "name": "urgency"}, "urgency")):
        question = questions_of([item])[0]
        assert (question_text(question), list(question.labels)) == (ASKED[name][0], ASKED[name][1])


def test_what_every_read_starts_with_is_prefilled_once():
    """The warm-up prefill covers the input and the start the questions share, but never a row a read
    scores: a tail label's rows, or (for next-token labels) the question's last token."""
    prefix = [1, 2, 3]
    asked = [_Read(0, prefix + [7, 8, 9, 10]), _Read(1, prefix + [7, 8, 9, 11])]
    assert _shared_start(prefix, asked) == prefix + [7, 8, 9]
    tail = _Read(2, prefix + [7, 8, 9, 12], tail_label=0, tail_length=2)  # scores 9 and 12: decodes 8 on
    assert _shared_start(prefix, [*asked, tail]) == prefix + [7]
    assert _shared_start(prefix, [*asked, _Read(3, prefix + [5])]) == prefix  # nothing shared past the input


def test_labels_are_normalised_in_log_space():
    """Long labels have tiny probabilities: exp of their sum would underflow to 0/0."""
    answer = _answer([-1000.0, -1001.0, -1002.0])
    expected = [1 / (1 + math.exp(-1) + math.exp(-2)) * math.exp(-i) for i in range(3)]
    assert list(answer.probabilities) == pytest.approx(expected, rel=1e-12)
    assert answer.top == 0 and answer.expected_index == pytest.approx(expected[1] + 2 * expected[2])
    assert answer.margin_over_uniform == pytest.approx((expected[0] - 1 / 3) / (2 / 3))


def test_boolean_choices_are_written_as_json():
    question = questions_of([{"type": "choice", "instructions": "Paid?", "choices": [{"value": True},
                                                                                    {"value": "false"}]}])[0]
    assert question.labels == ("true", "false")


@pytest.fixture(scope="module")
def decision_server(tmp_path_factory, default_models):
    """One slot: every sequence runs alone, so the answers equal the by-hand figures exactly."""
    models = {QWEN: target_path(QWEN05), SMOLLM: default_models[SMOLLM], MINILM: default_models[MINILM]}
    home = home_with_models(tmp_path_factory.mktemp("decisions-home"), models)
    running = RunningServer(home, free_port(), ["--parallel", "1"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def batched(tmp_path_factory, default_models):
    """The default four slots: the reads of a request run batched."""
    home = home_with_models(tmp_path_factory.mktemp("decisions-batched"), {SMOLLM: default_models[SMOLLM]})
    running = RunningServer(home, free_port(), [])
    with httpx.Client(base_url=running.base_url, timeout=300) as session:
        yield openai.OpenAI(base_url=f"{running.base_url}/v1", api_key="x", max_retries=0, timeout=300), session
    running.stop()


@pytest.fixture(scope="module")
def dclient(decision_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{decision_server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def dhttp(decision_server):
    with httpx.Client(base_url=decision_server.base_url, timeout=300) as session:
        yield session


def rendered_input(http: httpx.Client, model: str, text: str) -> str:
    """The input as the model's template renders it, up to the assistant's start."""
    response = http.post("/apply-template", json={"model": model, "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200, response.text
    return response.json()["prompt"]


def label_logprob(http: httpx.Client, model: str, context: str, label: str) -> float:
    """log P(label | context) by /v1/completions: echo the prompt scored, sum the label's tokens."""
    body = {"model": model, "prompt": context + " " + label, "max_tokens": 0, "echo": True, "logprobs": 0,
            "temperature": 0}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    logprobs = response.json()["choices"][0]["logprobs"]
    scored = [lp for lp, offset in zip(logprobs["token_logprobs"], logprobs["text_offset"], strict=True)
              if offset >= len(context)]
    assert scored, "the label has tokens of its own"
    return math.fsum(scored)


def by_hand(http: httpx.Client, model: str, prefix: str, name: str) -> list[float]:
    """Each label's log-probability after the question."""
    question, labels = ASKED[name]
    return [label_logprob(http, model, prefix + question, label) for label in labels]


def normalised(logprobs: list[float]) -> list[float]:
    raw = [math.exp(value) for value in logprobs]
    return [p / sum(raw) for p in raw]


def assert_agree(probabilities: list[float], logprobs: list[float], within: float) -> None:
    """The answer's probabilities against the labels' log-probabilities, normalised."""
    assert math.fsum(probabilities) == pytest.approx(1.0, abs=1e-9)
    assert probabilities == pytest.approx(normalised(logprobs), abs=within)


def token_count(http: httpx.Client, model: str, text: str, add_special: bool = False) -> int:
    response = http.post("/tokenize", json={"model": model, "content": text, "add_special": add_special,
                                            "parse_special": add_special})
    return len(response.json()["tokens"])


@pytest.mark.parametrize("model", [QWEN, SMOLLM])
def test_answers_match_the_probabilities_computed_by_hand(dclient, dhttp, model):
    decision = dclient.decisions.create(model=model, input=TICKET, questions=QUESTIONS)
    assert decision.model == model
    angry, team, urgency = decision.answers
    assert (angry.type, team.type, urgency.type) == ("predicate", "choice", "score")
    assert (angry.name, team.name, urgency.name) == ("angry", "team", None)
    # a label of several tokens is scored as a whole: "technical support" is not one token
    assert token_count(dhttp, model, " technical support") >= 2
    prefix = rendered_input(dhttp, model, TICKET)

    angry_logprobs = by_hand(dhttp, model, prefix, "angry")
    assert_agree([angry.probability, 1 - angry.probability], angry_logprobs, ONE_SLOT)

    team_logprobs = by_hand(dhttp, model, prefix, "team")
    assert [p.value for p in team.probabilities] == ["billing", "shipping", "technical support"]
    assert_agree([p.probability for p in team.probabilities], team_logprobs, ONE_SLOT)
    assert math.fsum(p.probability for p in team.probabilities) == pytest.approx(1.0, abs=1e-9)
    top = max(range(3), key=lambda i: team.probabilities[i].probability)
    assert team.choice == team.probabilities[top].value
    # the winner's full-vocabulary probability: its label's own, not normalised
    assert team.confidence == pytest.approx(math.exp(team_logprobs[top]), abs=ONE_SLOT)

    urgency_logprobs = by_hand(dhttp, model, prefix, "urgency")
    assert [(p.value, p.label) for p in urgency.probabilities] == [(0, "low"), (1, "medium"), (2, "high")]
    assert_agree([p.probability for p in urgency.probabilities], urgency_logprobs, ONE_SLOT)
    assert math.fsum(p.probability for p in urgency.probabilities) == pytest.approx(1.0, abs=1e-9)
    assert urgency.score == pytest.approx(sum(i * p.probability for i, p in enumerate(urgency.probabilities)),
                                          rel=1e-12)
    top = max(range(3), key=lambda i: urgency.probabilities[i].probability)
    assert urgency.confidence == pytest.approx(math.exp(urgency_logprobs[top]), abs=ONE_SLOT)


def test_questions_share_the_prefilled_input(batched):
    """The input is prefilled once; every question's reads start from its cells (cached tokens), run
    batched, and agree with the by-hand figures and with each question asked alone within batching's
    rounding."""
    dclient, dhttp = batched
    # long enough that the prefix outweighs the three questions' reads (so the usage bounds below
    # tell one prefill from several), no longer: each by-hand label is an echo request that computes
    # logits at every row of it, 3 s per label at 450 tokens on 2 cores
    long_input = TICKET + " Previous messages: " + " ".join(f"message {i}: where is my refund?" for i in range(16))
    prefix_tokens = token_count(dhttp, SMOLLM, rendered_input(dhttp, SMOLLM, long_input), add_special=True)
    assert prefix_tokens > 200
    together = dclient.decisions.create(model=SMOLLM, input=long_input, questions=QUESTIONS)
    usage = together.usage
    assert usage.output_tokens == 0 and usage.total_tokens == usage.input_tokens
    # at least the prefill of the input and one read per question; every read but none of the prefill
    # computes the input again
    assert usage.input_tokens_details.cached_tokens >= len(QUESTIONS) * prefix_tokens
    assert usage.input_tokens - usage.input_tokens_details.cached_tokens < 2 * prefix_tokens
    prefix = rendered_input(dhttp, SMOLLM, long_input)
    for name, question, answer in zip(("angry", "team", "urgency"), QUESTIONS, together.answers, strict=True):
        alone = dclient.decisions.create(model=SMOLLM, input=long_input, questions=[question]).answers[0]
        assert_agree(probabilities(answer), [math.log(p) for p in probabilities(alone)], BATCHED)
        assert_agree(probabilities(answer), by_hand(dhttp, SMOLLM, prefix, name), BATCHED)


def probabilities(answer) -> list[float]:
    if answer.type == "predicate":
        return [answer.probability, 1 - answer.probability]
    return [p.probability for p in answer.probabilities]


def test_messages_and_tool_calls_as_input(dclient):
    """Items as the SDK types them: messages of every role, a function call and its output."""
    items = [
        {"role": "developer", "content": "You triage support tickets."},
        {"role": "user", "content": [{"type": "input_text", "text": "My parcel is late."},
                                     {"type": "input_json", "data": {"order": 1182, "carrier": "DHL"}}]},
        {"type": "function_call", "call_id": "c1", "name": "track", "arguments": '{"order": 1182}'},
        {"type": "function_call_output", "call_id": "c1", "output": "in transit, 5 days late"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Sorry, it is 5 days late."}]},
    ]
    decision = dclient.decisions.create(model=QWEN, input=items, questions=[TEAM, ANGRY])
    team, angry = decision.answers
    assert math.fsum(p.probability for p in team.probabilities) == pytest.approx(1.0, abs=1e-9)
    assert 0.0 < angry.probability < 1.0


def test_typed_choices_keep_their_type(dclient):
    question = {"type": "choice", "instructions": "Is the order paid?", "choices": [{"value": True}, {"value": False}]}
    answer = dclient.decisions.create(model=SMOLLM, input=TICKET, questions=[question]).answers[0]
    assert [p.value for p in answer.probabilities] == [True, False] and answer.choice in (True, False)


# --- errors ---------------------------------------------------------------------------------------------


def _error(http: httpx.Client, body: dict) -> tuple[int, dict]:
    response = http.post("/v1/decisions", json={"model": SMOLLM, "input": TICKET, **body})
    return response.status_code, response.json().get("error", {})


def _choice(*values) -> dict:
    return {"type": "choice", "instructions": "Which?", "choices": [{"value": v} for v in values]}


@pytest.mark.parametrize(("body", "param"), [
    ({"questions": []}, "questions"),
    ({"questions": [ANGRY] * 401}, "questions"),
    ({}, "questions"),
    ({"questions": [_choice("a", "")]}, "questions[0].choices[1].value"),
    ({"questions": [_choice("a", "b", "a")]}, "questions[0].choices[2].value"),
    ({"questions": [_choice("true", True)]}, "questions[0].choices[1].value"),  # the model reads both as "true"
    ({"questions": [_choice("a")]}, "questions[0].choices"),
    ({"questions": [_choice(*(f"c{i}" for i in range(256)))]}, "questions[0].choices"),
    ({"questions": [{**URGENCY, "levels": [{"label": "only"}]}]}, "questions[0].levels"),
    ({"questions": [{**URGENCY, "levels": [{"label": str(i)} for i in range(11)]}]}, "questions[0].levels"),
    ({"questions": [{"type": "ranking", "instructions": "Rank it"}]}, "questions[0].type"),
    ({"questions": [{"type": "predicate", "instructions": " "}]}, "questions[0].instructions"),
    ({"questions": [ANGRY, {**ANGRY, "instructions": [{"type": "input_image", "image_url": "data:,"}]}]},
     "questions[1].instructions[0]"),
    ({"input": None, "questions": [ANGRY]}, "input"),
    ({"input": [], "questions": [ANGRY]}, "input"),
    ({"input": [{"role": "critic", "content": "x"}], "questions": [ANGRY]}, "input[0].role"),
    ({"input": [{"type": "function_call_output", "call_id": "nope", "output": "x"}], "questions": [ANGRY]},
     "input[0].call_id"),
    ({"model": MINILM, "questions": [ANGRY]}, "model"),
    ({"input": "refund " * 5000, "questions": [ANGRY]}, "input"),  # past the 4,096-token context
])
def test_bad_requests_are_400_naming_the_field(dhttp, body, param):
    status, error = _error(dhttp, body)
    assert (status, error.get("param")) == (400, param), error
    assert error["type"] == "invalid_request_error"


def test_context_overflow_says_so(dhttp):
    status, error = _error(dhttp, {"input": "refund " * 5000, "questions": [ANGRY]})
    assert (status, error["code"]) == (400, "context_length_exceeded")
    assert "4096" in error["message"]


def test_the_sdk_raises_bad_request(dclient):
    with pytest.raises(openai.BadRequestError) as caught:
        dclient.decisions.create(model=SMOLLM, input=TICKET, questions=[])
    assert caught.value.status_code == 400


def test_models_list_says_which_models_answer_decisions(dclient, dhttp):
    listed = {m["id"]: m for m in dhttp.get("/v1/models").json()["data"]}
    assert listed[QWEN]["capabilities"] == ["decisions"] and listed[SMOLLM]["capabilities"] == ["decisions"]
    assert "capabilities" not in listed[MINILM]
    v0 = {m["id"]: m["capabilities"] for m in dhttp.get("/api/v0/models").json()["data"] if m["type"] == "llm"}
    assert all("decisions" in capabilities for capabilities in v0.values())
    v1 = {m["key"]: m for m in dhttp.get("/api/v1/models").json()["models"]}
    assert v1[SMOLLM]["capabilities"]["decisions"] is True and "capabilities" not in v1[MINILM]
