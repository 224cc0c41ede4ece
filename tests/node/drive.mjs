// Drives the Vercel AI SDK's @ai-sdk/openai (the Responses model OpenCode uses) over
// answers our Python translator produced, through a custom fetch: no network.
//
// Usage: node drive.mjs <dir>   (run from the folder holding node_modules)
// <dir>/manifest.json: {"stream": [case names], "generate": [case names]};
// <dir>/<name>.sse is a translated event stream, <dir>/<name>.json a response object.
// Prints one JSON document: what each SDK pairing made of each answer.

import { readFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.argv[2];
const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));

const PAIRINGS = [
  { label: "pinned", ai: "ai", openai: "@ai-sdk/openai" },
  { label: "latest", ai: "ai-latest", openai: "@ai-sdk/openai-latest" },
];

function version(name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, "utf8")).version;
}

// Serves `body` in small pieces so the SDK's SSE parser sees split events.
function chunked(body, size = 53) {
  let offset = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= body.length) {
        controller.close();
        return;
      }
      controller.enqueue(body.subarray(offset, offset + size));
      offset += size;
    },
  });
}

function makeFetch(answer, requests) {
  return async (url, init) => {
    requests.push({ url: String(url), body: JSON.parse(init.body) });
    return answer();
  };
}

function errorInfo(error) {
  if (error == null) return null;
  return {
    name: error.name ?? null,
    message: String(error.message ?? error),
    statusCode: error.statusCode ?? null,
    isRetryable: error.isRetryable ?? null,
  };
}

async function runStream(sdk, name, tools) {
  const body = readFileSync(join(dir, `${name}.sse`));
  const requests = [];
  const provider = sdk.openai.createOpenAI({
    apiKey: "test-key",
    baseURL: "http://portal.invalid/v1",
    fetch: makeFetch(
      () =>
        new Response(chunked(body), {
          status: 200,
          headers: { "content-type": "text/event-stream" },
        }),
      requests,
    ),
  });
  const out = { text: "", reasoning: "", toolCalls: [], errors: [], finish: null };
  const result = sdk.ai.streamText({
    model: provider("coder-model"),
    system: "You are terse.",
    prompt: "hi",
    tools,
    maxRetries: 0,
    providerOptions: { openai: { store: false } },
    onError: () => {},
  });
  for await (const part of result.fullStream) {
    if (part.type === "text-delta") out.text += part.text;
    else if (part.type === "reasoning-delta") out.reasoning += part.text;
    else if (part.type === "tool-call")
      out.toolCalls.push({ id: part.toolCallId, name: part.toolName, input: part.input });
    else if (part.type === "error") out.errors.push(errorInfo(part.error));
    else if (part.type === "finish")
      out.finish = { reason: part.finishReason, usage: part.totalUsage };
  }
  out.requests = requests;
  return out;
}

async function runGenerate(sdk, name, tools) {
  const body = readFileSync(join(dir, `${name}.json`), "utf8");
  const requests = [];
  const provider = sdk.openai.createOpenAI({
    apiKey: "test-key",
    baseURL: "http://portal.invalid/v1",
    fetch: makeFetch(
      () =>
        new Response(body, {
          status: 200,
          headers: { "content-type": "application/json" },
        }),
      requests,
    ),
  });
  const result = await sdk.ai.generateText({
    model: provider("coder-model"),
    prompt: "hi",
    tools,
    maxRetries: 0,
  });
  return {
    text: result.text,
    reasoning: result.reasoningText ?? "",
    toolCalls: result.toolCalls.map((c) => ({
      id: c.toolCallId,
      name: c.toolName,
      input: c.input,
    })),
    errors: [],
    finish: { reason: result.finishReason, usage: result.usage },
    requests,
  };
}

async function run(pairing) {
  const sdk = {
    ai: await import(pairing.ai),
    openai: await import(pairing.openai),
  };
  const schema = (props) =>
    sdk.ai.jsonSchema({ type: "object", properties: props, additionalProperties: true });
  const tools = {
    read: sdk.ai.tool({ description: "read a file", inputSchema: schema({ filePath: { type: "string" } }) }),
    glob: sdk.ai.tool({ description: "find files", inputSchema: schema({ pattern: { type: "string" } }) }),
  };
  const results = {};
  for (const name of manifest.stream) {
    try {
      results[`stream:${name}`] = await runStream(sdk, name, tools);
    } catch (error) {
      results[`stream:${name}`] = { thrown: errorInfo(error) };
    }
  }
  for (const name of manifest.generate) {
    try {
      results[`generate:${name}`] = await runGenerate(sdk, name, tools);
    } catch (error) {
      results[`generate:${name}`] = { thrown: errorInfo(error) };
    }
  }
  return {
    versions: { ai: version(pairing.ai), openai: version(pairing.openai) },
    results,
  };
}

const report = {};
for (const pairing of PAIRINGS) report[pairing.label] = await run(pairing);
process.stdout.write(JSON.stringify(report));
