"""Images on the stateful APIs, end to end: ``input_image`` parts on /v1/responses (the openai client's
Responses API) and image items on LM Studio's /api/v1/chat (httpx), kept in stored conversations.

The vision model is SmolLM2 with a projector of random weights (tests/vision_projector.py): it sees
nothing, and what it says about an image is nonsense, fixed for a seed and greedy decoding. These tests
check the plumbing, never sight: the same prompt gives the same tokens on every endpoint, a follow-up
turn by ``previous_response_id`` reuses the image's KV (also after a restart, from the stored state),
another image does not, the stored input items show the image, and every bad image is a 400 naming its
field.
"""

from __future__ import annotations

import json
import sqlite3

import httpx
import openai
import pytest

from studiolo.api.lmstudio.chat_schemas import ChatBody
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models
from tests.test_vision_chat import DRAWING, LIMITS, OTHER, PHOTO, VISION, data_url, drawing, image_part
from tests.vision_projector import IMAGE_TOKENS, SMOLLM_VISION, link_vision_models

MAX_TOKENS = 10
SEED = {"temperature": 0, "seed": 1}
RSEED = {"temperature": 0, "extra_body": {"seed": 1}}  # the openai client's Responses API has no seed argument
QUESTION = "What is it?"


class Servers:
    """The module's server, which one test restarts on the same home (the same store)."""

    def __init__(self, home):
        self.home = home
        self.current = RunningServer(home, free_port(), [])

    def restart(self) -> None:
        self.current.stop()
        self.current = RunningServer(self.home, free_port(), [])

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.current.base_url}/v1", api_key="x", max_retries=0, timeout=120)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.current.base_url, timeout=120)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, default_models):
    home = home_with_models(tmp_path_factory.mktemp("vision-stateful"), {SMOLLM: default_models[SMOLLM]})
    link_vision_models(home, (SMOLLM_VISION,))
    (home / "settings.json").write_text(json.dumps({"limits": LIMITS}))
    running = Servers(home)
    yield running
    running.current.stop()


def look_at(url: str, detail: str = "low") -> list[dict]:
    return [{"role": "user", "content": [{"type": "input_text", "text": "Look:"},
                                         {"type": "input_image", "image_url": url, "detail": detail},
                                         {"type": "input_text", "text": QUESTION}]}]


def respond(client: openai.OpenAI, input, **extra):
    return client.responses.create(model=VISION, input=input, max_output_tokens=MAX_TOKENS, **RSEED, **extra)


def chat_completion_text(client: openai.OpenAI, messages: list[dict]) -> str:
    reply = client.chat.completions.create(model=VISION, messages=messages, max_tokens=MAX_TOKENS, **SEED)
    return reply.choices[0].message.content


def chat_look_at(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "Look:"}, image_part(url),
                                         {"type": "text", "text": QUESTION}]}]


def lmstudio_chat(http: httpx.Client, **body) -> httpx.Response:
    return http.post("/api/v1/chat", json={"model": VISION, "max_output_tokens": MAX_TOKENS, **SEED, **body})


@pytest.fixture(scope="module")
def first_turn(servers):
    """The photo's turn on /v1/responses, stored: (its response, the chat completion's text for its prompt)."""
    client = servers.openai()
    turn = respond(client, look_at(PHOTO))
    return turn, chat_completion_text(client, chat_look_at(PHOTO))


def test_an_image_turn_equals_chat_completions_whole_and_streamed(servers, first_turn):
    turn, chat_text = first_turn
    assert turn.status == "incomplete" and turn.output_text  # cut by max_output_tokens
    assert turn.usage.output_tokens == MAX_TOKENS
    assert turn.output_text == chat_text  # the same template, the same image rows, the same greedy tokens
    assert turn.usage.input_tokens > IMAGE_TOKENS
    events = list(servers.openai().responses.create(model=VISION, input=look_at(PHOTO), stream=True,
                                                     max_output_tokens=MAX_TOKENS, **RSEED))
    done = events[-1]
    assert done.type == "response.incomplete"
    assert done.response.output_text == turn.output_text
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == turn.output_text
    assert done.response.usage.input_tokens == turn.usage.input_tokens


