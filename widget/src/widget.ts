import { ApiError, history, Message, send, Sender } from "./api";
import { CSS } from "./style";

export interface Config {
  /** API base, e.g. https://abc.execute-api.eu-west-1.amazonaws.com/prod */
  api: string;
  title: string;
  greeting: string;
  /** Messages per history page. */
  pageSize: number;
  position: string;
  /** "light", "dark", or "" to follow the page. */
  theme: string;
}

/** The contract's limit, in Unicode scalar values after the server's cleaning. */
export const MAX_CHARS = 2000;

/** What the server does to a message before counting it: control characters
 * other than newline and tab go, then surrounding whitespace. */
export const clean = (s: string) =>
  // eslint-disable-next-line no-control-regex
  s.replace(/[\0-\x08\x0b-\x1f\x7f-\x9f]/g, "").trim();

const uuid = (): string =>
  crypto.randomUUID
    ? crypto.randomUUID()
    : "10000000-1000-4000-8000-100000000000".replace(/[018]/g, (c) =>
        (+c ^ (crypto.getRandomValues(new Uint8Array(1))[0] & (15 >> (+c / 4)))).toString(16),
      );

// Storage can throw (blocked cookies, private modes): the chat works without.
const store = (s: () => Storage, key: string, value?: string | null): string | null => {
  try {
    if (value === undefined) return s().getItem(key);
    if (value === null) s().removeItem(key);
    else s().setItem(key, value);
  } catch {
    // ignore
  }
  return null;
};
const local = () => localStorage;
const tab = () => sessionStorage;

// A speech bubble while closed, a cross while open.
const ICON =
  '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"/></svg>' +
  '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6.4 5 12 10.6 17.6 5 19 6.4 13.4 12l5.6 5.6-1.4 1.4-5.6-5.6L6.4 19 5 17.6l5.6-5.6L5 6.4z"/></svg>';

const TEMPLATE = `<style>${CSS}</style><div class="w">
<button class="l" type="button" aria-expanded="false" aria-controls="p">${ICON}</button>
<section class="p" id="p" role="dialog" aria-labelledby="t" hidden>
<header><h2 id="t"></h2><button class="x" type="button" aria-label="Close chat"><span aria-hidden="true">×</span></button></header>
<p class="h" role="status" hidden>You are being connected to a person from our team: the last reply says how to reach them.</p>
<div class="g" tabindex="0" aria-labelledby="t"><button class="more" type="button" hidden>Show earlier messages</button>
<div class="list" role="log" aria-live="polite" aria-relevant="additions"></div></div>
<div class="n" role="status"></div>
<form novalidate><label class="sr" for="i">Your message</label>
<textarea id="i" rows="1" aria-describedby="c" placeholder="Type your message…" autocomplete="off"></textarea>
<button class="s" type="submit">Send</button></form>
<div class="c" id="c"></div>
</section></div>`;

