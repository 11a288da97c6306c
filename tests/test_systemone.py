"""``POST /v1/systemone`` (TypeSafe's System One) on ordinary chat models, with raw httpx.

System One asks the same questions as ``/v1/decisions`` in its own shapes (questions keyed by id,
``criteria``, ``noul`` for yes/no), so its probabilities must equal the decisions endpoint's for the
same questions, and those are checked by hand against ``/v1/completions`` logprobs (tests/test_decisions.py).
Both agree to chunking's rounding (tests/test_decisions.py). The models are small: these tests check
the arithmetic and the plumbing, not the answers' wisdom.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest

from studiolo.models.defaults import QWEN05, target_path
from tests.conftest import MINILM, QWEN, SMOLLM, RunningServer, free_port, home_with_models
from tests.test_decisions import ANGRY, ONE_SLOT, TEAM, TICKET, URGENCY, assert_agree, by_hand, rendered_input

QUESTIONS = {
    "team": {"type": "choice", "instructions": "Which team should handle this ticket?",
             "criteria": {"billing": "payments and refunds", "shipping": None,
                          "technical support": "bugs and outages"}},
    "angry": {"type": "noul", "instructions": "Is the customer angry?"},
    "urgency": {"type": "score", "instructions": "How urgent is this ticket?",
                "criteria": {"low": None, "medium": None, "high": "answer today"}},
}


@pytest.fixture(scope="module")
def s1http(tmp_path_factory, default_models):
    models = {QWEN: target_path(QWEN05), SMOLLM: default_models[SMOLLM], MINILM: default_models[MINILM]}
    home = home_with_models(tmp_path_factory.mktemp("systemone-home"), models)
    running = RunningServer(home, free_port(), ["--parallel", "1"])  # exact: each sequence alone (test_decisions)
    with httpx.Client(base_url=running.base_url, timeout=300) as session:
        yield session
    running.stop()


def ask(http: httpx.Client, body: dict) -> dict:
    response = http.post("/v1/systemone", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("model", [QWEN, SMOLLM])
def test_answers_in_system_ones_shape_match_the_decisions_endpoint(s1http, model):
    result = ask(s1http, {"model": model, "state": TICKET, "questions": QUESTIONS})
    assert result["model"] == model and list(result["answers"]) == ["team", "angry", "urgency"]  # key order
    team, angry, urgency = (result["answers"][key] for key in ("team", "angry", "urgency"))
    assert set(team) == {"type", "choice", "probabilities", "confidence"} and team["type"] == "choice"
    assert list(team["probabilities"]) == ["billing", "shipping", "technical support"]
    assert math.fsum(team["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
    top = max(team["probabilities"].values())
    assert team["choice"] == max(team["probabilities"], key=team["probabilities"].get)
    assert team["confidence"] == pytest.approx((top - 1 / 3) / (1 - 1 / 3), rel=1e-9)  # 0: uniform, 1: certain
    assert set(angry) == {"type", "noul"} and angry["type"] == "noul"
    assert urgency["legend"] == {"0": "low", "1": "medium", "2": "high"}
    assert math.fsum(urgency["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
    assert urgency["score"] == pytest.approx(sum(i * urgency["probabilities"][str(i)] for i in range(3)), rel=1e-9)
    assert result["usage"]["output_tokens"] == 0 and result["usage"]["input_tokens"] > 0

    # the same questions through /v1/decisions, in its order: the same reads, the same numbers
    body = {"model": model, "input": TICKET, "questions": [TEAM, ANGRY, URGENCY]}
    response = s1http.post("/v1/decisions", json=body)
    assert response.status_code == 200, response.text
    d_team, d_angry, d_urgency = response.json()["answers"]
    assert_agree(list(team["probabilities"].values()),
                 [math.log(p["probability"]) for p in d_team["probabilities"]], ONE_SLOT)
    assert_agree([angry["noul"], 1 - angry["noul"]],
                 [math.log(d_angry["probability"]), math.log(1 - d_angry["probability"])], ONE_SLOT)
    assert_agree(list(urgency["probabilities"].values()),
                 [math.log(p["probability"]) for p in d_urgency["probabilities"]], ONE_SLOT)


def test_noul_matches_the_completions_logprobs(s1http):
    answer = ask(s1http, {"model": SMOLLM, "state": TICKET, "questions": {"angry": QUESTIONS["angry"]}})
    noul = answer["answers"]["angry"]["noul"]
    assert_agree([noul, 1 - noul], by_hand(s1http, SMOLLM, rendered_input(s1http, SMOLLM, TICKET), "angry"), ONE_SLOT)


def test_an_object_state_is_read_as_json_and_levels_may_be_a_list(s1http):
    state = {"ticket": TICKET, "customer": {"plan": "pro", "tickets_this_month": 4}}
    questions = {"urgency": {"type": "score", "instructions": "How urgent is this ticket?",
                             "criteria": ["low", "medium", "high"]},
                 "vip": {"type": "noul", "instructions": "Is this a paying customer?",
                         "criteria": {"true": "on a paid plan", "false": "on the free plan"}}}
    result = ask(s1http, {"model": SMOLLM, "state": state, "questions": questions})
    as_text = ask(s1http, {"model": SMOLLM, "state": json.dumps(state, ensure_ascii=False), "questions": questions})
    # the same prompt: the same text given twice, the second time its reads reuse the first's cells
    assert_agree(list(result["answers"]["urgency"]["probabilities"].values()),
                 [math.log(p) for p in as_text["answers"]["urgency"]["probabilities"].values()], ONE_SLOT)
    vip, vip_text = result["answers"]["vip"]["noul"], as_text["answers"]["vip"]["noul"]
    assert_agree([vip, 1 - vip], [math.log(vip_text), math.log(1 - vip_text)], ONE_SLOT)
    assert result["answers"]["urgency"]["legend"] == {"0": "low", "1": "medium", "2": "high"}


def test_many_questions_share_the_state(s1http):
    """16 questions about one state: the state is prefilled once, the reads reuse it."""
    questions = {f"q{i}": {"type": "noul", "instructions": f"Does the ticket mention the number {i}?"}
                 for i in range(16)}
    result = ask(s1http, {"model": SMOLLM, "state": TICKET * 8, "questions": questions})
    assert list(result["answers"]) == list(questions)
    usage = result["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] >= usage["input_tokens"] // 2


@pytest.mark.parametrize(("body", "param"), [
    ({"questions": {}}, "questions"),
    ({"questions": [QUESTIONS["angry"]]}, "questions"),
    ({"questions": {"x": {"type": "ranking", "instructions": "Rank it"}}}, "questions.x.type"),
    ({"questions": {"x": {"type": "choice", "instructions": "Which?", "criteria": {"only": None}}}},
     "questions.x.criteria"),
    ({"questions": {"x": {"type": "choice", "instructions": "Which?", "criteria": {"a": None, " ": None}}}},
     "questions.x.criteria. "),
    ({"questions": {"x": {"type": "score", "instructions": "How?", "criteria": ["low", "low"]}}},
     "questions.x.criteria[1]"),
    ({"questions": {"x": {"type": "score", "instructions": "How?", "criteria": ["one"]}}}, "questions.x.criteria"),
    ({"questions": {"x": {"type": "noul", "instructions": "Is it?", "criteria": "yes"}}}, "questions.x.criteria"),
    ({"questions": {"x": {"type": "noul"}}}, "questions.x.instructions"),
    ({"state": None, "questions": {"x": QUESTIONS["angry"]}}, "state"),
    ({"images": ["data:image/png;base64,AAAA"], "questions": {"x": QUESTIONS["angry"]}}, "images"),
    ({"model": MINILM, "questions": {"x": QUESTIONS["angry"]}}, "model"),
    ({"state": "refund " * 5000, "questions": {"x": QUESTIONS["angry"]}}, "state"),
])
def test_bad_requests_are_400_naming_the_field(s1http, body, param):
    response = s1http.post("/v1/systemone", json={"model": SMOLLM, "state": TICKET, **body})
    error = response.json()["error"]
    assert (response.status_code, error["param"]) == (400, param), error
