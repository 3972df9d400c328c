// Browser tests of the chat widget: headless Chromium (Debian's, through
// playwright-core; no browser download) on the demo storefront, talking to a
// chat API across origins. scripts/widget-test.sh runs them against the real
// backend (cargo lambda watch, PostgreSQL, Redis, the fake Claude); against
// test/mock-server.mjs they are a development aid (--backend mock).
//
//   node test/browser.mjs --demo http://127.0.0.1:8090 --api http://127.0.0.1:9000 \
//        --out ../target/widget-test [--backend real|mock] [--only substring] [--counts FILE]
//
// Every test saves a screenshot <out>/<name>.png. Ends with the line
// "browser: N passed, M failed"; exit status 1 when any failed.
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf("--" + name);
  return i >= 0 ? args[i + 1] : fallback;
};
const DEMO = opt("demo", "http://127.0.0.1:8090").replace(/\/$/, "");
const API = opt("api", "http://127.0.0.1:9000").replace(/\/$/, "");
const OUT = opt("out", "../target/widget-test");
const BACKEND = opt("backend", "real");
const ONLY = opt("only", "");
const COUNTS = opt("counts", ""); // a file to write "<passed> <failed>" to
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TEST_TIMEOUT = +(process.env.WIDGET_TEST_TIMEOUT_MS || 90_000);
const REPLY_TIMEOUT = 30_000;
const XSS = `<img src=x onerror="window.__xss=1">`;
// Steering words of the stand-ins for Claude: testkit's fake-claude (real
// backend) and test/mock-server.mjs.
const HANDOFF = BACKEND === "mock" ? "[[handoff]]" : "[[tool:hand_off]]";

mkdirSync(OUT, { recursive: true });

const tests = [];
const test = (name, fn, opts = {}) => tests.push({ name, fn, opts });