export function mount(cfg: Config): HTMLElement {
  const host = document.createElement("div");
  host.setAttribute("data-support-chat", "");
  if (cfg.position == "left") host.setAttribute("data-position", "left");
  const root = host.attachShadow({ mode: "open" });
  root.innerHTML = TEMPLATE;
  const $ = <T extends HTMLElement>(sel: string) => root.querySelector(sel) as T;
  const launcher = $<HTMLButtonElement>(".l");
  const panel = $(".p");
  const handoffNote = $(".h");
  const scroller = $(".g");
  const more = $<HTMLButtonElement>(".more");
  const list = $(".list");
  const notice = $(".n");
  const form = $<HTMLFormElement>("form");
  const input = $<HTMLTextAreaElement>("textarea");
  const sendButton = $<HTMLButtonElement>(".s");
  const counter = $(".c");

  // Text from the store's attributes goes in as text too.
  $("h2").textContent = cfg.title;
  launcher.setAttribute("aria-label", cfg.title);

  const key = "support-chat:" + cfg.api;
  let sessionId = store(local, key);
  let loaded = false;
  let busy = false;
  let hasMore = false;
  let loadingOlder = false;
  let blockedUntil = 0;
  let timer = 0;
  // The message being sent, kept so that a retry after a failure is the same
  // request (text, session as first sent, Idempotency-Key): the server then
  // stores it once, however many tries, and replays a reply it completed.
  let pending: { text: string; key: string; sid: string | null; bubble?: HTMLElement } | null = null;

  // ---- colour scheme: the store's choice, else the page's own ----
  const dark = matchMedia("(prefers-color-scheme: dark)");
  const scheme = () => {
    const cs = getComputedStyle(document.documentElement).colorScheme || "";
    const isDark =
      cfg.theme == "dark" ||
      (cfg.theme != "light" && /dark/.test(cs) && (!/light/.test(cs) || dark.matches));
    host.setAttribute("data-scheme", isDark ? "dark" : "light");
  };
  scheme();
  dark.addEventListener?.("change", scheme);

  // ---- messages ----
  const nearBottom = () => scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  const toBottom = () => {
    scroller.scrollTop = scroller.scrollHeight;
  };

  const bubble = (sender: Sender, text: string, id?: string) => {
    const el = document.createElement("div");
    el.className = sender == "user" ? "m u" : "m a";
    if (id) el.dataset.id = id;
    const who = document.createElement("span");
    who.className = "sr";
    who.textContent = sender == "user" ? "You: " : "Assistant: ";
    // Only ever text: a reply holding markup shows the characters.
    el.append(who, text);
    return el;
  };
  const textOf = (el: HTMLElement) => el.lastChild as Text;

  const greeting = bubble("ai", cfg.greeting);
  greeting.dataset.greeting = "";
  list.append(greeting);

  const showHandoff = () => {
    handoffNote.hidden = false;
  };

  // ---- notices: what went wrong, and for how long ----
  const say = (text: string, action?: string, wait = 0, after?: string) => {
    clearInterval(timer);
    notice.textContent = text;
    if (!text) return;
    const count = document.createElement("span");
    // Announced once in the text; the ticking number is for the eyes only.
    count.setAttribute("aria-hidden", "true");
    count.className = "cd";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = action || "";
    button.hidden = true;
    button.onclick = () => submit(true);
    notice.append(count, button);
    const done = () => {
      count.textContent = "";
      if (after) notice.firstChild!.textContent = after;
      button.hidden = !action;
      sendButton.removeAttribute("aria-disabled");
    };
    if (wait > 0) {
      blockedUntil = Date.now() + wait * 1e3;
      sendButton.setAttribute("aria-disabled", "true");
      const tick = () => {
        const left = Math.ceil((blockedUntil - Date.now()) / 1e3);
        if (left > 0) count.textContent = `(${left} s)`;
        else {
          clearInterval(timer);
          done();
        }
      };
      tick();
      timer = window.setInterval(tick, 250);
    } else done();
  };

  const explain = (e: ApiError) => {
    const s = e.status;
    const wait = e.retryAfter;
    if (s == 429)
      say(
        `You are sending messages faster than we can answer. You can send again in ${wait || 1} seconds.`,
        "",
        wait || 1,
        "You can send your message now.",
      );
    else if (s == 409) say("Still working on the previous reply…", "Try again", wait || 1);
    else if (s == 0 && e.code == "network")
      say(
        navigator.onLine
          ? "We could not reach the chat. Check your connection, then try again."
          : "You are offline. Your message is kept: send it when you are back online.",
        "Try again",
      );
    else if (s == 0 || e.stored) say("The reply was interrupted.", "Try again");
    else if (s == 400 && e.code == "invalid_message") say("This message cannot be sent. Please shorten or rephrase it.");
    else if (s == 413) say(`Your message is too long: the limit is ${MAX_CHARS} characters.`);
    else if (s >= 500)
      say(
        `The chat is unavailable right now. Your message is kept${wait ? `: try again in ${wait} seconds.` : "."}`,
        "Try again",
        wait,
      );
    else say("Something went wrong. Please try again.", "Try again");
  };

  // ---- history ----
  const render = (messages: Message[], before?: Node | null) => {
    const frag = document.createDocumentFragment();
    for (const m of messages)
      if (!m.id || !root.querySelector(`[data-id="${CSS_escape(m.id)}"]`)) frag.append(bubble(m.sender, m.text, m.id));
    list.insertBefore(frag, before || null);
  };
  const setMore = (v?: boolean) => {
    hasMore = !!v;
    more.hidden = !hasMore;
    greeting.hidden = hasMore;
  };
  const firstId = () => (list.querySelector("[data-id]") as HTMLElement | null)?.dataset.id;

  const load = async () => {
    // Once the shopper has sent from this page, what is shown is current.
    if (loaded || !sessionId) return;
    loaded = true;
    try {
      const h = await history(cfg.api, sessionId, cfg.pageSize);
      render(h.messages, greeting.nextSibling);
      setMore(h.hasMore);
      if (h.status == "waiting_for_human") showHandoff();
      toBottom();
    } catch (e) {
      if ((e as ApiError).status == 404) {
        sessionId = null;
        store(local, key, null);
      } else if (!list.querySelector(".u")) {
        loaded = false;
        say("Your earlier messages could not be loaded.", "");
      }
    }
  };

  const older = async () => {
    const before = firstId();
    if (!hasMore || loadingOlder || !sessionId || !before) return;
    loadingOlder = true;
    const height = scroller.scrollHeight;
    try {
      const h = await history(cfg.api, sessionId, cfg.pageSize, before);
      render(h.messages, greeting.nextSibling);
      setMore(h.hasMore);
      // Keep the shopper's place: what they were reading stays put.
      scroller.scrollTop += scroller.scrollHeight - height;
    } catch {
      say("Earlier messages could not be loaded.");
    }
    loadingOlder = false;
  };
  // Older pages load when the shopper scrolls up near the top (not when the
  // widget itself scrolls, to the bottom, a conversation that barely overflows).
  let lastTop = 0;
  scroller.addEventListener("scroll", () => {
    const top = scroller.scrollTop;
    if (top < lastTop && top < 60) older();
    lastTop = top;
  });
  // A short page does not scroll, so a wheel or swipe up at the top asks too.
  scroller.addEventListener("wheel", (e) => {
    if (e.deltaY < 0 && scroller.scrollTop <= 0) older();
  });
  more.onclick = () => {
    older().then(() => (hasMore ? more : input).focus());
  };

  // ---- open and close ----
  const open = (focus = true) => {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    store(tab, key + ":open", "1");
    load();
    toBottom();
    if (focus) input.focus();
  };
  const close = () => {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    store(tab, key + ":open", null);
    launcher.focus();
  };
  launcher.onclick = () => (panel.hidden ? open() : close());
  $(".x").onclick = close;
  panel.addEventListener("keydown", (e) => {
    if (e.key == "Escape") {
      e.preventDefault();
      close();
    }
  });

  // ---- typing ----
  const count = () => {
    const n = [...clean(input.value)].length;
    counter.textContent = n > MAX_CHARS - 200 ? `${n} / ${MAX_CHARS} characters` : "";
    counter.classList.toggle("o", n > MAX_CHARS);
    input.style.height = "";
    input.style.height = Math.min(input.scrollHeight + 2, 128) + "px";
  };
  input.addEventListener("input", count);
  input.addEventListener("keydown", (e) => {
    if (e.key == "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  addEventListener("online", () => {
    if (/offline/.test(notice.textContent || "")) say("");
  });

  // ---- sending ----
  /** `retry`: the notice's "Try again", which resends a message the server
   * already stored (without typing it twice), else what is in the text box. */
  const submit = async (retry?: boolean) => {
    if (busy || Date.now() < blockedUntil) return;
    const resend = retry && pending && pending.bubble ? pending : null;
    const typed = input.value;
    const text = resend ? resend.text : clean(typed);
    if (!text) return;
    const n = [...text].length;
    if (n > MAX_CHARS) {
      say(`Your message is ${n} characters long; the limit is ${MAX_CHARS}. Please shorten it.`);
      input.focus();
      return;
    }
    if (!navigator.onLine) {
      explain(new ApiError(0, "network"));
      return;
    }
    if (!resend && (!pending || pending.bubble || pending.text != text))
      pending = { text, key: uuid(), sid: sessionId };
    const p = pending!;
    busy = loaded = true;
    say("");
    sendButton.setAttribute("aria-disabled", "true");
    const mine = p.bubble || bubble("user", text);
    mine.classList.toggle("q", !p.bubble);
    const reply = bubble("ai", "");
    reply.classList.add("d");
    reply.dataset.state = "waiting";
    list.append(mine, reply);
    list.setAttribute("aria-busy", "true");
    toBottom();
    try {
      const r = await send(cfg.api, text, p.sid, p.key, {
        session(id) {
          // Stored: from here on the message lives in the conversation, not
          // in the text box.
          mine.classList.remove("q");
          p.bubble = mine;
          if (id) store(local, key, (sessionId = id));
          if (!resend && input.value == typed) {
            input.value = "";
            count();
          }
        },
        delta(t) {
          const stick = nearBottom();
          reply.classList.remove("d");
          reply.dataset.state = "streaming";
          textOf(reply).appendData(t);
          if (stick) toBottom();
        },
      });
      const stick = nearBottom();
      reply.classList.remove("d");
      textOf(reply).data = r.reply;
      reply.dataset.state = "done";
      if (r.messageId) reply.dataset.id = r.messageId;
      if (r.sessionId) store(local, key, (sessionId = r.sessionId));
      if (r.handoff) showHandoff();
      pending = null;
      if (stick) toBottom();
    } catch (err) {
      const e = err instanceof ApiError ? err : new ApiError(0, "interrupted");
      reply.remove();
      if (!p.bubble) mine.remove();
      explain(e);
    } finally {
      busy = false;
      list.removeAttribute("aria-busy");
      if (Date.now() >= blockedUntil) sendButton.removeAttribute("aria-disabled");
    }
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });

  // Beside <body>, not in it: a page's `body { transform }` would otherwise
  // pin the fixed-position launcher to the body instead of the viewport.
  document.documentElement.append(host);
  if (store(tab, key + ":open")) open(false);
  return host;
}

// CSS.escape, which older engines lack; ids are UUIDs in practice.
const CSS_escape = (s: string) => s.replace(/["\\]/g, "\\$&");
