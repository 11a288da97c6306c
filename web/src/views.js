// The page's parts that only show state and report what the user does: App (app.js) owns the state.

import { html } from "./html.js";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { SETTINGS, statsLine } from "./chat.js";
import { renderMarkdown } from "./markdown.js";

export function Sidebar({ conversations, currentId, open, onPick, onNew, onDelete, onToken }) {
  return html`
    <aside class=${`sidebar${open ? " open" : ""}`} aria-label="Conversations">
      <div class="brand">studiolo</div>
      <button class="new-chat" type="button" onClick=${onNew}>+ New chat</button>
      <ul class="conversations">
        ${conversations.map(
          (c) => html`
            <li key=${c.id} class=${c.id === currentId ? "current" : ""} data-id=${c.id}>
              <button class="pick" type="button" title=${c.title} onClick=${() => onPick(c.id)}>${c.title}</button>
              <button class="delete" type="button" title="Delete this conversation" aria-label="Delete"
                onClick=${() => onDelete(c.id)}>×</button>
            </li>
          `,
        )}
      </ul>
      <button class="token-button" type="button" onClick=${onToken}>API token…</button>
    </aside>
  `;
}

export function ModelPicker({ models, value, onChange, disabled }) {
  const loaded = models.filter((m) => m.loaded_instances.length > 0);
  const onDisk = models.filter((m) => m.loaded_instances.length === 0);
  const option = (m) => html`<option key=${m.key} value=${m.key} title=${m.display_name}>${m.key}</option>`;
  return html`
    <select class="model-picker" aria-label="Model" value=${value || ""} disabled=${disabled}
      onChange=${(e) => onChange(e.currentTarget.value)}>
      ${!value && html`<option value="">Pick a model</option>`}
      ${loaded.length > 0 && html`<optgroup label="Loaded">${loaded.map(option)}</optgroup>`}
      ${onDisk.length > 0 && html`<optgroup label="On disk (loads when used)">${onDisk.map(option)}</optgroup>`}
    </select>
  `;
}

function SettingField({ spec, value, onChange, choices }) {
  const id = `setting-${spec.key}`;
  if (spec.kind === "choice" && choices.length === 0) return null; // the model offers none
  const input =
    spec.kind === "text"
      ? html`<textarea id=${id} rows="3" value=${value ?? ""} onInput=${(e) => onChange(e.currentTarget.value)} />`
      : spec.kind === "lines"
      ? html`<textarea id=${id} rows="2" value=${value ?? ""} placeholder=${spec.hint} onInput=${(e) => onChange(e.currentTarget.value)} />`
      : spec.kind === "choice"
      ? html`<select id=${id} value=${choices.includes(value) ? value : ""} onChange=${(e) => onChange(e.currentTarget.value)}>
          <option value="">default</option>${choices.map((c) => html`<option key=${c} value=${c}>${c}</option>`)}</select>`
      : html`<input id=${id} type=${spec.kind === "string" ? "text" : "number"} value=${value ?? ""}
          min=${spec.min} max=${spec.max} step=${spec.kind === "integer" ? 1 : spec.step} placeholder=${spec.hint || "default"}
          onInput=${(e) => onChange(e.currentTarget.value)} />`;
  return html`<label class=${`setting ${spec.kind}`} for=${id}><span>${spec.label}</span>${input}</label>`;
}

export function SettingsPanel({ settings, reasoning, onChange, onClose }) {
  return html`
    <section class="settings" aria-label="Settings of this conversation">
      <div class="settings-head"><strong>Settings of this conversation</strong>
        <button type="button" class="close" onClick=${onClose} aria-label="Close settings">×</button></div>
      <div class="settings-grid">
        ${SETTINGS.map(
          (spec) => html`<${SettingField} key=${spec.key} spec=${spec} value=${settings[spec.key]} choices=${reasoning}
            onChange=${(value) => onChange({ ...settings, [spec.key]: value })} />`,
        )}
      </div>
      <p class="hint">Empty fields take the server's defaults (a preset's, the model's, LM Studio's).</p>
    </section>
  `;
}