def test_lmstudio_chat_takes_image_items_whole_and_streamed(servers, first_turn):
    turn, _ = first_turn
    input = [{"type": "text", "content": "Look:"}, {"type": "image", "data_url": PHOTO},
             {"type": "text", "content": QUESTION}]  # one user message: the image between its texts
    with servers.http() as http:
        reply = lmstudio_chat(http, input=input)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["output"] == [{"type": "message", "content": turn.output_text}]
        assert body["stats"]["input_tokens"] == turn.usage.input_tokens
        with http.stream("POST", "/api/v1/chat", json={"model": VISION, "input": input, "stream": True,
                                                       "max_output_tokens": MAX_TOKENS, **SEED}) as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data:")]
        end = json.loads(lines[-1][5:])
        assert end["type"] == "chat.end"
        assert end["result"]["output"] == body["output"]
        # stored: its input items show the image (the store is shared with /v1/responses)
        items = http.get(f"/v1/responses/{body['response_id']}/input_items", params={"order": "asc"}).json()
        assert [part["type"] for part in items["data"][0]["content"]] == ["input_text", "input_image", "input_text"]
        assert items["data"][0]["content"][1]["image_url"] == PHOTO


def test_stored_input_items_show_the_image(servers, first_turn):
    turn, _ = first_turn
    with servers.http() as http:
        listed = http.get(f"/v1/responses/{turn.id}/input_items", params={"order": "asc"}).json()
    content = listed["data"][0]["content"]
    assert [part["type"] for part in content] == ["input_text", "input_image", "input_text"]
    assert content[1] == {"type": "input_image", "image_url": PHOTO, "detail": "low"}
    typed = servers.openai().responses.input_items.list(turn.id, order="asc")
    assert typed.data[0].content[1].type == "input_image"


def follow_up(client: openai.OpenAI, previous_id: str):
    return respond(client, "Are you sure?", previous_response_id=previous_id)


def test_a_follow_up_turn_reuses_the_image_s_kv(servers, first_turn):
    turn, _ = first_turn
    client = servers.openai()
    second = follow_up(client, turn.id)
    assert second.usage.input_tokens_details.cached_tokens > IMAGE_TOKENS
    assert second.usage.input_tokens_details.cached_tokens >= turn.usage.input_tokens - 3  # all the first turn
    history = [*chat_look_at(PHOTO), {"role": "assistant", "content": turn.output_text},
               {"role": "user", "content": "Are you sure?"}]
    assert second.output_text == chat_completion_text(client, history)  # the image came back from the store
    # another image, the same text: the prompts part at the image's first row
    other = respond(client, look_at(DRAWING))
    assert other.usage.input_tokens == turn.usage.input_tokens
    assert other.usage.input_tokens_details.cached_tokens < turn.usage.input_tokens - IMAGE_TOKENS
    assert follow_up(client, other.id).usage.input_tokens_details.cached_tokens > IMAGE_TOKENS


def test_a_continued_image_on_a_model_without_a_projector(servers, first_turn):
    turn, _ = first_turn
    with servers.http() as http:
        reply = http.post("/v1/responses", json={"model": SMOLLM, "input": "And now?", "previous_response_id": turn.id,
                                                 "max_output_tokens": 2})
    assert reply.status_code == 400, reply.text
    assert (reply.json()["error"]["code"], reply.json()["error"]["param"]) == ("images_unsupported",
                                                                               "previous_response_id")


NOT_AN_IMAGE = data_url(b"just some text, not a picture")


