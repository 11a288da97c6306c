"""The output items and streaming events of a response whose model called MCP tools
(service/mcp_responses.py), as OpenAI's Responses API shows them.

- ``mcp_list_tools``: ``response.output_item.added`` (its ``tools`` still empty),
  ``response.mcp_list_tools.in_progress``, ``response.mcp_list_tools.completed``,
  ``response.output_item.done`` with the tools.
- ``mcp_call``: ``response.output_item.added`` (status ``in_progress``) when the model names the
  tool, ``response.mcp_call.in_progress``, ``response.mcp_call_arguments.delta`` as the model writes
  them, then once the call ran ``response.mcp_call_arguments.done``,
  ``response.mcp_call.completed`` (or ``.failed``: its ``error`` says why) and
  ``response.output_item.done`` with its ``output``. A call approved in an earlier response runs
  before the model writes: its arguments come as one delta.
- ``mcp_approval_request``: ``response.output_item.added`` and ``response.output_item.done``, once
  the model has written the whole call.

An item takes its place in ``output`` when it starts, so the places follow the order the model
wrote them in, whenever the calls finish.
"""

from __future__ import annotations

from typing import Any

from studiolo.api.responses.render import OutputItems
from studiolo.service.items import Item
from studiolo.service.mcp_responses import (
    McpApprovalRequested,
    McpArgumentsDelta,
    McpCallDone,
    McpCallStarted,
    McpToolsListed,
    ResponseEvent,
)
from studiolo.service.types import Finished


def _event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


class McpOutputItems(OutputItems):
    """OutputItems that also show the MCP items."""

    def __init__(self, with_logprobs: bool):
        super().__init__(with_logprobs)
        self._places: dict[str, int] = {}  # an MCP item not finished yet -> its output_index
        self._streamed: set[str] = set()  # the calls whose arguments were streamed

    def feed(self, event: ResponseEvent) -> list[dict[str, Any]]:  # more events than OutputItems takes
        if isinstance(event, McpToolsListed):
            return self._listed(event.item)
        if isinstance(event, McpCallStarted):
            return self._started(event)
        if isinstance(event, McpArgumentsDelta):
            return self._arguments(event)
        if isinstance(event, McpCallDone):
            return self._done(event.item)
        if isinstance(event, McpApprovalRequested):
            index = self._places.pop(event.item["id"])
            self.items[index] = event.item
            return [_event("response.output_item.added", output_index=index, item=event.item),
                    _event("response.output_item.done", output_index=index, item=event.item)]
        if isinstance(event, Finished):
            return self._unfinished() + super().feed(event)
        return super().feed(event)

    def _unfinished(self) -> list[dict[str, Any]]:
        """Calls the output ended in (cut off by max_output_tokens): shown as written, never run."""
        events = []
        for index in self._places.values():
            self.items[index] = item = {**self.items[index], "status": "incomplete"}
            if item["type"] == "mcp_call":
                events.append(_event("response.output_item.done", output_index=index, item=item))
        self._places.clear()
        return events

    def _place(self, item: Item) -> tuple[int, list[dict[str, Any]]]:
        """A new item's place in the output, after the item open so far (now closed)."""
        events = self._close("completed")
        self.items.append(item)
        return len(self.items) - 1, events

    def _listed(self, item: Item) -> list[dict[str, Any]]:
        index, events = self._place(item)
        where = {"item_id": item["id"], "output_index": index}
        return events + [_event("response.output_item.added", output_index=index, item={**item, "tools": []}),
                         _event("response.mcp_list_tools.in_progress", **where),
                         _event("response.mcp_list_tools.completed", **where),
                         _event("response.output_item.done", output_index=index, item=item)]

    def _started(self, started: McpCallStarted) -> list[dict[str, Any]]:
        item = started.item
        index, events = self._place(item)
        self._places[item["id"]] = index
        if started.approval:  # shown whole, once written
            return events
        return events + [_event("response.output_item.added", output_index=index, item=item),
                         _event("response.mcp_call.in_progress", item_id=item["id"], output_index=index)]

    def _arguments(self, delta: McpArgumentsDelta) -> list[dict[str, Any]]:
        self._streamed.add(delta.item_id)
        index = self._places[delta.item_id]
        self.items[index]["arguments"] += delta.delta  # as written so far, should the output end here
        return [_event("response.mcp_call_arguments.delta", item_id=delta.item_id, output_index=index,
                       delta=delta.delta)]

    def _done(self, item: Item) -> list[dict[str, Any]]:
        index = self._places.pop(item["id"])
        self.items[index] = item
        where = {"item_id": item["id"], "output_index": index}
        events = []
        if item["id"] not in self._streamed and item["arguments"]:
            events.append(_event("response.mcp_call_arguments.delta", **where, delta=item["arguments"]))
        ending = "failed" if item.get("error") else "completed"
        return events + [_event("response.mcp_call_arguments.done", **where, arguments=item["arguments"]),
                         _event(f"response.mcp_call.{ending}", **where),
                         _event("response.output_item.done", output_index=index, item=item)]