class Failure extends Error {}
const assert = (cond, msg) => {
  if (!cond) throw new Failure(msg);
};
const eq = (actual, expected, msg) =>
  assert(actual === expected, `${msg}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- helpers --

/** The widget's parts, by role and accessible name (as a shopper's
 * assistive technology finds them); Playwright's locators pierce the open
 * shadow root. */
const ui = (page) => ({
  launcher: page.getByRole("button", { name: "Chat with us" }),
  panel: page.getByRole("dialog", { name: "Chat with us" }),
  input: page.getByRole("textbox", { name: "Your message" }),
  send: page.getByRole("button", { name: "Send", exact: true }),
  close: page.getByRole("button", { name: "Close chat" }),
  notice: page.locator("[data-support-chat] .n"),
  handoff: page.locator("[data-support-chat] .h"),
  more: page.getByRole("button", { name: "Show earlier messages" }),
});

/** Evaluates fn(shadowRoot, arg) in the page. */
const inWidget = (page, fn, arg) =>
  page.evaluate(
    ([src, a]) => {
      const root = document.querySelector("[data-support-chat]")?.shadowRoot;
      if (!root) throw new Error("the widget is not on the page");
      return (0, eval)(`(${src})`)(root, a);
    },
    [fn.toString(), arg],
  );

/** Messages shown, oldest first, without the greeting: {sender, text, id, state}. */
const shown = (page) =>
  inWidget(page, (root) =>
    [...root.querySelectorAll(".list .m:not([data-greeting])")].map((el) => ({
      sender: el.classList.contains("u") ? "user" : "ai",
      text: el.lastChild.data,
      id: el.dataset.id || null,
      state: el.dataset.state || null,
    })),
  );

const open = async (page, path = "/") => {
  await page.goto(DEMO + path);
  const w = ui(page);
  await w.launcher.click();
  await w.input.waitFor({ state: "visible" });
  return w;
};

/** Records, once per animation frame, the text of the newest reply bubble
 * while it changes: what the shopper sees, render by render. */
const recordRenders = (page) =>
  page.evaluate(() => {
    const root = document.querySelector("[data-support-chat]").shadowRoot;
    const seen = (window.__renders = []);
    const frame = () => {
      const all = root.querySelectorAll(".m.a[data-state]");
      const b = all[all.length - 1];
      if (b) {
        const last = seen[seen.length - 1];
        const text = b.lastChild.data;
        const state = b.dataset.state;
        if (!last || last.text !== text || last.state !== state) seen.push({ state, text, t: performance.now() });
      }
      requestAnimationFrame(frame);
    };
    frame();
  });

/** Sends `text` through the widget (typing it, then the Send button) and
 * waits for the reply to be complete; returns it. */
const sendAndWait = async (page, text) => {
  const w = ui(page);
  const before = (await shown(page)).length;
  await w.input.fill(text);
  await w.send.click();
  await page.waitForFunction(
    (n) => {
      const root = document.querySelector("[data-support-chat]").shadowRoot;
      const ms = root.querySelectorAll(".list .m:not([data-greeting])");
      return ms.length >= n + 2 && ms[ms.length - 1].dataset.state === "done";
    },
    before,
    { timeout: REPLY_TIMEOUT },
  );
  const all = await shown(page);
  return all[all.length - 1].text;
};

const sessionIdOf = (page) =>
  page.evaluate((api) => localStorage.getItem("support-chat:" + api), API);

const apiHistory = async (sessionId, query = "") => {
  const res = await fetch(`${API}/api/chat/history/${sessionId}${query}`);
  assert(res.ok, `GET history answered ${res.status}`);
  return res.json();
};

// ------------------------------------------------------------------ tests --

test("a reply streams in over several renders, then shows done.reply", async (page) => {
  const corsSeen = [];
  page.on("response", (r) => {
    if (r.url().endsWith("/api/chat") && r.request().method() === "POST") corsSeen.push(r);
  });
  const w = await open(page);
  eq(await inWidget(page, (root) => root.activeElement?.id), "i", "opening the panel focuses the text box");
  await recordRenders(page);
  const replied = sendAndWait(page, "What are your shipping options?");
  // A picture of the reply half-way.
  await page
    .waitForFunction(() => window.__renders.filter((r) => r.state === "streaming").length >= 2, null, { timeout: REPLY_TIMEOUT })
    .then(() => page.screenshot({ path: join(OUT, "streaming.png"), animations: "disabled" }))
    .catch(() => {});
  const reply = await replied;
  const renders = await page.evaluate(() => window.__renders);
  const streaming = renders.filter((r) => r.state === "streaming" && r.text);
  assert(
    streaming.length >= 2,
    `the reply grew over at least two renders before done (saw ${JSON.stringify(renders.map((r) => r.state + ":" + r.text.length))})`,
  );
  assert(
    streaming.every((r, i) => i === 0 || r.text.length > streaming[i - 1].text.length),
    "each render shows more of the reply",
  );
  eq(renders[renders.length - 1].state, "done", "the last render is the done state");
  assert(reply.length > 0, "the reply is not empty");
  // done.reply is what the history keeps.
  const h = await apiHistory(await sessionIdOf(page));
  eq(h.messages[h.messages.length - 1].text, reply, "the shown reply is the stored one");
  eq(h.messages[h.messages.length - 2].text, "What are your shipping options?", "the stored message");
  eq(await w.input.inputValue(), "", "the text box is emptied once the message is stored");
  // The browser saw the function's own CORS headers, as API Gateway sends them.
  const r = corsSeen[0];
  assert(r, "the POST was seen");
  const hs = await r.headersArray();
  const get = (n) => hs.filter((h) => h.name.toLowerCase() === n);
  eq(get("access-control-allow-origin").map((h) => h.value).join(), DEMO, "Access-Control-Allow-Origin");
  eq(get("access-control-allow-credentials").length, 0, "no Access-Control-Allow-Credentials header");
  eq(get("vary").length, 1, "one Vary header");
  assert(/text\/event-stream/.test(get("content-type")[0]?.value || ""), "the answer was a stream");
});

test("the conversation is restored after a reload", async (page) => {
  await open(page);
  const reply = await sendAndWait(page, "Do you have this mug in blue?");
  const before = await shown(page);
  await page.reload();
  const w = ui(page);
  // The panel was open: it opens again, without taking the focus.
  await w.panel.waitFor({ state: "visible" });
  await page.waitForFunction(() => document.querySelector("[data-support-chat]").shadowRoot.querySelectorAll(".list .m[data-id]").length >= 2, null, { timeout: 10_000 });
  const after = await shown(page);
  eq(JSON.stringify(after.map((m) => [m.sender, m.text])), JSON.stringify(before.map((m) => [m.sender, m.text])), "the same messages");
  eq(after[after.length - 1].text, reply, "the reply");
  // Closed, reloaded, reopened: restored as well.
  await w.close.click();
  await page.reload();
  await w.launcher.click();
  await page.waitForFunction(() => document.querySelector("[data-support-chat]").shadowRoot.querySelectorAll(".list .m[data-id]").length >= 2, null, { timeout: 10_000 });
  eq((await shown(page)).length, 2, "two messages after reopening");
});

test("older messages load when the shopper scrolls up", async (page) => {
  await open(page, "/?page-size=4");
  const sent = ["First question about sizes", "Second question about colours", "Third question about delivery"];
  for (const m of sent) await sendAndWait(page, m);
  const sid = await sessionIdOf(page);
  const whole = await apiHistory(sid);
  eq(whole.messages.length, 6, "the history holds six messages");
  await page.reload();
  const w = ui(page);
  await w.panel.waitFor({ state: "visible" });
  await page.waitForFunction(() => document.querySelector("[data-support-chat]").shadowRoot.querySelectorAll(".list .m[data-id]").length >= 4, null, { timeout: 10_000 });
  let now = await shown(page);
  eq(now.length, 4, "the newest page: four messages");
  eq(JSON.stringify(now.map((m) => m.id)), JSON.stringify(whole.messages.slice(2).map((m) => m.id)), "the newest four, oldest first");
  await w.more.waitFor({ state: "visible" });
  const older = page.waitForRequest((r) => r.url().includes(`before=${whole.messages[2].id}`), { timeout: 10_000 });
  // Scroll up with the wheel over the conversation.
  const box = await page.locator("[data-support-chat] .g").boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  for (let i = 0; i < 10 && (await shown(page)).length < 6; i++) {
    await page.mouse.wheel(0, -600);
    await sleep(300);
  }
  await older;
  await page.waitForFunction(() => document.querySelector("[data-support-chat]").shadowRoot.querySelectorAll(".list .m[data-id]").length >= 6, null, { timeout: 10_000 });
  now = await shown(page);
  eq(JSON.stringify(now.map((m) => m.id)), JSON.stringify(whole.messages.map((m) => m.id)), "all six, oldest first, no duplicates");
  assert(await w.more.isHidden(), "no 'Show earlier messages' once everything is shown");
  await inWidget(page, (root) => (root.querySelector(".g").scrollTop = 0));
});

test("markup in messages and replies is shown as text, never run", async (page) => {
  await open(page);
  await sendAndWait(page, XSS);
  let msgs = await shown(page);
  eq(msgs[msgs.length - 2].text, XSS, "the shopper's message shows the characters");
  // A reply holding markup (from the history, as if Claude had written it).
  await page.route(/\/api\/chat\/history\//, async (route) => {
    const res = await route.fetch();
    const body = await res.json();
    for (const m of body.messages) if (m.sender === "ai") m.text = `Here you go: ${XSS} <b>bold</b>`;
    await route.fulfill({ response: res, json: body });
  });
  await page.reload();
  await page.waitForFunction(() => document.querySelector("[data-support-chat]").shadowRoot.querySelectorAll(".list .m[data-id]").length >= 2, null, { timeout: 10_000 });
  msgs = await shown(page);
  eq(msgs[0].text, XSS, "restored message, as text");
  eq(msgs[1].text, `Here you go: ${XSS} <b>bold</b>`, "a reply with markup, as text");
  eq(await inWidget(page, (root) => root.querySelectorAll("img, b").length), 0, "no element was made from the text");
  eq(await page.evaluate(() => window.__xss), undefined, "no script ran");
});

test("a 429 shows a countdown from Retry-After and keeps the typed text", async (page) => {
  const w = await open(page);
  let refused = null;
  page.on("response", (r) => {
    if (r.url().endsWith("/api/chat") && r.status() === 429) refused = r;
  });
  const typed = BACKEND === "mock" ? "One more question [[429]]" : "One more question";
  for (let i = 0; i < 12 && !refused; i++) {
    await w.input.fill(`${typed} (${i})`);
    await w.send.click();
    await page.waitForFunction(
      () => {
        const root = document.querySelector("[data-support-chat]").shadowRoot;
        const last = [...root.querySelectorAll(".list .m")].pop();
        return root.querySelector(".n").textContent || (last && last.dataset.state === "done");
      },
      null,
      { timeout: REPLY_TIMEOUT },
    );
  }
  assert(refused, "the API answered 429 within 12 messages (is RATE_LIMIT_PER_SESSION_PER_MINUTE low?)");
  const retryAfter = +(await refused.headerValue("retry-after"));
  assert(retryAfter >= 1, `the browser can read Retry-After (${retryAfter})`);
  await w.notice.getByText("faster than we can answer").waitFor();
  assert((await w.notice.textContent()).includes(`again in ${retryAfter} seconds`), "the notice says how long");
  const value = await w.input.inputValue();
  assert(value.startsWith(typed), `the typed text is still in the box (${JSON.stringify(value)})`);
  eq(await w.send.getAttribute("aria-disabled"), "true", "Send is unavailable during the countdown");
  const count = page.locator("[data-support-chat] .n .cd");
  const first = await count.textContent();
  assert(/^\(\d+ s\)$/.test(first), `a countdown is shown (${first})`);
  await page.screenshot({ path: join(OUT, "429-countdown.png"), animations: "disabled" });
  if (retryAfter > 1) {
    await page.waitForFunction(
      (t) => document.querySelector("[data-support-chat]").shadowRoot.querySelector(".n .cd").textContent !== t,
      first,
      { timeout: 3_000 },
    );
    const second = await count.textContent();
    assert(parseInt(second.slice(1)) < parseInt(first.slice(1)), `the countdown goes down (${first} -> ${second})`);
  }
  // Pressing Send during the countdown sends nothing.
  let posted = false;
  page.on("request", (r) => {
    if (r.method() === "POST") posted = true;
  });
  await w.input.press("Enter");
  await sleep(300);
  assert(!posted, "nothing is sent during the countdown");
});

test("keyboard only: from the launcher to a sent message and back", async (page) => {
  await page.goto(DEMO + "/");
  const w = ui(page);
  await w.launcher.waitFor();
  const focused = () =>
    page.evaluate(() => {
      const a = document.activeElement;
      if (a && a.shadowRoot) {
        const i = a.shadowRoot.activeElement;
        return i ? "widget:" + (i.id || i.className) : "widget";
      }
      return a ? a.tagName.toLowerCase() : null;
    });
  let reached = false;
  for (let i = 0; i < 30 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = (await focused()) === "widget:l";
  }
  assert(reached, "Tab reaches the launcher");
  eq(await w.launcher.getAttribute("aria-expanded"), "false", "closed at first");
  await page.keyboard.press("Enter");
  await w.panel.waitFor({ state: "visible" });
  eq(await w.launcher.getAttribute("aria-expanded"), "true", "aria-expanded follows");
  eq(await focused(), "widget:i", "the text box has the focus");
  await page.keyboard.type("Can I pay with PayPal?");
  await page.keyboard.press("Enter");
  await page.waitForFunction(
    () => [...document.querySelector("[data-support-chat]").shadowRoot.querySelectorAll(".list .m")].pop().dataset.state === "done",
    null,
    { timeout: REPLY_TIMEOUT },
  );
  const msgs = await shown(page);
  eq(msgs[0].text, "Can I pay with PayPal?", "sent by keyboard");
  eq(await focused(), "widget:i", "the focus stays in the text box");
  await page.keyboard.press("Tab");
  eq(await focused(), "widget:s", "Tab goes on to Send");
  await page.screenshot({ path: join(OUT, "keyboard-focus.png"), animations: "disabled" });
  await page.keyboard.press("Shift+Tab");
  await page.keyboard.press("Escape");
  await w.panel.waitFor({ state: "hidden" });
  eq(await focused(), "widget:l", "Escape closes and gives the focus back to the launcher");
  // The live region and labels are there for assistive technology.
  const a11y = await inWidget(page, (root) => ({
    live: root.querySelector("[role=log]").getAttribute("aria-live"),
    label: root.querySelector("label[for=i]")?.textContent,
  }));
  eq(a11y.live, "polite", "messages are in an aria-live log");
  eq(a11y.label, "Your message", "the text box has a label");
  await page.keyboard.press("Enter");
  await w.panel.waitFor({ state: "visible" });
});

test("a page with hostile CSS does not break the panel", async (page) => {
  const w = await open(page, "/hostile.html");
  await sendAndWait(page, "Is the mug dishwasher safe?");
  const vp = page.viewportSize();
  const lb = await w.launcher.boundingBox();
  assert(lb && Math.round(lb.width) === 56 && Math.round(lb.height) === 56, `launcher 56x56 (${JSON.stringify(lb)})`);
  assert(lb.x + lb.width <= vp.width && lb.y + lb.height <= vp.height, "launcher in the viewport's corner");
  const pb = await w.panel.boundingBox();
  assert(pb && pb.width >= 300 && pb.height >= 300, `panel has its size (${JSON.stringify(pb)})`);
  assert(pb.x >= 0 && pb.y >= 0 && pb.x + pb.width <= vp.width && pb.y + pb.height <= vp.height, "panel in the viewport");
  const st = await inWidget(page, (root) => {
    const cs = (sel) => getComputedStyle(root.querySelector(sel));
    const m = cs(".list .m:not([data-greeting])");
    return {
      host: getComputedStyle(root.host).display,
      fontSize: cs("textarea").fontSize,
      msgFont: m.fontSize,
      msgFamily: m.fontFamily,
      transform: m.textTransform,
      color: cs(".list .m.a:not([data-greeting])").color,
    };
  });
  eq(st.host, "block", "the host is displayed");
  eq(st.fontSize, "16px", "text box font size");
  eq(st.msgFont, "15px", "message font size");
  assert(!/comic/i.test(st.msgFamily), `the page's font does not get in (${st.msgFamily})`);
  eq(st.transform, "none", "no text-transform from the page");
  assert(st.color !== "rgb(255, 0, 255)", "the page's colour does not get in");
  // What the widget brings does not leak out either.
  eq(await page.evaluate(() => getComputedStyle(document.querySelector("h1")).position), "static", "the page keeps its own styles");
});

