"""The assertions of scripts/e2e.sh, against a running `cargo lambda watch`.

    python checks.py --port PORT --events DIR --origin ORIGIN --counts FILE

1. Fires every API Gateway fixture in DIR at its function with
   `cargo lambda invoke <function> --data-file <fixture> --output-format json`
   (which prints the function's raw Lambda response: statusCode, headers,
   body) and checks status, error code or reply, and the contract's headers.
   The function is the file name's prefix (send-message-*, get-history-*,
   cleanup-*, notify-handoffs-*). What a fixture must answer follows from its name (EXPECT
   below); files that are not events (a SAM --env-vars file) are skipped, and
   any other file is a failure, so that a new fixture gets an expectation.
2. Over HTTP on the emulator's routed paths (Cargo.toml
   [workspace.metadata.lambda.watch.router]): a three-message conversation
   and its history, the sessions the fixtures created, 404 and 400 cases.

Prints one PASS/FAIL line per check; writes "<passed> <failed>" to FILE.
Exits 1 if any check failed.
"""

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

# Per invoke: the first call of a function may still compile it (e2e.sh
# pre-builds, so it normally only starts the binary).
FIRST_CALL_TIMEOUT = int(os.environ.get("E2E_FIRST_CALL_TIMEOUT", "360"))
CALL_TIMEOUT = int(os.environ.get("E2E_CALL_TIMEOUT", "60"))

