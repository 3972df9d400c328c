// The two routes of the chat API (shared/CONTRACT.md), over fetch.

export type Sender = "user" | "ai";

export interface Message {
  id?: string;
  text: string;
  sender: Sender;
  timestamp?: number;
}

export interface History {
  sessionId: string;
  messages: Message[];
  status?: string;
  hasMore?: boolean;
}

export interface Reply {
  reply: string;
  sessionId: string;
  messageId?: string;
  handoff?: boolean;
}

/** A refused or failed request. `status` 0: no HTTP answer (offline, DNS,
 * CORS) or a stream cut short. `stored`: the shopper's message was stored
 * before the failure, so resending must not type it again. */
export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    public retryAfter = 0,
    public stored = false,
  ) {
    super(code);
  }
}

/** `Retry-After` is seconds, or an HTTP date. */
export function retryAfter(h: string | null): number {
  if (!h) return 0;
  const n = +h;
  const s = n === n ? n : (Date.parse(h) - Date.now()) / 1e3;
  return s > 0 ? Math.ceil(s) : 0;
}

async function refused(res: Response): Promise<ApiError> {
  let code = "http_" + res.status;
  try {
    code = (await res.json()).error.code || code;
  } catch {
    // not the contract's JSON (a proxy's page): the status says enough
  }
  return new ApiError(res.status, code, retryAfter(res.headers.get("retry-after")));
}

/** How long the API may stay silent (no headers yet, or no bytes of a
 * stream) before the widget gives up and offers to try again. Above the
 * functions' own time budget, so a slow reply is not cut. */
export const SILENCE_MS = 45e3;

/** fetch, with a watchdog: `alive()` restarts it, `stop()` ends it. */
function watched(url: string, init: RequestInit = {}) {
  const ac = new AbortController();
  let timer = 0;
  const alive = () => {
    clearTimeout(timer);
    timer = setTimeout(() => ac.abort(), SILENCE_MS) as unknown as number;
  };
  alive();
  const res = fetch(url, { ...init, signal: ac.signal }).catch(() => {
    clearTimeout(timer);
    throw new ApiError(0, "network");
  });
  return { res, alive, stop: () => clearTimeout(timer) };
}

export async function history(
  api: string,
  sessionId: string,
  limit: number,
  before?: string,
): Promise<History> {
  const w = watched(
    `${api}/api/chat/history/${encodeURIComponent(sessionId)}?limit=${limit}` +
      (before ? "&before=" + encodeURIComponent(before) : ""),
    { headers: { Accept: "application/json" }, cache: "no-store" },
  );
  try {
    const res = await w.res;
    if (!res.ok) throw await refused(res);
    return await res.json();
  } catch (e) {
    throw e instanceof ApiError ? e : new ApiError(0, "network");
  } finally {
    w.stop();
  }
}

export interface StreamHandlers {
  /** The shopper's message is stored; `id` is the session to adopt. */
  session(id: string): void;
  delta(text: string): void;
}

/** POST /api/chat asking for Server-Sent Events; a plain JSON answer (an
 * older deployment, a proxy that buffers) is accepted as well. */
export async function send(
  api: string,
  message: string,
  sessionId: string | null,
  key: string,
  on: StreamHandlers,
): Promise<Reply> {
  const w = watched(api + "/api/chat", {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Accept: "text/event-stream, application/json",
      "Idempotency-Key": key,
    },
    body: JSON.stringify({ message, sessionId }),
  });
  const res = await w.res;
  if (!res.ok) {
    w.stop();
    throw await refused(res);
  }
  let stored = false;
  const session = (id: string) => {
    stored = true;
    on.session(id);
  };
  try {
    if (!/event-stream/i.test(res.headers.get("content-type") || "") || !res.body) {
      const j: Reply = await res.json();
      if (typeof j.reply != "string") throw 0;
      session(j.sessionId);
      return j;
    }
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let raw = "";
    let buf = "";
    for (;;) {
      w.alive();
      const r = await reader.read();
      if (r.done) break;
      raw += dec.decode(r.value, { stream: true });
      // A trailing CR may be the first half of a CRLF split across chunks.
      const keep = raw.endsWith("\r") ? 1 : 0;
      buf += raw.slice(0, raw.length - keep).replace(/\r\n?/g, "\n");
      raw = raw.slice(raw.length - keep);
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = "message";
        const data: string[] = [];
        for (const line of block.split("\n")) {
          const c = line.indexOf(":");
          const field = c < 0 ? line : line.slice(0, c);
          const value = c < 0 ? "" : line.slice(c + (line[c + 1] == " " ? 2 : 1));
          if (field == "event") event = value;
          else if (field == "data") data.push(value);
        }
        if (!data.length) continue;
        const d = JSON.parse(data.join("\n"));
        if (event == "session") session(d.sessionId);
        else if (event == "delta") on.delta(d.text);
        else if (event == "done") {
          // Read on to the end rather than cancel: a client that hangs up
          // early is, to the server, one that left mid-stream.
          (async () => {
            while (!(await reader.read()).done);
          })().catch(() => {});
          return d;
        } else if (event == "error") throw new ApiError(res.status, d.error?.code || "stream_error", 0, stored);
      }
    }
  } catch (e) {
    if (e instanceof ApiError) throw e;
  } finally {
    w.stop();
  }
  throw new ApiError(0, "interrupted", 0, stored);
}