test(`handoff is shown from the reply and from the history`, async (page) => {
  const w = await open(page);
  await sendAndWait(page, `${HANDOFF} Can I talk to a person, please?`);
  await w.handoff.waitFor({ state: "visible", timeout: 5_000 });
  const h = await apiHistory(await sessionIdOf(page));
  eq(h.status, "waiting_for_human", "the history says waiting_for_human");
  await page.reload();
  await w.handoff.waitFor({ state: "visible", timeout: 10_000 });
});

test("readable at 320 px wide", async (page) => {
  await page.setViewportSize({ width: 320, height: 640 });
  const w = await open(page);
  await sendAndWait(page, "How long does delivery to Norway take?");
  const pb = await w.panel.boundingBox();
  assert(pb.x >= 0 && pb.x + pb.width <= 320, `the panel fits (${JSON.stringify(pb)})`);
  const sb = await w.send.boundingBox();
  assert(sb.x + sb.width <= 320 && sb.height >= 44, "Send is on screen and at least 44 px tall");
  const overflow = await inWidget(page, (root) => {
    const g = root.querySelector(".g");
    return g.scrollWidth - g.clientWidth;
  });
  eq(overflow, 0, "no sideways scrolling in the conversation");
  // The panel covers the screen: its own close button gives the page back.
  await w.close.click();
  await w.panel.waitFor({ state: "hidden" });
  await w.launcher.click();
  await w.panel.waitFor({ state: "visible" });
  const msgs = await shown(page);
  eq(msgs.length, 2, `reopening shows the conversation once (${JSON.stringify(msgs.map((m) => m.text))})`);
  await sleep(400); // the opening animation, for the screenshot
}, { viewport: { width: 320, height: 640 } });

