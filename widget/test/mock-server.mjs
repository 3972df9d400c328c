// A development aid: a small in-memory stand-in for the chat API that follows
// shared/CONTRACT.md (SSE stream with delays, JSON without the Accept header,
// history paging with limit/before/hasMore and status, 429 with Retry-After,
// CORS only for allowed origins). The browser tests in `make test` run against
// the real backend (scripts/widget-test.sh); this is for working on the widget
// without PostgreSQL, Redis or cargo-lambda:
//
//   node test/mock-server.mjs --port 9400 --origin http://127.0.0.1:8090 [--gap-ms 60]
//
// Messages steer it: "[[429]]" is refused with Retry-After: 5, "[[503]]" with
// 503, "[[json]]" answers JSON even to a stream request, "[[handoff]]" hands
// off, "[[cut]]" ends the stream without `done`.
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf("--" + name);
  return i >= 0 ? args[i + 1] : fallback;
};
const port = +opt("port", "9400");
const origins = opt("origin", "*").split(",");
const gap = +opt("gap-ms", "60");
const sessions = new Map(); // id -> { messages, status }
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function headers(req, extra = {}) {
  const h = { "content-type": "application/json", "cache-control": "no-store", vary: "Origin", ...extra };
  const o = req.headers.origin;
  if (o && (origins.includes("*") || origins.includes(o))) {
    h["access-control-allow-origin"] = o;
    h["access-control-expose-headers"] = "x-request-id, retry-after, idempotent-replayed";
  }
  return h;
}
function error(req, res, status, code, message, extra) {
  res.writeHead(status, headers(req, extra));
  res.end(JSON.stringify({ error: { code, message } }));
}

createServer(async (req, res) => {
  const url = new URL(req.url, "http://x");
  if (req.method === "OPTIONS") {
    const h = headers(req);
    if (h["access-control-allow-origin"]) {
      h["access-control-allow-methods"] = "GET, POST, OPTIONS";
      h["access-control-allow-headers"] = "content-type, idempotency-key";
      h["access-control-max-age"] = "600";
    }
    res.writeHead(204, h);
    return res.end();
  }
  const hist = url.pathname.match(/^\/api\/chat\/history\/([^/]+)$/);
  if (hist && req.method === "GET") {
    const id = decodeURIComponent(hist[1]);
    if (!UUID.test(id)) return error(req, res, 400, "invalid_session_id", "sessionId must be a UUID");
    const s = sessions.get(id.toLowerCase());
    if (!s) return error(req, res, 404, "session_not_found", "no such session");
    const limit = url.searchParams.has("limit") ? +url.searchParams.get("limit") : 500;
    if (!(limit >= 1 && limit <= 500)) return error(req, res, 400, "invalid_query", "limit must be 1 to 500");
    let end = s.messages.length;
    if (url.searchParams.has("before")) {
      end = s.messages.findIndex((m) => m.id === url.searchParams.get("before"));
      if (end < 0) return error(req, res, 400, "invalid_query", "before is not a message of this session");
    }
    const start = Math.max(0, end - limit);
    const body = { sessionId: id, messages: s.messages.slice(start, end), status: s.status };
    if (start > 0) body.hasMore = true;
    res.writeHead(200, headers(req));
    return res.end(JSON.stringify(body));
  }
  if (url.pathname !== "/api/chat" || req.method !== "POST") return error(req, res, 404, "not_found", "not found");

  let raw = "";
  for await (const c of req) raw += c;
  let body;
  try {
    body = JSON.parse(raw);
  } catch {
    return error(req, res, 400, "invalid_json", "body is not JSON");
  }
  const message = typeof body.message === "string" ? body.message.replace(/[\0-\x08\x0b-\x1f\x7f]/g, "").trim() : "";
  if (!message || [...message].length > 2000) return error(req, res, 400, "invalid_message", "message must be 1 to 2000 characters");
  if (message.includes("[[429]]")) return error(req, res, 429, "rate_limited", "too many requests", { "retry-after": "5" });
  if (message.includes("[[503]]")) return error(req, res, 503, "service_unavailable", "try again later", { "retry-after": "2" });
  let id = body.sessionId;
  if (id != null && (typeof id !== "string" || !UUID.test(id))) return error(req, res, 400, "invalid_session_id", "sessionId must be a UUID");
  if (!id || !sessions.has(id.toLowerCase())) {
    id = randomUUID();
    sessions.set(id, { messages: [], status: "open" });
  }
  const s = sessions.get(id.toLowerCase());
  s.messages.push({ id: randomUUID(), text: message, sender: "user", timestamp: Date.now() });
  const handoff = message.includes("[[handoff]]");
  const reply = handoff
    ? "I'll pass you to a person. Write to help@example.com or call +1 555 0100."
    : `Thanks for asking! You wrote: ${message}`;
  const store = () => {
    const m = { id: randomUUID(), text: reply, sender: "ai", timestamp: Date.now() };
    s.messages.push(m);
    if (handoff) s.status = "waiting_for_human";
    return m;
  };
  const stream = /text\/event-stream/.test(req.headers.accept || "") && !message.includes("[[json]]");
  if (!stream) {
    await sleep(gap * 3);
    store();
    res.writeHead(200, headers(req));
    return res.end(JSON.stringify({ reply, sessionId: id, ...(handoff ? { handoff: true } : {}) }));
  }
  res.writeHead(200, headers(req, { "content-type": "text/event-stream" }));
  const event = (name, data) => res.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
  event("session", { sessionId: id });
  await sleep(gap * 2);
  const words = reply.match(/\S+\s*/g);
  for (const w of words) {
    event("delta", { text: w });
    await sleep(gap);
    if (message.includes("[[cut]]") && w === words[2]) return res.destroy();
  }
  const m = store();
  event("done", { reply, sessionId: id, messageId: m.id, ...(handoff ? { handoff: true } : {}) });
  res.end();
}).listen(port, "127.0.0.1", () => console.log(`mock: listening on 127.0.0.1:${port}`));