function Reasoning({ text, streaming }) {
  return html`
    <details class="reasoning">
      <summary>${streaming ? "Thinking…" : "Reasoning"}</summary>
      <div class="reasoning-text">${text}</div>
    </details>
  `;
}

// The clipboard, where the browser offers it (a secure context: this machine, or HTTPS)
async function copied(text, button) {
  await navigator.clipboard.writeText(text);
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = label), 1200);
}

// A code block's Copy button (made by markdown.js inside the rendered HTML)
function copyCode(e) {
  const button = e.target.closest?.(".copy-code");
  const code = button?.parentElement.querySelector("code");
  if (code && navigator.clipboard) copied(code.textContent, button);
}

function ToolCall({ call }) {
  const args = typeof call.arguments === "string" ? call.arguments : JSON.stringify(call.arguments ?? {});
  return html`
    <details class="tool-call">
      <summary>${call.running ? "Calling" : call.failed ? "Failed calling" : "Called"} <code>${call.tool}</code>${call.server && ` on ${call.server}`}</summary>
      <div class="tool-io"><span>arguments</span><pre>${args}</pre><span>result</span><pre>${call.output ?? "…"}</pre></div>
    </details>
  `;
}

function Answer({ answer, last, busy, onRegenerate, onBranch }) {
  const stats = statsLine(answer.stats);
  const canCopy = Boolean(navigator.clipboard) && !answer.streaming && answer.text;
  // rendered only when its text changes: while one answer streams, the turns above it are not redone
  const rendered = useMemo(() => renderMarkdown(answer.text), [answer.text]);
  return html`
    <div class="message assistant" data-response-id=${answer.response_id || ""} data-model=${answer.model || ""}>
      ${answer.reasoning && html`<${Reasoning} text=${answer.reasoning} streaming=${answer.streaming && !answer.text} />`}
      ${answer.tools?.map((call, i) => html`<${ToolCall} key=${i} call=${call} />`)}
      ${answer.phase && html`<div class="phase">${answer.phase}</div>`}
      <div class="markdown" onClick=${copyCode} dangerouslySetInnerHTML=${{ __html: rendered }} />
      ${answer.streaming && !answer.phase && html`<span class="cursor" aria-hidden="true"></span>`}
      ${answer.error && html`<div class="answer-error" role="alert">${answer.error}</div>`}
      <div class="answer-foot">
        ${answer.model && html`<span class="answer-model">${answer.model}</span>`}
        ${stats.map((part) => html`<span class="stat">${part}</span>`)}
        ${answer.stopped && !answer.response_id && html`<span class="stat">not stored</span>`}
        ${canCopy && html`<button type="button" class="link copy" onClick=${(e) => copied(answer.text, e.currentTarget)}>Copy</button>`}
        ${!busy && last && html`<button type="button" class="link regenerate" onClick=${onRegenerate}>Regenerate</button>`}
        ${!busy && answer.response_id && html`<button type="button" class="link branch" onClick=${onBranch}>Branch</button>`}
      </div>
    </div>
  `;
}

function Images({ urls, onRemove }) {
  if (!urls?.length) return null;
  return html`
    <div class="images">
      ${urls.map(
        (url, i) => html`<span class="image" key=${i}><img src=${url} alt=${`image ${i + 1}`} />
          ${onRemove && html`<button type="button" class="remove" aria-label="Remove image" onClick=${() => onRemove(i)}>×</button>`}</span>`,
      )}
    </div>
  `;
}

function UserMessage({ text, images, busy, onEdit }) {
  const [editing, setEditing] = useState(false);
  const [draft, setDraft] = useState(text);
  if (editing) {
    const send = () => {
      setEditing(false);
      onEdit(draft);
    };
    return html`
      <div class="message user editing">
        <textarea class="edit" value=${draft} onInput=${(e) => setDraft(e.currentTarget.value)}
          onKeyDown=${(e) => e.key === "Enter" && !e.shiftKey && !e.isComposing && (e.preventDefault(), send())} />
        <div class="edit-actions">
          <button type="button" onClick=${() => setEditing(false)}>Cancel</button>
          <button type="button" class="primary" onClick=${send}>Send</button>
        </div>
      </div>
    `;
  }
  return html`
    <div class="message user">
      <${Images} urls=${images} />
      <div class="user-text">${text}</div>
      ${!busy && html`<button type="button" class="link edit-button" onClick=${() => (setDraft(text), setEditing(true))}>Edit</button>`}
    </div>
  `;
}