test("reduced motion and colour schemes are respected", async (page) => {
  await page.emulateMedia({ reducedMotion: "reduce", colorScheme: "dark" });
  const w = await open(page);
  const anim = await inWidget(page, (root) => getComputedStyle(root.querySelector(".p")).animationName);
  eq(anim, "none", "no opening animation with prefers-reduced-motion");
  // The demo page declares `color-scheme: light`: a dark system does not
  // darken the widget on a light-only page.
  eq(await page.locator("[data-support-chat]").getAttribute("data-scheme"), "light", "light on a light-only page");
  // A page that supports both, on a system that turns dark: dark.
  // (Media query changes are seen at rendering updates: one frame between.)
  const frame = () => page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await page.emulateMedia({ colorScheme: "light" });
  await frame();
  await page.evaluate(() => (document.documentElement.style.colorScheme = "light dark"));
  await page.emulateMedia({ colorScheme: "dark" });
  await frame();
  await page.waitForFunction(() => document.querySelector("[data-support-chat]").dataset.scheme === "dark", null, { timeout: 3_000 });
  const bg = await inWidget(page, (root) => getComputedStyle(root.querySelector(".p")).backgroundColor);
  eq(bg, "rgb(28, 28, 33)", "the dark palette");
  await page.screenshot({ path: join(OUT, "dark.png"), animations: "disabled" });
  // data-theme forces it.
  await page.goto(DEMO + "/?theme=dark");
  eq(await page.locator("[data-support-chat]").getAttribute("data-scheme"), "dark", "dark when the tag asks");
  await page.emulateMedia({ reducedMotion: "no-preference" });
  await page.goto(DEMO + "/");
  await w.launcher.click();
  const animated = await inWidget(page, (root) => getComputedStyle(root.querySelector(".p")).animationName);
  assert(animated !== "none", "animated otherwise");
});