# (substring of the fixture's name, status, error code); first match wins.
EXPECT = [
    ("invalid-json", 400, "invalid_json"),
    ("empty-message", 400, "invalid_message"),
    ("invalid-message", 400, "invalid_message"),
    ("bad-session", 400, "invalid_session_id"),
    ("bad-id", 400, "invalid_session_id"),
    ("too-large", 413, "payload_too_large"),
    ("unsupported-media", 415, "unsupported_media_type"),
]
# Otherwise: send-message answers 200 with a reply; get-history 404 (the
# fixtures name a session that a fresh database does not hold).
DEFAULT = {"send-message": (200, None), "get-history": (404, "session_not_found")}

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"  PASS {name}", flush=True)
        else:
            self.failed += 1
            print(f"  FAIL {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok


C = Checks()
first_call = set()


def is_uuid(s):
    return isinstance(s, str) and bool(UUID_RE.match(s))


def short(v, n=300):
    s = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "..."


# ------------------------------------------------------------ invoking ----


def invoke(port, function, data_file, raw=False):
    """Runs `cargo lambda invoke`; returns the parsed JSON it prints (raw: the text)."""
    timeout = CALL_TIMEOUT if function in first_call else FIRST_CALL_TIMEOUT
    first_call.add(function)
    cmd = [
        "cargo", "lambda", "invoke", function,
        "--data-file", data_file,
        "--invoke-address", "127.0.0.1",
        "--invoke-port", str(port),
        "--color", "never",
    ] + ([] if raw else ["--output-format", "json"])
    started = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`{' '.join(cmd)}` did not answer within {timeout} s")
    if p.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {p.returncode}: {short(p.stderr.strip() or p.stdout, 2000)}")
    if raw:
        print(f"  .. {function} <- {os.path.basename(data_file)} ({time.monotonic() - started:.1f} s)", flush=True)
        return p.stdout
    try:
        out = json.loads(p.stdout)
    except ValueError:
        raise RuntimeError(f"`cargo lambda invoke` printed no JSON: {short(p.stdout)}")
    print(f"  .. {function} <- {os.path.basename(data_file)} ({time.monotonic() - started:.1f} s)", flush=True)
    return out


def invoke_streaming(port, function, data_file):
    """The emulator's Invoke API for a streaming function: (status, lower-cased headers, body text)."""
    timeout = CALL_TIMEOUT if function in first_call else FIRST_CALL_TIMEOUT
    first_call.add(function)
    with open(data_file, "rb") as f:
        data = f.read()
    url = f"http://127.0.0.1:{port}/2015-03-31/functions/{function}/invocations"
    req = urllib.request.Request(url, data=data, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    except OSError as e:
        raise RuntimeError(f"POST {url} failed: {e}")
    print(f"  .. {function} <- {os.path.basename(data_file)} ({time.monotonic() - started:.1f} s)", flush=True)
    return status, {k.lower(): v for k, v in headers.items()}, raw.decode("utf-8", "replace")


def lambda_http_view(resp):
    """(status, lower-cased headers, parsed body) of a Lambda HTTP response (v1 or v2)."""
    headers = {k.lower(): v for k, v in (resp.get("headers") or {}).items()}
    for k, vs in (resp.get("multiValueHeaders") or {}).items():
        if vs:
            headers.setdefault(k.lower(), vs[0])
    body = resp.get("body") or ""
    if resp.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = body
    return resp.get("statusCode"), headers, parsed


def request_origin(event):
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    return headers.get("origin")


def request_body(event):
    body = event.get("body")
    if body and event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def check_headers(name, headers, origin, allowed):
    C.check(f"{name}: Content-Type is JSON",
            headers.get("content-type", "").startswith("application/json"), short(headers))
    C.check(f"{name}: X-Request-Id set", bool(headers.get("x-request-id")), short(headers))
    if origin and origin in allowed:
        C.check(f"{name}: CORS allows {origin}",
                headers.get("access-control-allow-origin") == origin
                and "origin" in headers.get("vary", "").lower(), short(headers))


def check_error(name, status, body, want_status, want_code):
    C.check(f"{name}: {want_status} {want_code}",
            status == want_status
            and isinstance(body, dict)
            and isinstance(body.get("error"), dict)
            and body["error"].get("code") == want_code
            and isinstance(body["error"].get("message"), str),
            f"got {status} {short(body)}")


def check_reply(name, status, body, client_sid=None):
    ok = C.check(f"{name}: 200 with reply and sessionId",
                 status == 200 and isinstance(body, dict)
                 and isinstance(body.get("reply"), str) and body["reply"].strip() != ""
                 and is_uuid(body.get("sessionId")),
                 f"got {status} {short(body)}")
    if ok and client_sid is not None:
        C.check(f"{name}: unknown client sessionId replaced by a server one",
                body["sessionId"] != client_sid, short(body))
    return body.get("sessionId") if ok else None


def sse_events(text):
    """[(event, data parsed as JSON)] of a Server-Sent Events body."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        ev, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                ev = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
        if data:
            try:
                out.append((ev, json.loads("\n".join(data))))
            except ValueError:
                out.append((ev, "\n".join(data)))
    return out


def check_stream(name, text):
    """session first, deltas, done last (the contract's stream); the session id or None."""
    evs = sse_events(text)
    kinds = [e for e, _ in evs]
    ok = C.check(f"{name}: session, delta*, done",
                 len(evs) >= 2 and kinds[0] == "session" and kinds[-1] == "done"
                 and all(k == "delta" for k in kinds[1:-1]), short(text))
    if not ok:
        return None
    sid = evs[0][1].get("sessionId") if isinstance(evs[0][1], dict) else None
    done = evs[-1][1] if isinstance(evs[-1][1], dict) else {}
    ok = C.check(f"{name}: done has the reply, the session's id and a messageId",
                 is_uuid(sid) and done.get("sessionId") == sid and is_uuid(done.get("messageId"))
                 and isinstance(done.get("reply"), str) and done["reply"].strip() != "", short(evs))
    return sid if ok else None


def fixtures(port, events_dir, allowed, created):
    names = sorted(f for f in os.listdir(events_dir) if f.endswith(".json"))
    for fname in names:
        path = os.path.join(events_dir, fname)
        with open(path, encoding="utf-8") as f:
            event = json.load(f)
        function = next((fn for fn in ("send-message", "get-history", "cleanup", "notify-handoffs")
                         if fname.startswith(fn + "-")), None)
        if function is None:
            if isinstance(event, dict) and "Parameters" in event and not ({"version", "httpMethod", "source"} & event.keys()):
                print(f"  skip {fname} (a `sam local invoke --env-vars` file, not an event)")
                continue
            C.check(f"{fname}: known fixture", False,
                    "name starts with no function (send-message-, get-history-, cleanup-, notify-handoffs-)")
            continue
        name = f"invoke {function} {fname}"
        # send-message runs under the streaming runner: `cargo lambda invoke`
        # keeps only the body of its answer (and exits 1 on a 4xx, taking
        # the body for a malformed Lambda error), so it is invoked through
        # the emulator's Invoke API, which answers with the status and
        # headers of the function's streamed prelude, then the body.
        streamed = function == "send-message" and "stream" in fname
        try:
            if function == "send-message":
                status, headers, text = invoke_streaming(port, function, path)
                resp = text if streamed else (status, headers, text)
            else:
                resp = invoke(port, function, path)
        except RuntimeError as e:
            C.check(name, False, str(e))
            continue

        if streamed:
            C.check(f"{name}: 200 text/event-stream",
                    status == 200 and headers.get("content-type", "").startswith("text/event-stream"),
                    f"{status} {headers.get('content-type')}")
            sent = request_body(event) or {}
            sid = check_stream(name, resp)
            if sid:
                created.append((fname, sid, sent.get("message", "").strip(), sse_events(resp)[-1][1]["reply"]))
            continue

        if function == "notify-handoffs":
            C.check(f"{name}: sent, failed and pending are counts",
                    isinstance(resp, dict)
                    and all(isinstance(resp.get(k), int) and resp[k] >= 0 for k in ("sent", "failed", "pending")),
                    short(resp))
            continue

        if function == "cleanup":
            C.check(f"{name}: sessionsDeleted is a count",
                    isinstance(resp, dict) and isinstance(resp.get("sessionsDeleted"), int)
                    and resp["sessionsDeleted"] >= 0, short(resp))
            continue

        if function == "send-message":
            status, headers, text = resp
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = text
            check_headers(name, headers, request_origin(event), allowed)
        else:
            if not C.check(f"{name}: Lambda HTTP response", isinstance(resp, dict) and "statusCode" in resp, short(resp)):
                continue
            status, headers, body = lambda_http_view(resp)
            check_headers(name, headers, request_origin(event), allowed)
        want_status, want_code = DEFAULT[function]
        for needle, st, code in EXPECT:
            if needle in fname:
                want_status, want_code = st, code
                break
        if want_status == 200 and function == "send-message":
            sent = request_body(event) or {}
            sid = check_reply(name, status, body, sent.get("sessionId"))
            if sid:
                created.append((fname, sid, sent.get("message", "").strip(), body["reply"]))
        else:
            check_error(name, status, body, want_status, want_code)


# ---------------------------------------------------------------- HTTP ----


def http(method, url, body=None, origin=None):
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if origin:
        req.add_header("Origin", origin)
    try:
        with urllib.request.urlopen(req, timeout=CALL_TIMEOUT) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    hdrs = {k.lower(): v for k, v in headers.items()}
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return status, hdrs, parsed


def check_history(name, body, sid, exchanges):
    """exchanges: [(user text, ai reply)] in order."""
    msgs = body.get("messages") if isinstance(body, dict) else None
    if not C.check(f"{name}: sessionId and {2 * len(exchanges)} messages",
                   isinstance(msgs, list) and body.get("sessionId") == sid and len(msgs) == 2 * len(exchanges),
                   short(body, 1000)):
        return
    senders = [m.get("sender") for m in msgs]
    C.check(f"{name}: user/ai alternate", senders == ["user", "ai"] * len(exchanges), str(senders))
    C.check(f"{name}: user texts in order", [m.get("text") for m in msgs[0::2]] == [u for u, _ in exchanges],
            short([m.get("text") for m in msgs[0::2]]))
    C.check(f"{name}: ai texts are the replies", [m.get("text") for m in msgs[1::2]] == [a for _, a in exchanges],
            short([m.get("text") for m in msgs[1::2]]))
    ts = [m.get("timestamp") for m in msgs]
    C.check(f"{name}: timestamps are ms, oldest first",
            all(isinstance(t, int) and t > 1_600_000_000_000 for t in ts) and ts == sorted(ts), str(ts))
    ids = [m.get("id") for m in msgs]
    C.check(f"{name}: message ids are distinct UUIDs", all(is_uuid(i) for i in ids) and len(set(ids)) == len(ids),
            str(ids))


def stream_post(url, payload, origin):
    """POST with Accept: text/event-stream; (status, content type, [(arrival s, chunk)])."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "text/event-stream")
    if origin:
        req.add_header("Origin", origin)
    started, chunks = time.monotonic(), []
    with urllib.request.urlopen(req, timeout=CALL_TIMEOUT) as r:
        while True:
            line = r.readline()
            if not line:
                break
            chunks.append((time.monotonic() - started, line.decode("utf-8")))
        return r.status, r.headers.get("content-type", ""), chunks


def stream_over_http(chat, history, origin):
    """A streamed two-message conversation: event order, deltas spread over
    time (the fake Claude writes one token every few ms), and done.reply
    exactly what the history then shows."""
    sid, exchanges = None, []
    for i, text in enumerate(["What are your shipping options?", "And returns?"], 1):
        payload = {"message": text} if sid is None else {"message": text, "sessionId": sid}
        name = f"streamed POST /api/chat #{i}"
        try:
            status, ctype, chunks = stream_post(chat, payload, origin)
        except Exception as e:  # noqa: BLE001 - any failure is the check's
            C.check(name, False, str(e))
            return
        C.check(f"{name}: 200 text/event-stream", status == 200 and ctype.startswith("text/event-stream"),
                f"{status} {ctype}")
        text_all = "".join(c for _, c in chunks)
        got = check_stream(name, text_all)
        if got is None:
            return
        evs = sse_events(text_all)
        deltas = [d for e, d in evs if e == "delta"]
        C.check(f"{name}: Claude's words arrive as deltas", len(deltas) >= 2, short(evs))
        delta_lines = [at for at, c in chunks if c.startswith("event: delta")]
        C.check(f"{name}: deltas spread over time, not one lump",
                len(delta_lines) >= 2 and delta_lines[-1] - delta_lines[0] > 0.05, str(delta_lines))
        if sid is not None:
            C.check(f"{name}: same session", got == sid, f"{got} != {sid}")
        sid = got
        exchanges.append((text, evs[-1][1]["reply"]))
    status, _, body = http("GET", f"{history}/{sid}", origin=origin)
    name = "GET history of the streamed conversation"
    if C.check(f"{name}: 200", status == 200, f"got {status} {short(body)}"):
        check_history(name, body, sid, exchanges)


def over_http(port, origin, allowed, created):
    base = f"http://127.0.0.1:{port}"
    chat, history = f"{base}/api/chat", f"{base}/api/chat/history"

    texts = [
        "Hi! Do you ship to Canada?",
        "How long does express delivery take?",
        "Can I return shoes after 30 days? 👟",
    ]
    sid, exchanges = None, []
    for i, text in enumerate(texts, 1):
        payload = {"message": text} if sid is None else {"message": text, "sessionId": sid}
        status, headers, body = http("POST", chat, payload, origin)
        name = f"POST /api/chat #{i}"
        got = check_reply(name, status, body)
        if i == 1:
            check_headers(name, headers, origin, allowed)
        if got is None:
            return
        if sid is not None:
            C.check(f"{name}: same session", got == sid, f"{got} != {sid}")
        sid = got
        exchanges.append((text, body["reply"]))

    status, headers, body = http("GET", f"{history}/{sid}", origin=origin)
    name = "GET /api/chat/history/{id}"
    if C.check(f"{name}: 200", status == 200, f"got {status} {short(body)}"):
        check_headers(name, headers, origin, allowed)
        check_history(name, body, sid, exchanges)

    stream_over_http(chat, history, origin)

    # The sessions the send-message fixtures created, read back over HTTP.
    for fname, fsid, text, reply in created:
        status, _, body = http("GET", f"{history}/{fsid}", origin=origin)
        name = f"GET history of the {fname} session"
        if C.check(f"{name}: 200", status == 200, f"got {status} {short(body)}"):
            check_history(name, body, fsid, [(text, reply)])

    client_sid = str(uuid.uuid4())
    status, _, body = http("POST", chat, {"message": "Hello again", "sessionId": client_sid}, origin)
    check_reply("POST /api/chat with an unknown sessionId", status, body, client_sid)

    status, _, body = http("GET", f"{history}/{uuid.uuid4()}", origin=origin)
    check_error("GET history of an unknown UUID", status, body, 404, "session_not_found")
    status, _, body = http("GET", f"{history}/not-a-uuid", origin=origin)
    check_error("GET history of a non-UUID", status, body, 400, "invalid_session_id")
    status, _, body = http("POST", chat, {"message": " \u0000 \t "}, origin)
    check_error("POST /api/chat with only whitespace and NUL", status, body, 400, "invalid_message")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--origin", required=True)
    ap.add_argument("--allowed-origins", default="")
    ap.add_argument("--counts", required=True)
    a = ap.parse_args()
    allowed = {o.strip() for o in (a.allowed_origins or a.origin).split(",") if o.strip()}

    created = []
    try:
        print("e2e: fixtures through `cargo lambda invoke`", flush=True)
        fixtures(a.port, a.events, allowed, created)
        print("e2e: HTTP on the emulator's routes", flush=True)
        over_http(a.port, a.origin, allowed, created)
    except Exception as e:  # an unexpected error is a failed check, not a traceback-only exit
        C.check("checks ran to the end", False, f"{type(e).__name__}: {e}")
    finally:
        with open(a.counts, "w") as f:
            f.write(f"{C.passed} {C.failed}\n")
    sys.exit(1 if C.failed else 0)


if __name__ == "__main__":
    main()
