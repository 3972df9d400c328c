// The widget's stylesheet, inside its shadow root: the page's selectors cannot
// reach in, and nothing here reaches out. The host element itself is in the
// page, so its rules are `!important` (inside a shadow tree, `:host`
// !important declarations beat the page's, even its own !important ones).
// Lengths are px, never rem: a page's `html { font-size }` must not resize it.
// Stores theme it with the --chat-* custom properties, which inherit into the
// shadow tree from wherever the page sets them (:root, say).
export const CSS = `
:host{all:initial!important;display:block!important;position:fixed!important;inset:auto 0 0 auto!important;width:0!important;height:0!important;margin:0!important;padding:0!important;border:0!important;overflow:visible!important;visibility:visible!important;opacity:1!important;transform:none!important;filter:none!important;clip-path:none!important;contain:none!important;pointer-events:auto!important;z-index:var(--chat-z-index,2147483000)!important}
*,*::before,*::after{box-sizing:border-box;margin:0;padding:0;font:inherit;color:inherit;letter-spacing:inherit;text-transform:none}
[hidden]{display:none!important}
.w{--a:var(--chat-accent,#1d4ed8);--at:var(--chat-accent-text,#fff);--bg:var(--chat-background,#fff);--fg:var(--chat-text,#1f2937);--ai:var(--chat-bubble,#eef1f5);--r:var(--chat-radius,14px);--ln:#8885;color-scheme:light;font:15px/1.45 var(--chat-font,system-ui,-apple-system,"Segoe UI",Roboto,sans-serif);color:var(--fg);text-align:left;letter-spacing:normal;word-spacing:normal;direction:ltr}
:host([data-scheme=dark]) .w{--bg:var(--chat-background,#1c1c21);--fg:var(--chat-text,#ececf1);--ai:var(--chat-bubble,#2d2d35);--a:var(--chat-accent,#3b6fe0);color-scheme:dark}
button{cursor:pointer;border:0;background:none}
:focus-visible{outline:3px solid var(--a);outline-offset:2px}
.l{position:fixed;right:16px;bottom:16px;width:56px;height:56px;border-radius:50%;background:var(--a);color:var(--at);display:grid;place-items:center;box-shadow:0 4px 14px #0004}
.l svg{width:28px;height:28px;fill:currentColor}
.l[aria-expanded=true] svg:first-child,.l[aria-expanded=false] svg+svg{display:none}
.p{position:fixed;right:16px;bottom:84px;width:min(380px,calc(100vw - 32px));height:min(600px,calc(100vh - 104px));display:flex;flex-direction:column;background:var(--bg);color:var(--fg);border-radius:var(--r);box-shadow:0 8px 32px #0005;overflow:hidden;animation:in .18s ease-out}
:host([data-position=left]) .l,:host([data-position=left]) .p{right:auto;left:16px}
@keyframes in{from{opacity:0;transform:translateY(12px)}}
header{display:flex;align-items:center;gap:8px;padding:8px 8px 8px 16px;background:var(--a);color:var(--at)}
h2{flex:1;font-size:16px;font-weight:600;line-height:1.3}
.x{width:44px;height:44px;border-radius:50%;display:grid;place-items:center;font-size:26px;line-height:1}
.x:focus-visible{outline-color:var(--at);outline-offset:-4px}
.h{padding:8px 16px;font-size:13px;background:#dcfce7;color:#14532d}
.g{flex:1;overflow-y:auto;overscroll-behavior:contain;padding:12px}
.more{display:block;margin:0 auto 8px;padding:8px 12px;font-size:13px;text-decoration:underline;color:var(--fg)}
.list{display:flex;flex-direction:column;gap:8px}
.m{max-width:85%;padding:8px 12px;border-radius:var(--r);white-space:pre-wrap;overflow-wrap:anywhere;align-self:flex-start;background:var(--ai)}
.m.u{align-self:flex-end;background:var(--a);color:var(--at)}
.m.q{opacity:.65}
.d::after{content:"";display:inline-block;width:24px;height:8px;background:radial-gradient(circle,currentColor 2px,#0000 3px) 0 50%/8px 8px repeat-x;animation:dots 1s steps(4) infinite;vertical-align:middle}
@keyframes dots{from{width:0}to{width:32px}}
.n{display:flex;flex-wrap:wrap;align-items:center;gap:4px 8px;padding:8px 16px;font-size:13px;background:#fef3c7;color:#78350f}
.n:empty{display:none}
.n button{padding:4px 10px;border-radius:8px;border:1px solid currentColor;font-weight:600}
form{display:flex;gap:8px;align-items:flex-end;padding:10px;border-top:1px solid var(--ln)}
textarea{flex:1;min-width:0;resize:none;height:44px;max-height:128px;padding:10px 12px;border:1px solid var(--ln);border-radius:10px;background:var(--bg);color:var(--fg);font-size:16px;line-height:1.4}
textarea::placeholder{color:var(--fg);opacity:.6}
.s{height:44px;min-width:44px;padding:0 16px;border-radius:10px;background:var(--a);color:var(--at);font-weight:600}
[aria-disabled=true]{opacity:.5;cursor:not-allowed}
.c{padding:0 12px 6px;font-size:12px;text-align:right}
.c:empty{display:none}
.c.o{color:#b91c1c;font-weight:600}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}
@media (max-width:480px){.p{inset:0;width:auto;height:auto;border-radius:0}.l[aria-expanded=true]{display:none}}
@media (prefers-reduced-motion:reduce){*,*::before,*::after{animation:none!important;transition:none!important;scroll-behavior:auto!important}}
`;
