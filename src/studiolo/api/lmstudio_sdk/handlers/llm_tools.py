"""The tools a prediction offers the model, as LM Studio's SDKs send them: the KV config's
``llm.prediction.tools`` (``{type: "none"}`` or ``{type: "toolArray", tools: [{type: "function",
function: {name, description?, parameters?}}]}``) and ``llm.prediction.toolChoice`` (``{type:
"generic", mode: "none" | "auto" | "required"}``), and ``applyPromptTemplate``'s ``toolDefinitions``.

They become the domain's tools, checked by the service as chat completions' are (service/tools.py):
a bad one is an error naming the key and the tool's field. ``model.act()`` runs the tools client side;
the server only renders them in the model's native format and parses the calls (handlers/predict.py).
"""

from __future__ import annotations

from typing import Any

from studiolo.domain.chat import Tools, ToolSpec
from studiolo.domain.errors import InvalidRequest
from studiolo.service.tools import offered_tools

TOOLS_KEY = "llm.prediction.tools"
TOOL_CHOICE_KEY = "llm.prediction.toolChoice"
CHOICE_MODES = ("none", "auto", "required")


def tool_specs(value: Any, param: str) -> list[ToolSpec]:
    """The functions of ``llm.prediction.tools`` (``param`` names it in errors)."""
    if not isinstance(value, dict) or value.get("type") not in ("none", "toolArray"):
        raise InvalidRequest(f"'{param}' must be {{type: \"none\"}} or {{type: \"toolArray\", tools: [...]}}", param)
    if value["type"] == "none":
        return []
    return tool_array(value.get("tools") or [], f"{param}.tools")


def tool_array(tools: Any, param: str) -> list[ToolSpec]:
    """A list of LM Studio's tool definitions (``{type: "function", function: {...}}``)."""
    if not isinstance(tools, list):
        raise InvalidRequest(f"'{param}' must be a list of tools", param)
    return [_tool_spec(tool, f"{param}[{index}]") for index, tool in enumerate(tools)]


def _tool_spec(tool: Any, param: str) -> ToolSpec:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise InvalidRequest(f"'{param}' must be {{type: \"function\", function: {{name, description?, "
                             "parameters?}}", param)
    function = tool["function"]
    name, description, parameters = function.get("name"), function.get("description"), function.get("parameters")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"'{param}.function.name' must be a non-empty string", f"{param}.function.name")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(f"'{param}.function.description' must be a string", f"{param}.function.description")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest(f"'{param}.function.parameters' must be a JSON schema of an object",
                             f"{param}.function.parameters")
    return ToolSpec(name, description, parameters)


def tool_choice(value: Any, param: str = TOOL_CHOICE_KEY) -> str:
    """``{type: "generic", mode}``: the mode, which is what the domain's choice names."""
    if not isinstance(value, dict) or value.get("type") != "generic" or value.get("mode") not in CHOICE_MODES:
        raise InvalidRequest(f"'{param}' must be {{type: \"generic\", mode: \"none\" | \"auto\" | \"required\"}}",
                             param)
    return str(value["mode"])


def offered(specs: list[ToolSpec], choice: str | None, param: str = TOOLS_KEY + ".tools") -> Tools | None:
    """The tools checked by the service (names, schemas, the choice); None when none are offered.
    ``param`` names the list the tools came from, in errors about one of them."""
    if choice == "required" and not specs:  # said here, as the service would name chat completions' field
        raise InvalidRequest(f"'{TOOL_CHOICE_KEY}' requires a tool call but '{TOOLS_KEY}' offers no tools",
                             TOOL_CHOICE_KEY)
    return offered_tools(specs, choice, None, True, lambda index, field: f"{param}[{index}].function.{field}")
