"""The MCP parts of a ``POST /v1/responses`` body (OpenAI's fields): ``{"type": "mcp"}`` tools, the
``{"type": "mcp", "server_label", "name"}`` tool choice, and the MCP items a client may send back in
``input`` (``mcp_list_tools``, ``mcp_call``, ``mcp_approval_request``, ``mcp_approval_response``).

An mcp tool with ``server_url`` is a remote MCP server fetched per request (the server setting
``allow_per_request_mcp``, as /api/v1/chat's ephemeral integrations); ``authorization`` is sent as a
bearer token beside ``headers``. Given by ``server_label`` alone it names a server of ``mcp.json``
(the setting ``allow_mcp_json``, as /api/v1/chat's ``mcp/<name>`` plugins; its headers come from
mcp.json, so the request's are refused). ``connector_id`` (OpenAI's hosted connectors) and
``read_only`` filters (they need the tools' annotations) are refused, each a 400 naming its field.
Headers and the token are never repeated in the response object nor stored: they hold secrets.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from studiolo.api.body import Body
from studiolo.domain.errors import InvalidRequest
from studiolo.service.items import Item
from studiolo.service.mcp import McpServer
from studiolo.service.mcp_integrations import McpPlugin
from studiolo.service.mcp_responses import ApprovalPolicy, McpTool, configured_server


class ToolNames(Body):
    tool_names: list[str] | None = None
    read_only: bool | None = None

    def names(self, param: str) -> frozenset[str]:
        if self.read_only is not None:
            raise InvalidRequest("'read_only' filters are not supported (this server does not read the tools' "
                                 "annotations); name the tools in 'tool_names'", f"{param}.read_only")
        return frozenset(self.tool_names or ())


class ApprovalFilter(Body):
    always: ToolNames | None = None
    never: ToolNames | None = None


class McpToolBody(Body):
    type: Literal["mcp"]
    server_label: str = Field(min_length=1)
    server_url: str | None = None
    server_description: str | None = None
    headers: dict[str, str] | None = None
    authorization: str | None = None
    allowed_tools: list[str] | ToolNames | None = None
    require_approval: Literal["always", "never"] | ApprovalFilter | None = None
    connector_id: str | None = None

    def tool(self, param: str) -> McpTool:
        if self.connector_id is not None:
            raise InvalidRequest("OpenAI's connectors are not served; give the MCP server's 'server_url'",
                                 f"{param}.connector_id")
        return McpTool(self._server(param), self._approval(param), param)

    def echo(self) -> dict[str, Any]:
        """As the response object repeats it: without headers or token (secrets, and it is stored)."""
        allowed = self.allowed_tools
        approval = self.require_approval
        return {"type": "mcp", "server_label": self.server_label, "server_url": self.server_url,
                "server_description": self.server_description, "headers": None,
                "allowed_tools": allowed.model_dump(exclude_none=True) if isinstance(allowed, ToolNames) else allowed,
                "require_approval": approval.model_dump(exclude_none=True) if isinstance(approval, ApprovalFilter)
                else approval or "always"}

    def _server(self, param: str) -> McpServer | McpPlugin:
        allowed = self.allowed_tools
        names = allowed.names(f"{param}.allowed_tools") if isinstance(allowed, ToolNames) else allowed
        if self.server_url is None:
            if self.headers or self.authorization is not None:  # as on /api/v1/chat: mcp.json says them
                raise InvalidRequest("'headers' and 'authorization' go with a 'server_url'; an mcp.json server's "
                                     "come from mcp.json", f"{param}.headers")
            return configured_server(self.server_label, tuple(names) if names is not None else None)
        if not self.server_url.startswith(("http://", "https://")):
            raise InvalidRequest("'server_url' must be an http(s) URL (remote MCP servers only)", f"{param}.server_url")
        headers = dict(self.headers or {})
        if self.authorization is not None:
            headers["Authorization"] = f"Bearer {self.authorization}"
        return McpServer(self.server_label, self.server_url, tuple(names) if names is not None else None,
                         tuple(headers.items()))

    def _approval(self, param: str) -> ApprovalPolicy:
        """OpenAI's ``require_approval``: omitted, every call needs approval; in a filter, the tools it
        names in neither list need it unless it names only an ``always`` list."""
        given = self.require_approval
        if given is None or given == "always":
            return ApprovalPolicy()
        if given == "never":
            return ApprovalPolicy(others=False)
        where = f"{param}.require_approval"
        always = given.always.names(f"{where}.always") if given.always else frozenset()
        never = given.never.names(f"{where}.never") if given.never else frozenset()
        return ApprovalPolicy(others=given.always is None or given.never is not None, always=always, never=never)


class McpChoice(Body):
    """OpenAI's choice of an MCP tool: ``name`` is the tool the first round must call."""

    type: Literal["mcp"]
    server_label: str
    name: str | None = None


# --- MCP items sent back in input ------------------------------------------------------------


class _McpItem(Body):
    def normalized(self, where: str) -> Item:
        """The item as stored: its own fields (a body keeps unknown ones), nulls left out of a response."""
        return self.model_dump(include=set(type(self).model_fields),
                               exclude_none=isinstance(self, McpApprovalResponseInput))


class McpListToolsInput(_McpItem):
    type: Literal["mcp_list_tools"]
    id: str = Field(min_length=1)
    server_label: str
    tools: list[dict[str, Any]]
    error: str | None = None


class McpCallInput(_McpItem):
    type: Literal["mcp_call"]
    id: str = Field(min_length=1)
    server_label: str
    name: str = Field(min_length=1)
    arguments: str
    output: str | None = None
    error: Any = None
    approval_request_id: str | None = None
    status: str | None = None


class McpApprovalRequestInput(_McpItem):
    type: Literal["mcp_approval_request"]
    id: str = Field(min_length=1)
    server_label: str
    name: str = Field(min_length=1)
    arguments: str


class McpApprovalResponseInput(_McpItem):
    type: Literal["mcp_approval_response"]
    approval_request_id: str = Field(min_length=1)
    approve: bool
    reason: str | None = None
    id: str | None = None


MCP_INPUT_ITEMS: dict[str, type[McpListToolsInput | McpCallInput | McpApprovalRequestInput
                                 | McpApprovalResponseInput]] = {
    "mcp_list_tools": McpListToolsInput, "mcp_call": McpCallInput,
    "mcp_approval_request": McpApprovalRequestInput, "mcp_approval_response": McpApprovalResponseInput,
}
