// Conversations as the page keeps them: in localStorage, only what the server's store does not
// hold (the ids of each turn's stored response, its stats, the settings and the title); the text
// of each turn is read back from the store (GET /v1/responses/{id} and its input items).

import { call, getJson } from "./api.js";

const KEY = "studiolo.conversations";

export function loadAll() {
  try {
    const list = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

export function saveAll(list) {
  localStorage.setItem(KEY, JSON.stringify(list));
}

export function newConversation(model, settings) {
  return {
    id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`,
    title: "New chat",
    model,
    settings: { ...settings },
    turns: [], // {response_id, stats, model}
    created: Date.now(),
  };
}

export function titleOf(text) {
  const line = text.trim().split("\n")[0];
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || "New chat";
}

function textOfParts(content) {
  if (typeof content === "string") return content;
  return (content || []).map((part) => part.text || "").join("");
}

// The user's text of a turn: its input items' user messages
function userText(items) {
  return items
    .filter((item) => (item.type || "message") === "message" && item.role === "user")
    .map((item) => textOfParts(item.content))
    .join("\n\n");
}

// The images of a turn's user messages, as the data URLs (or URLs) they were sent with
function userImages(items) {
  return items
    .filter((item) => (item.type || "message") === "message" && item.role === "user" && Array.isArray(item.content))
    .flatMap((item) => item.content.filter((part) => part.type === "input_image" && part.image_url))
    .map((part) => part.image_url);
}

function answerOf(response) {
  let text = "";
  let reasoning = "";
  const tools = [];
  const results = Object.fromEntries(
    (response.output || []).filter((item) => item.type === "function_call_output").map((item) => [item.call_id, item.output]),
  );
  for (const item of response.output || []) {
    if (item.type === "message") text += textOfParts(item.content);
    if (item.type === "reasoning") reasoning += textOfParts(item.content) || textOfParts(item.summary);
    if (item.type === "function_call") {
      const args = (() => {
        try {
          return JSON.parse(item.arguments);
        } catch {
          return item.arguments;
        }
      })();
      tools.push({ tool: item.name, arguments: args, output: results[item.call_id] ?? "", server: item.provider_info?.server_label });
    }
  }
  return { text, reasoning, tools };
}

// One stored turn as the page shows it: {user, answer: {text, reasoning, ...}}
export async function readTurn(turn) {
  const id = encodeURIComponent(turn.response_id);
  const [response, items] = await Promise.all([
    getJson(`/v1/responses/${id}`),
    getJson(`/v1/responses/${id}/input_items?order=asc&limit=100`),
  ]);
  const answer = answerOf(response);
  return {
    user: userText(items.data || []),
    images: userImages(items.data || []),
    answer: {
      ...answer,
      response_id: turn.response_id,
      model: turn.model || response.model,
      stats: turn.stats || null,
      status: response.status,
    },
  };
}

export async function deleteStored(conversation) {
  for (const turn of conversation.turns) {
    try {
      await call("DELETE", `/v1/responses/${encodeURIComponent(turn.response_id)}`);
    } catch (error) {
      if (error.status !== 404) throw error; // gone already: nothing to delete
    }
  }
}