test("a message over 2,000 characters is refused before sending", async (page) => {
  const w = await open(page);
  let posted = false;
  page.on("request", (r) => {
    if (r.method() === "POST") posted = true;
  });
  const long = "é".repeat(1000) + "😀".repeat(1001); // 2,001 characters, 3,003 UTF-16 units
  await w.input.fill(long);
  await w.send.click();
  await w.notice.getByText("2001 characters long").waitFor({ timeout: 3_000 });
  assert(!posted, "nothing was sent");
  eq(await w.input.inputValue(), long, "the text is still there");
  const counter = await page.locator("[data-support-chat] .c").textContent();
  eq(counter, "2001 / 2000 characters", "the counter shows the overflow");
  // 2,000 emoji are 2,000 characters: accepted.
  await w.input.fill("😀".repeat(2000));
  eq(await page.locator("[data-support-chat] .c").textContent(), "2000 / 2000 characters", "emoji count once");
});

test("offline: the message is kept and sent once back online", async (page, ctx) => {
  const w = await open(page);
  await ctx.setOffline(true);
  await w.input.fill("Are you open on Sundays?");
  await w.send.click();
  await w.notice.getByText(/offline|could not reach/).waitFor({ timeout: 5_000 });
  eq(await w.input.inputValue(), "Are you open on Sundays?", "the typed text is kept");
  eq((await shown(page)).length, 0, "no half-sent message is left in the conversation");
  await page.screenshot({ path: join(OUT, "offline.png"), animations: "disabled" });
  await ctx.setOffline(false);
  await w.send.click();
  await page.waitForFunction(
    () => [...document.querySelector("[data-support-chat]").shadowRoot.querySelectorAll(".list .m")].pop().dataset.state === "done",
    null,
    { timeout: REPLY_TIMEOUT },
  );
  eq(await w.input.inputValue(), "", "sent, so the box is empty");
});