export function Messages({ shown, busy, loading, onEdit, onRegenerate, onBranch }) {
  const end = useRef(null);
  const last = shown[shown.length - 1];
  useEffect(() => end.current?.scrollIntoView({ block: "end" }), [shown.length, last?.answer.text, last?.answer.reasoning]);
  if (loading) return html`<section class="messages"><p class="empty">Reading the conversation…</p></section>`;
  if (shown.length === 0) {
    return html`<section class="messages"><p class="empty">Pick a model, write a message, press Enter.</p></section>`;
  }
  return html`
    <section class="messages" aria-live="polite">
      ${shown.map(
        (entry, index) => html`
          <div class="turn" key=${entry.key}>
            <${UserMessage} text=${entry.user} images=${entry.images} busy=${busy} onEdit=${(text) => onEdit(index, text)} />
            <${Answer} answer=${entry.answer} last=${index === shown.length - 1} busy=${busy}
              onRegenerate=${() => onRegenerate(index)} onBranch=${() => onBranch(index)} />
          </div>
        `,
      )}
      <div ref=${end} />
    </section>
  `;
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export function Composer({ busy, disabled, vision, onSend, onStop }) {
  const [text, setText] = useState("");
  const [images, setImages] = useState([]);
  const send = () => {
    if (busy || disabled || !text.trim()) return;
    onSend(text, vision ? images : []);
    setText("");
    setImages([]);
  };
  const attach = async (e) => {
    const input = e.currentTarget; // gone from the event once it has been dispatched
    const added = await Promise.all([...input.files].map(dataUrl));
    input.value = "";
    setImages((before) => [...before, ...added]);
  };
  const keyDown = (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  };
  return html`
    <form class="composer" onSubmit=${(e) => (e.preventDefault(), send())}>
      ${vision && html`<${Images} urls=${images} onRemove=${(i) => setImages(images.filter((_, j) => j !== i))} />`}
      ${vision && html`<label class="attach" title="Attach images">+<input type="file" class="attach-input"
        accept="image/png,image/jpeg,image/webp,image/gif,image/bmp" multiple onChange=${attach} /></label>`}
      <textarea class="prompt" rows="2" placeholder="Message (Enter sends, Shift+Enter new line, Esc stops)"
        aria-label="Message" value=${text} onInput=${(e) => setText(e.currentTarget.value)} onKeyDown=${keyDown} />
      ${busy
        ? html`<button type="button" class="stop" onClick=${onStop}>Stop</button>`
        : html`<button type="submit" class="send primary" disabled=${disabled || !text.trim()}>Send</button>`}
    </form>
  `;
}

export function TokenDialog({ message, onSave, onCancel }) {
  const [value, setValue] = useState("");
  return html`
    <div class="overlay">
      <form class="token-dialog" role="dialog" aria-label="API token"
        onSubmit=${(e) => (e.preventDefault(), onSave(value.trim()))}>
        <h2>API token</h2>
        <p>${message || "This server asks for an API token."} Make one with <code>studiolo token create</code>;
          it stays in this browser only.</p>
        <input type="password" class="token-input" autocomplete="off" placeholder="sk-lm-…" value=${value}
          onInput=${(e) => setValue(e.currentTarget.value)} />
        <div class="dialog-actions">
          <button type="button" onClick=${onCancel}>Cancel</button>
          <button type="button" onClick=${() => onSave("")}>Forget token</button>
          <button type="submit" class="primary" disabled=${!value.trim()}>Use token</button>
        </div>
      </form>
    </div>
  `;
}