@pytest.mark.parametrize(("part", "model", "code", "field"), [
    ({"image_url": "data:image/png;base64,%%%notbase64"}, VISION, "invalid_base64", "image_url"),
    ({"image_url": NOT_AN_IMAGE}, VISION, "invalid_image", "image_url"),
    ({"image_url": DRAWING}, SMOLLM, "images_unsupported", "image_url"),
    ({"file_id": "file-abc"}, VISION, None, "file_id"),
], ids=["broken-base64", "not-an-image", "no-projector", "file-id"])
def test_a_bad_image_on_responses_is_a_400_naming_its_field(servers, part, model, code, field):
    content = [{"type": "input_text", "text": "Look:"}, {"type": "input_image", "detail": "auto", **part}]
    with servers.http() as http:
        reply = http.post("/v1/responses", json={"model": model, "input": [{"role": "user", "content": content}],
                                                 "max_output_tokens": 2})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == f"input[0].content[1].{field}"
    if code is not None:
        assert error["code"] == code
    else:
        assert "Files API" in error["message"]


@pytest.mark.parametrize(("data_url_", "model", "code"), [
    ("data:image/png;base64,%%%notbase64", VISION, "invalid_base64"),
    (NOT_AN_IMAGE, VISION, "invalid_image"),
    (OTHER, SMOLLM, "images_unsupported"),
], ids=["broken-base64", "not-an-image", "no-projector"])
def test_a_bad_image_on_lmstudio_chat_is_a_400_naming_its_field(servers, data_url_, model, code):
    with servers.http() as http:
        reply = http.post("/api/v1/chat", json={"model": model, "max_output_tokens": 2, "input": [
            {"type": "text", "content": "Look:"}, {"type": "image", "data_url": data_url_}]})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == (code, "input[1].data_url")


def rows_holding(servers: Servers, url: str) -> int:
    """Stored responses whose items hold this image (the store keeps images inline: docs/API.md)."""
    with sqlite3.connect(servers.home / "responses.sqlite3") as db:
        return db.execute("SELECT count(*) FROM responses WHERE instr(input_items, ?) > 0", (url,)).fetchone()[0]


def test_deleting_responses_deletes_their_images(servers):
    client = servers.openai()
    mine = data_url(drawing(5))  # no other test sends it
    first = respond(client, look_at(mine))
    second = respond(client, look_at(OTHER), previous_response_id=first.id)
    assert rows_holding(servers, mine) == 1
    client.responses.delete(first.id)  # a tombstone: the second turn's conversation still needs its image
    assert rows_holding(servers, mine) == 1
    unstored = respond(client, "Are you sure?", previous_response_id=second.id, store=False)
    assert unstored.usage.input_tokens > 2 * IMAGE_TOKENS  # both images are still sent
    client.responses.delete(second.id)  # nothing continues the first now: both go, with the image
    assert rows_holding(servers, mine) == 0


def test_after_a_restart_the_follow_up_still_sees_the_image_and_reuses_its_kv(servers, first_turn):
    turn, _ = first_turn
    before = follow_up(servers.openai(), turn.id).output_text
    servers.restart()
    after = follow_up(servers.openai(), turn.id)
    assert after.output_text == before
    # the engine lost its cells: the stored KV state of the first turn came back, image rows and all
    assert after.usage.input_tokens_details.cached_tokens > IMAGE_TOKENS


@pytest.mark.parametrize(("kinds", "messages"), [
    ("t,i,t", [["input_text", "input_image", "input_text"]]),
    ("i,t", [["input_image", "input_text"]]),
    ("t,t", [["input_text"], ["input_text"]]),  # text items stay a message each, as before images
    ("t,i,t,t", [["input_text", "input_image", "input_text"], ["input_text"]]),
    ("i,i,t", [["input_image", "input_image", "input_text"]]),
])
def test_lmstudio_image_items_join_their_neighbouring_text(kinds, messages):
    given = [{"type": "image", "data_url": DRAWING} if kind == "i" else {"type": "text", "content": "x"}
             for kind in kinds.split(",")]
    turn = ChatBody.model_validate({"model": VISION, "input": given}).turn(report_progress=False)
    assert [[part["type"] for part in item["content"]] for item in turn.items] == messages
    assert turn.image_params == tuple(f"input[{index}].data_url" for index, kind in enumerate(kinds.split(","))
                                      if kind == "i")