test("a 503 offers a retry after Retry-After, and the retry is not a duplicate", async (page) => {
  const w = await open(page);
  let keys = [];
  let first = true;
  await page.route(/\/api\/chat$/, async (route) => {
    if (route.request().method() !== "POST") return route.continue();
    keys.push(await route.request().headerValue("idempotency-key"));
    if (!first) return route.continue();
    first = false;
    await route.fulfill({
      status: 503,
      headers: {
        "content-type": "application/json",
        "retry-after": "2",
        "access-control-allow-origin": DEMO,
        "access-control-expose-headers": "x-request-id, retry-after, idempotent-replayed",
      },
      body: JSON.stringify({ error: { code: "service_unavailable", message: "try again later" } }),
    });
  });
  await w.input.fill("Where is my order #1234?");
  await w.send.click();
  await w.notice.getByText("unavailable").waitFor({ timeout: 5_000 });
  eq(await w.input.inputValue(), "Where is my order #1234?", "the typed text is kept");
  const retry = w.notice.getByRole("button", { name: "Try again" });
  assert(await retry.isHidden(), "no retry before Retry-After has passed");
  await page.screenshot({ path: join(OUT, "503-retry.png"), animations: "disabled" });
  await retry.waitFor({ state: "visible", timeout: 4_000 });
  await retry.click();
  await page.waitForFunction(
    () => [...document.querySelector("[data-support-chat]").shadowRoot.querySelectorAll(".list .m")].pop().dataset.state === "done",
    null,
    { timeout: REPLY_TIMEOUT },
  );
  eq(keys.length, 2, "two attempts");
  assert(keys[0] && keys[0] === keys[1], "the retry reuses the Idempotency-Key");
  const h = await apiHistory(await sessionIdOf(page));
  eq(h.messages.filter((m) => m.sender === "user").length, 1, "the message is stored once");
});

