// One turn sent and streamed: the request body from the conversation's settings, and the answer
// as it grows from /api/v1/chat's events (load, prompt progress, reasoning, text, stats).

import { streamChat } from "./api.js";

// Settings the page offers, each a field of /api/v1/chat; an empty one is left to the server
export const SETTINGS = [
  { key: "system_prompt", label: "System prompt", kind: "text" },
  { key: "preset", label: "Preset", kind: "string", hint: "a preset's name" },
  { key: "temperature", label: "Temperature", kind: "number", min: 0, max: 1, step: 0.05 },
  { key: "max_output_tokens", label: "Max tokens", kind: "integer", min: 1 },
  { key: "top_p", label: "Top P", kind: "number", min: 0, max: 1, step: 0.05 },
  { key: "top_k", label: "Top K", kind: "integer", min: 0 },
  { key: "min_p", label: "Min P", kind: "number", min: 0, max: 1, step: 0.01 },
  { key: "repeat_penalty", label: "Repeat penalty", kind: "number", min: 0, step: 0.05 },
  // offered for a model whose template reasons: the options /api/v1/models lists for it
  { key: "reasoning", label: "Reasoning", kind: "choice" },
  // remote MCP servers whose tools the server runs (its settings must allow per-request MCP)
  { key: "mcp_servers", label: "MCP servers", kind: "lines", hint: "one a line: [label] https://host/mcp" },
];

// "label url" or "url" a line -> LM Studio's ephemeral MCP integrations
export function integrations(lines) {
  return lines
    .split("\n")
    .map((line) => line.trim().split(/\s+/).filter(Boolean))
    .filter((words) => words.length > 0)
    .map((words, i) => ({
      type: "ephemeral_mcp",
      server_label: words.length > 1 ? words[0] : `mcp${i + 1}`,
      server_url: words[words.length - 1],
    }));
}

export function reasoningOptions(model) {
  return model?.capabilities?.reasoning?.allowed_options || [];
}

// `reasoningAllowed`: the model's options; a choice made for another model is left out
export function requestBody(model, text, previous, settings, reasoningAllowed = [], images = []) {
  // LM Studio's image items join the text item before them: one user message
  const input = images.length ? [{ type: "text", content: text }, ...images.map((url) => ({ type: "image", data_url: url }))] : text;
  const body = { model, input };
  if (previous) body.previous_response_id = previous;
  for (const { key, kind } of SETTINGS) {
    const value = settings[key];
    if (value === undefined || value === null || value === "") continue;
    if (kind === "choice" && !reasoningAllowed.includes(value)) continue;
    if (kind === "lines") {
      const found = integrations(value);
      if (found.length) body.integrations = found;
      continue;
    }
    body[key] = kind === "number" || kind === "integer" ? Number(value) : value;
  }
  return body;
}

// Streams one turn into `answer` (mutated), calling changed() after each event
export async function streamTurn(body, answer, changed, signal) {
  await streamChat(
    body,
    (type, event) => {
      follow(answer, type, event);
      changed();
    },
    signal,
  );
}

function follow(answer, type, event) {
  switch (type) {
    case "chat.start":
      answer.model = event.model_instance_id;
      break;
    case "model_load.start":
      answer.phase = "Loading the model…";
      break;
    case "model_load.progress":
      answer.phase = `Loading the model… ${Math.round(event.progress * 100)}%`;
      break;
    case "prompt_processing.start":
      answer.phase = "Reading the prompt…";
      break;
    case "prompt_processing.progress":
      answer.phase = `Reading the prompt… ${Math.round(event.progress * 100)}%`;
      break;
    case "prompt_processing.end":
      answer.phase = "";
      break;
    case "reasoning.delta":
      answer.reasoning += event.content;
      break;
    case "message.delta":
      answer.text += event.content;
      break;
    case "tool_call.start":
      answer.tools = [...(answer.tools || []), { tool: event.tool, server: event.provider_info?.server_label, running: true }];
      break;
    case "tool_call.arguments":
    case "tool_call.success": {
      const call = answer.tools?.[answer.tools.length - 1];
      if (call) Object.assign(call, { arguments: event.arguments, output: event.output, running: type !== "tool_call.success" });
      break;
    }
    case "tool_call.failure": {
      // a call that errored, timed out or lost its server: the model reads the reason, and so does the user
      const call = answer.tools?.[answer.tools.length - 1];
      if (call) Object.assign(call, { output: event.reason, running: false, failed: true });
      break;
    }
    case "error":
      answer.error = event.error?.message || "The answer failed.";
      break;
    case "chat.end":
      answer.stats = event.result.stats;
      answer.response_id = event.result.response_id || null;
      if (event.result.storage_error) answer.error = `Not stored: ${event.result.storage_error.message}`;
      break;
    default:
      break;
  }
}

const STOP_WORDS = {
  eosFound: "end of answer",
  stopStringFound: "stop string",
  maxPredictedTokensReached: "token limit",
  contextLengthReached: "context full",
  userStopped: "stopped",
};

export function statsLine(stats) {
  if (!stats) return [];
  const parts = [];
  // a rate after the first token: none for an answer of one token
  if (stats.tokens_per_second !== undefined && stats.total_output_tokens > 1) parts.push(`${stats.tokens_per_second.toFixed(1)} tok/s`);
  if (stats.time_to_first_token_seconds !== undefined) {
    parts.push(`${stats.time_to_first_token_seconds.toFixed(2)} s to first token`);
  }
  if (stats.total_output_tokens !== undefined) parts.push(`${stats.total_output_tokens} tokens`);
  if (stats.model_load_time_seconds !== undefined) parts.push(`loaded in ${stats.model_load_time_seconds.toFixed(1)} s`);
  if (stats.stop_reason) parts.push(`stop: ${STOP_WORDS[stats.stop_reason] || stats.stop_reason}`);
  return parts;
}
