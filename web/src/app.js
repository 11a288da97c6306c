// The page's state and what each action does to it: the models, the conversations (kept by
// conversations.js), the turns shown, the one answer being streamed, errors and the token prompt.

import { useEffect, useRef, useState } from "preact/hooks";
import { getJson, token } from "./api.js";
import { reasoningOptions, requestBody, streamTurn } from "./chat.js";
import { deleteStored, loadAll, newConversation, readTurn, saveAll, titleOf } from "./conversations.js";
import { html } from "./html.js";
import { Composer, Messages, ModelPicker, SettingsPanel, Sidebar, TokenDialog } from "./views.js";

const CURRENT_KEY = "studiolo.current";
let keys = 0;
const entryKey = () => `t${++keys}`;

function storedTurns(entries) {
  return entries
    .filter((entry) => entry.answer.response_id)
    .map(({ answer }) => ({ response_id: answer.response_id, stats: answer.stats, model: answer.model }));
}

async function readEntry(turn) {
  try {
    return { key: entryKey(), ...(await readTurn(turn)) };
  } catch (error) {
    const gone = error.status === 404 ? "This turn is no longer in the server's store." : error.message;
    return { key: entryKey(), user: "", answer: { text: "", reasoning: "", response_id: turn.response_id, error: gone }, error };
  }
}

