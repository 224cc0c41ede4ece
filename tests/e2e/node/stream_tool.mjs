// The Vercel AI SDK (ai 6 + @ai-sdk/openai 3, what OpenCode 1.18 pins) calling
// streamText with a tool through an HTTP proxy (mitmdump with our addon).
//
// Usage: node stream_tool.mjs <proxy url>   (run from the folder holding node_modules)
// Node 20's global fetch ignores HTTPS_PROXY, so the provider gets a fetch that sends
// through undici's ProxyAgent; the proxy's CA comes from NODE_EXTRA_CA_CERTS.
// Prints one JSON document: the stream parts seen and the Responses requests sent.

import { createOpenAI } from "@ai-sdk/openai";
import { jsonSchema, stepCountIs, streamText, tool } from "ai";
import { ProxyAgent, fetch as undiciFetch } from "undici";

const agent = new ProxyAgent(process.argv[2]);
const requests = [];

async function proxiedFetch(url, init) {
  requests.push({
    url: String(url),
    authorization: new Headers(init?.headers).get("authorization"),
    body: init?.body ? JSON.parse(init.body) : null,
  });
  return undiciFetch(url, { ...init, dispatcher: agent });
}

const provider = createOpenAI({
  apiKey: "sk-ai-sdk-placeholder",
  baseURL: "https://portal.qwen.ai/v1",
  fetch: proxiedFetch,
});

const out = {
  text: "",
  toolCalls: [],
  toolResults: [],
  steps: [],
  errors: [],
  finish: null,
};
try {
  const result = streamText({
    model: provider("coder-model"),
    prompt: "What is the weather in Paris?",
    tools: {
      weather: tool({
        description: "The weather in a city.",
        inputSchema: jsonSchema({
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
          additionalProperties: false,
        }),
        execute: async ({ city }) => `sunny in ${city}`,
      }),
    },
    stopWhen: stepCountIs(3),
    maxRetries: 0,
    providerOptions: { openai: { store: false } },
    onError: () => {},
  });
  for await (const part of result.fullStream) {
    if (part.type === "text-delta") out.text += part.text;
    else if (part.type === "tool-call")
      out.toolCalls.push({ id: part.toolCallId, name: part.toolName, input: part.input });
    else if (part.type === "tool-result")
      out.toolResults.push({ id: part.toolCallId, output: part.output });
    else if (part.type === "finish-step")
      out.steps.push({ reason: part.finishReason, usage: part.usage });
    else if (part.type === "finish")
      out.finish = { reason: part.finishReason, usage: part.totalUsage };
    else if (part.type === "error")
      out.errors.push(String(part.error?.message ?? part.error));
  }
} catch (error) {
  out.errors.push(`thrown: ${error?.message ?? error}`);
} finally {
  await agent.close();
}
out.requests = requests;
process.stdout.write(JSON.stringify(out));