test("a reply cut short is completed by Try again, without a duplicate", async (page) => {
  const w = await open(page);
  const keys = [];
  let cut = true;
  await page.route(/\/api\/chat$/, async (route) => {
    if (route.request().method() !== "POST") return route.continue();
    keys.push(await route.request().headerValue("idempotency-key"));
    if (!cut) return route.continue();
    cut = false;
    // The server stores and answers in full; the shopper's connection drops
    // after the first delta.
    const res = await route.fetch();
    const body = await res.text();
    const events = body.split("\n\n").filter((e) => /^event: (session|delta)/.test(e));
    await route.fulfill({ response: res, body: events.slice(0, 2).join("\n\n") + "\n\n" });
  });
  await w.input.fill("Can I change my delivery address?");
  await w.send.click();
  await w.notice.getByText("interrupted").waitFor({ timeout: REPLY_TIMEOUT });
  eq(await w.input.inputValue(), "", "the message was stored, so it left the text box");
  let msgs = await shown(page);
  eq(msgs.length, 1, "the shopper's message stays in the conversation");
  eq(msgs[0].text, "Can I change my delivery address?", "the message");
  await w.notice.getByRole("button", { name: "Try again" }).click();
  await page.waitForFunction(
    () => [...document.querySelector("[data-support-chat]").shadowRoot.querySelectorAll(".list .m")].pop().dataset.state === "done",
    null,
    { timeout: REPLY_TIMEOUT },
  );
  msgs = await shown(page);
  eq(msgs.length, 2, "one message, one reply");
  assert(keys.length === 2 && keys[0] === keys[1], "the retry reuses the Idempotency-Key");
  const h = await apiHistory(await sessionIdOf(page));
  eq(JSON.stringify(h.messages.map((m) => m.sender)), JSON.stringify(["user", "ai"]), "stored once each");
  eq(h.messages[1].text, msgs[1].text, "the reply shown is the stored one");
});

