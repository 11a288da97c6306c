"""Chat templates: the built-in fallbacks and the sandbox, without a model."""

from __future__ import annotations

import pytest

from studiolo.chat.templates import (
    CHATML_TEMPLATE,
    GEMMA_TEMPLATE,
    ChatTemplate,
    TemplateError,
    builtin_template_for,
)

GEMMA = ChatTemplate(GEMMA_TEMPLATE, "<bos>", "<eos>")
CHATML = ChatTemplate(CHATML_TEMPLATE, "<|im_start|>", "<|im_end|>")


def test_gemma_folds_system_into_first_user_turn_and_names_the_assistant_model():
    text = GEMMA.render(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye "},
        ]
    )
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_without_generation_prompt():
    text = GEMMA.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


def test_chatml_fallback():
    text = CHATML.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


def test_builtin_template_by_architecture():
    assert builtin_template_for("gemma3") is GEMMA_TEMPLATE
    assert builtin_template_for("llama") is CHATML_TEMPLATE


def test_raise_exception_becomes_a_template_error():
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}", "", "")
    with pytest.raises(TemplateError, match="roles must alternate"):
        template.render([{"role": "user", "content": "x"}])


def test_sandbox_refuses_unsafe_attribute_access():
    template = ChatTemplate("{{ messages.__class__.__mro__ }}", "", "")
    with pytest.raises(TemplateError):
        template.render([{"role": "user", "content": "x"}])


def test_template_helpers_hugging_face_templates_use():
    template = ChatTemplate("{{ messages | tojson }}|{{ strftime_now('%Y') | length }}", "", "")
    assert template.render([{"role": "user", "content": "é"}]) == '[{"role": "user", "content": "é"}]|4'


def test_broken_template_is_reported():
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for %}", "", "").render([])
