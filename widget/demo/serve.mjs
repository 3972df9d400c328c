// The demo storefront: a static server, on its own origin, for the product
// page (and a page with hostile CSS) with the widget embedded by its one tag.
//
//   node demo/serve.mjs --port 8090 --api http://127.0.0.1:9000 [--host 127.0.0.1] [--exit-with PID]
//
// Query parameters become the script tag's data-* attributes
// (/?page-size=5&theme=dark -> data-page-size="5" data-theme="dark").
// --exit-with: stop when that process is gone (make dev execs cargo lambda).
import { createServer } from "node:http";
import { readFileSync } from "node:fs";

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf("--" + name);
  return i >= 0 ? args[i + 1] : fallback;
};
const port = +opt("port", "8090");
const host = opt("host", "127.0.0.1");
const api = opt("api", "http://127.0.0.1:9000");
const parent = +opt("exit-with", "0");
const dir = new URL(".", import.meta.url);
const widget = new URL("../dist/chat-widget.js", import.meta.url);

const esc = (s) => s.replace(/[&"<>]/g, (c) => `&#${c.charCodeAt(0)};`);
const pages = { "/": "index.html", "/index.html": "index.html", "/hostile.html": "hostile.html" };

const server = createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  const send = (status, type, body) => {
    res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
    res.end(body);
  };
  try {
    if (url.pathname === "/chat-widget.js") return send(200, "text/javascript; charset=utf-8", readFileSync(widget));
    if (url.pathname === "/favicon.ico") return send(204, "image/x-icon", "");
    const page = pages[url.pathname];
    if (!page) return send(404, "text/plain", "not found");
    let attrs = "";
    for (const [k, v] of url.searchParams) if (/^[a-z][a-z-]*$/.test(k) && k !== "api") attrs += ` data-${k}="${esc(v)}"`;
    const html = readFileSync(new URL(page, dir), "utf8").replace("{{API}}", esc(api)).replace("{{ATTRS}}", attrs);
    send(200, "text/html; charset=utf-8", html);
  } catch (e) {
    send(500, "text/plain", String(e && e.message));
  }
});
server.listen(port, host, () => console.log(`demo: serving http://${host}:${port}/ (API ${api})`));
if (parent) {
  setInterval(() => {
    try {
      process.kill(parent, 0);
    } catch {
      process.exit(0);
    }
  }, 1000).unref();
}
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(0));