test("a JSON answer (no stream) is shown as well", async (page) => {
  const w = await open(page);
  let accepted = null;
  await page.route(/\/api\/chat$/, async (route) => {
    if (route.request().method() !== "POST") return route.continue();
    // As a proxy that does not pass event streams would ask.
    const headers = { ...(await route.request().allHeaders()), accept: "application/json" };
    accepted = true;
    await route.continue({ headers });
  });
  await recordRenders(page);
  const reply = await sendAndWait(page, "What is your return policy?");
  assert(accepted, "the request went through the route");
  const renders = await page.evaluate(() => window.__renders);
  eq(renders.filter((r) => r.state === "streaming").length, 0, "no stream");
  const h = await apiHistory(await sessionIdOf(page));
  eq(h.messages[h.messages.length - 1].text, reply, "the reply is the stored one");
  await w.input.waitFor();
});

// ----------------------------------------------------------------- runner --

const chromiumArgs = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let passed = 0;
let failed = 0;
const started = Date.now();
const slug = (s) => s.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 60);

// One browser per test, each with its own fresh profile (--user-data-dir):
// no storage, cache or connection carries over from one test to the next.
for (const t of tests) {
  if (ONLY && !t.name.includes(ONLY)) continue;
  const t0 = Date.now();
  const profile = mkdtempSync(join(OUT, "profile-"));
  let ctx;
  let timer;
  const problems = [];
  try {
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: chromiumArgs,
      viewport: t.opts.viewport || { width: 1024, height: 720 },
      timeout: 30_000,
    });
    ctx.setDefaultTimeout(15_000);
    const page = ctx.pages()[0] || (await ctx.newPage());
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("console", (m) => {
      if (m.type() === "error" && !/Failed to load resource|ERR_INTERNET_DISCONNECTED/.test(m.text()))
        problems.push("console error: " + m.text());
    });
    const shot = join(OUT, slug(t.name) + ".png");
    try {
      await Promise.race([
        t.fn(page, ctx),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Failure(`timed out after ${TEST_TIMEOUT / 1000}s`)), TEST_TIMEOUT);
        }),
      ]);
      assert(!problems.length, problems.join("; "));
    } finally {
      await page.screenshot({ path: shot, animations: "disabled" }).catch(() => {});
    }
    passed++;
    console.log(`  PASS ${t.name} (${((Date.now() - t0) / 1000).toFixed(1)}s)`);
  } catch (e) {
    failed++;
    const msg = e instanceof Failure ? e.message : (e && e.stack) || String(e);
    console.log(`  FAIL ${t.name} (${((Date.now() - t0) / 1000).toFixed(1)}s)\n       ${msg.split("\n").slice(0, 6).join("\n       ")}`);
  } finally {
    clearTimeout(timer);
    await ctx?.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
}

console.log(`browser: tests took ${((Date.now() - started) / 1000).toFixed(0)}s; screenshots in ${OUT}`);
console.log(`browser: ${passed} passed, ${failed} failed`);
if (COUNTS) writeFileSync(COUNTS, `${passed} ${failed}\n`);
process.exit(failed ? 1 : 0);
