// Every call the page makes to the server: the token the user typed (kept in localStorage) goes
// with each one, errors become ApiError with words a person can read, and a streamed
// /api/v1/chat is read as its named server-sent events.

const TOKEN_KEY = "studiolo.token";

export const token = {
  get: () => localStorage.getItem(TOKEN_KEY) || "",
  set: (value) => (value ? localStorage.setItem(TOKEN_KEY, value) : localStorage.removeItem(TOKEN_KEY)),
};

export class ApiError extends Error {
  constructor(message, status = 0, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
  get needsToken() {
    return this.status === 401;
  }
}

function headers(json) {
  const out = json ? { "Content-Type": "application/json" } : {};
  const value = token.get();
  if (value) out.Authorization = `Bearer ${value}`;
  return out;
}

// The words of an error body in any of the server's shapes (LM Studio v1, OpenAI)
async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    const error = body.error || body;
    if (error.message) message = error.message;
    code = error.code || null;
  } catch {
    // not JSON: the status line says it
  }
  if (response.status === 401) message = `This server needs an API token: ${message}`;
  if (response.status === 403) message = `The API token may not do this: ${message}`;
  return new ApiError(message, response.status, code);
}

export async function call(method, path, body, signal) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body !== undefined ? JSON.stringify(body) : undefined,
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("The server did not answer: is it still running?");
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJson(path) {
  return (await call("GET", path)).json();
}

// POST /api/v1/chat with stream: true; onEvent(type, data) for each event, in order
export async function streamChat(body, onEvent, signal) {
  const response = await call("POST", "/api/v1/chat", { ...body, stream: true }, signal);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) {
        const event = JSON.parse(data);
        onEvent(event.type, event);
      }
    }
  }
}