export function App() {
  const [models, setModels] = useState([]);
  const [conversations, setConversations] = useState(loadAll);
  const [currentId, setCurrentId] = useState(() => localStorage.getItem(CURRENT_KEY));
  const [draft, setDraft] = useState({ model: "", settings: {} }); // a chat not sent yet
  const [shown, setShown] = useState([]);
  const [loading, setLoading] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const [tokenAsk, setTokenAsk] = useState(null);
  const [settingsOpen, setSettingsOpen] = useState(false);
  const [sidebarOpen, setSidebarOpen] = useState(false);
  const [reloads, setReloads] = useState(0);
  const controller = useRef(null);
  const loadedId = useRef(null); // the conversation whose turns `shown` holds: no reading them back

  const current = conversations.find((c) => c.id === currentId) || null;
  const model = current ? current.model : draft.model;
  const settings = current ? current.settings : draft.settings;
  const reasoning = reasoningOptions(models.find((m) => m.key === model));

  const fail = (failure) => {
    if (failure.needsToken) setTokenAsk(failure.message);
    else setError(failure.message);
  };

  const refreshModels = async () => {
    try {
      const listed = (await getJson("/api/v1/models")).models.filter((m) => m.type === "llm");
      setModels(listed);
      if (listed.length === 0) setError("This server has no chat model yet: get one with `studiolo get <model>`.");
      setDraft((d) => (d.model ? d : { ...d, model: (listed.find((m) => m.loaded_instances.length) || listed[0])?.key || "" }));
    } catch (failure) {
      fail(failure);
    }
  };

  // saved as they change, not in an effect after the next paint: a reload right after a change keeps it
  const changeConversations = (change) =>
    setConversations((list) => {
      const next = change(list);
      saveAll(next);
      return next;
    });
  const select = (id) => {
    if (id) localStorage.setItem(CURRENT_KEY, id);
    else localStorage.removeItem(CURRENT_KEY);
    setCurrentId(id);
  };

  useEffect(() => void refreshModels(), [reloads]);

  // a conversation picked (or the page reloaded): its turns read back from the server's store
  useEffect(() => {
    if (!current || loadedId.current === current.id) return;
    loadedId.current = current.id;
    setLoading(true);
    Promise.all(current.turns.map(readEntry)).then((entries) => {
      if (loadedId.current !== current.id) return;
      const refused = entries.find((entry) => entry.error?.needsToken);
      if (refused) {
        loadedId.current = null; // read again once a token is given
        fail(refused.error);
      }
      setShown(entries);
      setLoading(false);
    });
  }, [currentId, reloads]);

  useEffect(() => {
    const onKey = (e) => e.key === "Escape" && controller.current?.abort();
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, []);

  const update = (id, change) => changeConversations((list) => list.map((c) => (c.id === id ? { ...c, ...change } : c)));

  const vision = Boolean(models.find((m) => m.key === model)?.capabilities?.vision);

  const send = async (text, fromIndex = shown.length, images = []) => {
    if (!model) return setError("Pick a model first.");
    setError("");
    let conversation = current;
    if (!conversation) {
      conversation = { ...newConversation(model, settings), title: titleOf(text) };
      changeConversations((list) => [conversation, ...list]);
      select(conversation.id);
    }
    loadedId.current = conversation.id; // what is shown is this conversation's, and grows here
    const kept = shown.slice(0, fromIndex);
    const previous = storedTurns(kept).pop()?.response_id;
    const answer = { text: "", reasoning: "", phase: "", streaming: true, model, stats: null, response_id: null, error: "" };
    const entries = [...kept, { key: entryKey(), user: text, images, answer }];
    const keep = () => update(conversation.id, { turns: storedTurns(entries), model });
    const changed = () => {
      if (answer.response_id && !answer.kept) keep(); // stored: kept at once, before the page shows it
      answer.kept = Boolean(answer.response_id);
      if (loadedId.current === conversation.id) setShown([...entries]); // not once another chat is picked
    };
    changed();
    const abort = new AbortController();
    controller.current = abort;
    setBusy(true);
    try {
      await streamTurn(requestBody(model, text, previous, conversation.settings, reasoning, images), answer, changed, abort.signal);
    } catch (failure) {
      if (failure.name === "AbortError") {
        answer.stopped = true; // the server cancels the generation and stores nothing of it
        answer.stats = { ...(answer.stats || {}), stop_reason: "userStopped" };
      } else {
        answer.error = failure.message;
        if (failure.needsToken) setTokenAsk(failure.message);
      }
    } finally {
      Object.assign(answer, { streaming: false, phase: "" });
      controller.current = null;
      setBusy(false);
      changed();
      keep();
      refreshModels(); // a model may have loaded, or another been evicted
    }
  };

  const pick = (id) => {
    if (busy) controller.current?.abort();
    setSidebarOpen(false);
    if (id === currentId) return;
    loadedId.current = null;
    setShown([]);
    select(id);
  };

  const startNew = () => {
    if (busy) controller.current?.abort();
    setDraft({ model, settings: { ...settings } }); // the last chat's model and settings, to change at will
    loadedId.current = null;
    select(null);
    setShown([]);
    setSidebarOpen(false);
  };

  const remove = async (id) => {
    const conversation = conversations.find((c) => c.id === id);
    if (id === currentId && busy) controller.current?.abort();
    try {
      await deleteStored(conversation);
    } catch (failure) {
      return fail(failure);
    }
    changeConversations((list) => list.filter((c) => c.id !== id));
    if (id === currentId) {
      loadedId.current = null;
      select(null);
      setShown([]);
    }
  };

  const branch = (index) => {
    const entries = shown.slice(0, index + 1).map((entry) => ({ ...entry, key: entryKey(), answer: { ...entry.answer } }));
    const copy = { ...newConversation(model, settings), title: `${current?.title || "Chat"} (branch)`, turns: storedTurns(entries) };
    loadedId.current = copy.id;
    changeConversations((list) => [copy, ...list]);
    select(copy.id);
    setShown(entries);
  };

  const chooseModel = (key) => (current ? update(current.id, { model: key }) : setDraft({ ...draft, model: key }));
  const changeSettings = (next) => (current ? update(current.id, { settings: next }) : setDraft({ ...draft, settings: next }));
  const saveToken = (value) => {
    token.set(value);
    setTokenAsk(null);
    setError("");
    setReloads((n) => n + 1);
  };

  return html`
    <div class="app">
      <${Sidebar} conversations=${conversations} currentId=${currentId} open=${sidebarOpen} onPick=${pick}
        onNew=${startNew} onDelete=${remove} onToken=${() => setTokenAsk("")} />
      ${sidebarOpen && html`<div class="scrim" onClick=${() => setSidebarOpen(false)} />`}
      <main class="main">
        <header class="topbar">
          <button type="button" class="menu" aria-label="Conversations" onClick=${() => setSidebarOpen(!sidebarOpen)}>☰</button>
          <${ModelPicker} models=${models} value=${model} onChange=${chooseModel} disabled=${busy} />
          <button type="button" class=${`settings-button${settingsOpen ? " on" : ""}`} aria-label="Settings"
            onClick=${() => setSettingsOpen(!settingsOpen)}>Settings</button>
        </header>
        ${settingsOpen && html`<${SettingsPanel} settings=${settings} reasoning=${reasoning} onChange=${changeSettings} onClose=${() => setSettingsOpen(false)} />`}
        ${error && html`<div class="error-banner" role="alert"><span>${error}</span>
          <button type="button" class="close" aria-label="Dismiss" onClick=${() => setError("")}>×</button></div>`}
        <${Messages} shown=${shown} busy=${busy} loading=${loading} onEdit=${(index, text) => send(text, index, shown[index].images)}
          onRegenerate=${(index) => send(shown[index].user, index, shown[index].images)} onBranch=${branch} />
        <${Composer} busy=${busy} disabled=${!model} vision=${vision} onSend=${(text, images) => send(text, shown.length, images)} onStop=${() => controller.current?.abort()} />
      </main>
      ${tokenAsk !== null && html`<${TokenDialog} message=${tokenAsk} onSave=${saveToken} onCancel=${() => setTokenAsk(null)} />`}
    </div>
  `;
}
