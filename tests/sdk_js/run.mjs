// LM Studio's JavaScript SDK (@lmstudio/sdk) against a running studiolo: tests/test_sdk_js.py runs
// this script and checks what it prints.
//
//   node run.mjs '<config as JSON>'
//
// config: {baseUrl: "ws://127.0.0.1:<port>", apiToken?, llm, toolModel?, embedding?, vision?,
//          image?: a file's path, steps: [names of the steps below, run in that order]}
//
// Prints one JSON object on stdout: {<step>: {ok: <what it returned>} or {error: <message>}}. A step
// that fails does not stop the ones after it; the test says which it expects to fail.

import { LMStudioClient, rawFunctionTool } from "@lmstudio/sdk";

const config = JSON.parse(process.argv[2]);
const PROMPT = [{ role: "user", content: "Name three colors." }];
const GREEDY = { temperature: 0, maxTokens: 12 };

// the SDK logs to stdout by default: stdout carries the results alone, its log goes to stderr
const toStderr = (...args) => console.error(...args);
const logger = { debug() {}, info: toStderr, warn: toStderr, error: toStderr };

function connect() {
  const options = { baseUrl: config.baseUrl, logger };
  if (config.apiToken !== undefined) options.apiToken = config.apiToken;
  return new LMStudioClient(options);
}

const summary = (result) => ({
  content: result.content,
  stopReason: result.stats.stopReason,
  predictedTokensCount: result.stats.predictedTokensCount,
  promptTokensCount: result.stats.promptTokensCount,
});

const steps = {
  async version(client) {
    return await client.system.getLMStudioVersion();
  },

  async listDownloaded(client) {
    const models = await client.system.listDownloadedModels();
    return models.map((m) => ({ modelKey: m.modelKey, type: m.type })).sort((a, b) => a.modelKey.localeCompare(b.modelKey));
  },

  async model(client) {
    const model = await client.llm.model(config.llm);
    return { identifier: model.identifier, modelKey: model.modelKey, contextLength: await model.getContextLength() };
  },

  async listLoaded(client) {
    const llms = await client.llm.listLoaded();
    const embeddings = await client.embedding.listLoaded();
    return { llm: llms.map((m) => m.identifier).sort(), embedding: embeddings.map((m) => m.identifier).sort() };
  },

  async respond(client) {
    const model = await client.llm.model(config.llm);
    return summary(await model.respond(PROMPT, GREEDY));
  },

  async respondStream(client) {
    const model = await client.llm.model(config.llm);
    const prediction = model.respond(PROMPT, GREEDY);
    const fragments = [];
    for await (const fragment of prediction) fragments.push(fragment.content);
    return { fragments, ...summary(await prediction.result()) };
  },

  async complete(client) {
    const model = await client.llm.model(config.llm);
    return summary(await model.complete("The capital of France is", GREEDY));
  },

  async cancel(client) {
    const model = await client.llm.model(config.llm);
    const prediction = model.respond([{ role: "user", content: "Write a long story about a dragon." }],
      { temperature: 0, maxTokens: 400 });
    let fragments = 0;
    for await (const _fragment of prediction) {
      fragments += 1;
      if (fragments === 2) await prediction.cancel();
    }
    const result = await prediction.result();
    return { fragments, stopReason: result.stats.stopReason, predictedTokensCount: result.stats.predictedTokensCount };
  },

  async act(client) {
    const model = await client.llm.model(config.toolModel);
    const calls = [];
    const add = rawFunctionTool({
      name: "add",
      description: "Adds two integers and returns their sum.",
      parametersJsonSchema: {
        type: "object",
        properties: { a: { type: "integer" }, b: { type: "integer" } },
        required: ["a", "b"],
      },
      implementation: ({ a, b }) => {
        calls.push([a, b]);
        return a + b;
      },
    });
    const messages = [];
    const result = await model.act([{ role: "user", content: "Use the add tool to add 2 and 3." }], [add], {
      temperature: 0,
      maxTokens: 48,
      maxPredictionRounds: 2,
      onMessage: (message) => messages.push({ role: message.getRole(), text: message.getText() }),
    });
    return { rounds: result.rounds, calls, messages };
  },

  async embed(client) {
    const model = await client.embedding.model(config.embedding);
    const one = await model.embed("The quick brown fox.");
    const many = await model.embed(["The quick brown fox.", "A lazy dog."]);
    return {
      identifier: model.identifier,
      one: one.embedding,
      many: many.map((item) => item.embedding),
      tokens: await model.tokenize("The quick brown fox."),
      count: await model.countTokens("The quick brown fox."),
    };
  },

  async image(client) {
    const file = await client.files.prepareImage(config.image);
    const model = await client.llm.model(config.vision);
    const result = await model.respond(
      [{ role: "user", content: "What is in this image?", images: [file] }], { temperature: 0, maxTokens: 6 });
    return { file: { name: file.name, type: file.type, sizeBytes: file.sizeBytes }, ...summary(result) };
  },

  async unload(client) {
    const model = await client.llm.model(config.llm);
    await model.unload();
    return (await client.llm.listLoaded()).map((m) => m.identifier);
  },
};

async function main() {
  const results = {};
  let client;
  try {
    client = connect();
  } catch (error) {
    results.connect = { error: String(error.message ?? error) };
  }
  if (client !== undefined) {
    for (const name of config.steps) {
      try {
        results[name] = { ok: await steps[name](client) };
      } catch (error) {
        results[name] = { error: String(error.message ?? error) };
      }
    }
  }
  process.stdout.write(JSON.stringify(results) + "\n");
  // the SDK's sockets would keep Node running: the results are out, so leave
  process.exit(0);
}

await main();
