// Entry point of chat-widget.js. A store embeds it with one tag:
//   <script src="chat-widget.js" data-api="https://<api-id>.execute-api.<region>.amazonaws.com/prod" defer></script>
import { mount } from "./widget";

const script = (document.currentScript ||
  document.querySelector("script[data-api][src*='chat-widget']")) as HTMLScriptElement | null;
const attr = (name: string, fallback = "") => script?.getAttribute("data-" + name) || fallback;
const api = attr("api").replace(/\/+$/, "");

// One widget, even when the tag is on the page twice (a theme and an app).
const start = () =>
  document.querySelector("[data-support-chat]") ||
  mount({
    api,
    title: attr("title", "Chat with us"),
    greeting: attr("greeting", "Hi! Ask us anything about your order, shipping or returns."),
    pageSize: Math.min(500, Math.max(1, parseInt(attr("page-size"), 10) || 30)),
    position: attr("position"),
    theme: attr("theme"),
  });

if (!api) console.error("chat-widget: the script tag needs data-api, the chat API's base URL");
else if (document.readyState == "loading") document.addEventListener("DOMContentLoaded", start);
else start();
