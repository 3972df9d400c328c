// Unit checks of src/api.ts (the stream reader) in Node: `npm test`
// (node --test test/api.test.mjs).
// The browser tests cover the rest against the real backend.
import { test } from "node:test";
import assert from "node:assert/strict";
import { build } from "esbuild";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "widget-api-"));
await build({
  entryPoints: [new URL("../src/api.ts", import.meta.url).pathname],
  outfile: join(dir, "api.mjs"),
  bundle: true,
  format: "esm",
  platform: "neutral",
  logLevel: "error",
});
const { send, history, retryAfter, ApiError, SILENCE_MS } = await import(join(dir, "api.mjs"));
rmSync(dir, { recursive: true, force: true });

/** A fetch answering `chunks` (strings, sent one by one) with `headers`. */
const fakeFetch = (status, headers, chunks) => async () => {
  const enc = new TextEncoder();
  const body = new ReadableStream({
    start(c) {
      for (const ch of chunks) c.enqueue(typeof ch === "string" ? enc.encode(ch) : ch);
      c.close();
    },
  });
  return new Response(body, { status, headers });
};
const SSE = { "content-type": "text/event-stream" };

async function run(chunks, headers = SSE, status = 200) {
  globalThis.fetch = fakeFetch(status, headers, chunks);
  const seen = { session: [], delta: [] };
  try {
    const done = await send("http://api", "hi", null, "k", {
      session: (id) => seen.session.push(id),
      delta: (t) => seen.delta.push(t),
    });
    return { done, ...seen };
  } catch (error) {
    return { error, ...seen };
  }
}

const stream =
  'event: session\ndata: {"sessionId":"s1"}\n\n' +
  'event: delta\ndata: {"text":"Hello "}\n\n' +
  ": a comment line\n\n" +
  'event: delta\ndata: {"text":"wörld 🚚"}\n\n' +
  'event: done\ndata: {"reply":"Hello wörld 🚚","sessionId":"s1","messageId":"m1"}\n\n';

test("events in order, whole", async () => {
  const r = await run([stream]);
  assert.deepEqual(r.session, ["s1"]);
  assert.deepEqual(r.delta, ["Hello ", "wörld 🚚"]);
  assert.equal(r.done.reply, "Hello wörld 🚚");
  assert.equal(r.done.messageId, "m1");
});

test("events split at every byte (UTF-8 sequences cut in half)", async () => {
  const bytes = new TextEncoder().encode(stream);
  const r = await run([...bytes].map((b) => new Uint8Array([b])));
  assert.deepEqual(r.delta, ["Hello ", "wörld 🚚"]);
  assert.equal(r.done.reply, "Hello wörld 🚚");
});

test("CRLF line ends, split between CR and LF", async () => {
  const crlf = stream.replace(/\n/g, "\r\n");
  const parts = [];
  for (let i = 0; i < crlf.length; i += 7) parts.push(crlf.slice(i, i + 7));
  const r = await run(parts);
  assert.deepEqual(r.delta, ["Hello ", "wörld 🚚"]);
  assert.equal(r.done.sessionId, "s1");
});

test("event: error ends the stream; the message was stored", async () => {
  const r = await run([
    'event: session\ndata: {"sessionId":"s1"}\n\nevent: error\ndata: {"error":{"code":"service_unavailable","message":"x"}}\n\n',
  ]);
  assert.ok(r.error instanceof ApiError);
  assert.equal(r.error.code, "service_unavailable");
  assert.equal(r.error.stored, true);
});

test("a stream cut before done is an interruption", async () => {
  const r = await run(['event: session\ndata: {"sessionId":"s1"}\n\nevent: delta\ndata: {"text":"Hel']);
  assert.equal(r.error.code, "interrupted");
  assert.equal(r.error.stored, true);
  const before = await run(['event: delta\ndata: {"text":"Hel']);
  assert.equal(before.error.stored, false);
});

test("a JSON answer is accepted", async () => {
  const r = await run(['{"reply":"Hi","sessionId":"s2","handoff":true}'], { "content-type": "application/json" });
  assert.deepEqual(r.session, ["s2"]);
  assert.equal(r.done.reply, "Hi");
  assert.equal(r.done.handoff, true);
});

test("refusals carry status, code and Retry-After", async () => {
  const r = await run(['{"error":{"code":"rate_limited","message":"slow down"}}'], { "content-type": "application/json", "retry-after": "17" }, 429);
  assert.equal(r.error.status, 429);
  assert.equal(r.error.code, "rate_limited");
  assert.equal(r.error.retryAfter, 17);
  assert.equal(r.error.stored, false);
  const html = await run(["<html>Bad gateway</html>"], { "content-type": "text/html" }, 502);
  assert.equal(html.error.code, "http_502");
});

test("no answer at all is a network error", async () => {
  globalThis.fetch = async () => {
    throw new TypeError("Failed to fetch");
  };
  await assert.rejects(send("http://api", "hi", null, "k", { session() {}, delta() {} }), (e) => e.code === "network" && e.status === 0);
  await assert.rejects(history("http://api", "s", 5), (e) => e.code === "network");
});

test("history asks for a page with limit and before", async () => {
  let url;
  globalThis.fetch = async (u) => {
    url = u;
    return new Response('{"sessionId":"s","messages":[],"hasMore":true}', { headers: { "content-type": "application/json" } });
  };
  const h = await history("http://api", "s/1", 30, "m 1");
  assert.equal(url, "http://api/api/chat/history/s%2F1?limit=30&before=m%201");
  assert.equal(h.hasMore, true);
});

test("Retry-After as seconds or as an HTTP date", () => {
  assert.equal(retryAfter("5"), 5);
  assert.equal(retryAfter(null), 0);
  assert.equal(retryAfter("garbage"), 0);
  const d = new Date(Date.now() + 10_500).toUTCString();
  assert.ok([10, 11].includes(retryAfter(d)));
});

test("a silent API is given up on, before and during a stream", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  // No answer at all: the request is aborted after SILENCE_MS.
  globalThis.fetch = (_url, init) =>
    new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError"))));
  const silent = send("http://api", "hi", null, "k", { session() {}, delta() {} });
  t.mock.timers.tick(SILENCE_MS);
  await assert.rejects(silent, (e) => e.code === "network" && e.status === 0);
  // A stream that stops after `session`: interrupted, the message stored.
  globalThis.fetch = async (_url, init) => {
    const enc = new TextEncoder();
    const body = new ReadableStream({
      start(c) {
        c.enqueue(enc.encode('event: session\ndata: {"sessionId":"s1"}\n\n'));
        init.signal.addEventListener("abort", () => c.error(new DOMException("aborted", "AbortError")));
      },
    });
    return new Response(body, { headers: SSE });
  };
  let session = null;
  const stalled = send("http://api", "hi", null, "k", { session: (id) => (session = id), delta() {} });
  await new Promise((r) => setImmediate(r));
  t.mock.timers.tick(SILENCE_MS - 1);
  await new Promise((r) => setImmediate(r));
  assert.equal(session, "s1");
  t.mock.timers.tick(1);
  await assert.rejects(stalled, (e) => e.code === "interrupted" && e.stored === true);
});
