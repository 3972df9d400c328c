"""The assertions of scripts/sam-local.sh: `sam local invoke` and `sam local start-api`.

    python checks.py --template T --env-vars F --events DIR --api-port P --api-log LOG
                     --db-url URL --origin O --counts FILE [--invoke-log LOG]

1. Every fixture in DIR through `sam local invoke <Function> -e <fixture>`,
   with the expectations of scripts/e2e/checks.py (imported, not copied):
   only its `invoke` and `invoke_streaming` are replaced. `sam local invoke` prints what the
   function returned; for send-message, which runs under lambda_http's
   streaming runner, that is the raw stream: a JSON prelude (statusCode,
   headers, cookies), eight NUL bytes, then the body. It is taken apart here
   into the status, headers and body the e2e checks read.
2. Over HTTP on `sam local start-api` (REST API routes, payload 1.0): a
   conversation. SAM CLI 1.170 has no response streaming locally: it reads
   the whole stream as the function's result, cannot parse it as JSON and
   answers 502 {"message": "Internal server error"} ("Invalid lambda response
   received" in its log), for every POST /api/chat, JSON or SSE alike. The
   function has run by then: the exchange is stored. So each POST is checked
   for exactly that answer and for its stored exchange (read from the
   database), the next POST continues the session found there, and
   GET /api/chat/history/{id} (not streamed) is checked in full.

Prints one PASS/FAIL line per check; writes "<passed> <failed>" to FILE.
Exits 1 if any check failed.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import uuid


def _load_e2e():
    """scripts/e2e/checks.py, as the module `e2e_checks` (this file has its name)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e", "checks.py")
    spec = importlib.util.spec_from_file_location("e2e_checks", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["e2e_checks"] = mod
    spec.loader.exec_module(mod)
    return mod


e2e = _load_e2e()

C = e2e.C
INVOKE_TIMEOUT = int(os.environ.get("SAM_LOCAL_INVOKE_TIMEOUT", "180"))
SAM_502 = {"message": "Internal server error"}
SAM_BAD_RESPONSE = "Invalid lambda response received"

# Filled in by main(): binary name (events' prefix) -> template logical id.
FUNCTIONS = {}
OPTS = None


def read_template(template):
    """({binary: logical id}, {binary: [event types]}) of the template's functions."""
    from samcli.yamlhelper import yaml_parse

    with open(template, encoding="utf-8") as f:
        doc = yaml_parse(f.read())
    ids, events = {}, {}
    for lid, res in (doc.get("Resources") or {}).items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        binary = ((res.get("Metadata") or {}).get("BuildProperties") or {}).get("Binary")
        if binary:
            ids[binary] = lid
            evs = (res.get("Properties") or {}).get("Events") or {}
            events[binary] = [e.get("Type") for e in evs.values()]
    return ids, events


def split_stream(raw):
    """(prelude dict, body text) of a streamed HTTP response, or None if `raw` is not one."""
    head, sep, body = raw.partition(b"\0" * 8)
    if not sep:
        return None
    try:
        prelude = json.loads(head)
    except ValueError:
        return None
    if not isinstance(prelude, dict) or "statusCode" not in prelude:
        return None
    return prelude, body.lstrip(b"\0").decode("utf-8", "replace")


def run_sam_invoke(function, data_file):
    """`sam local invoke` of the function built from binary `function`; its stdout (bytes)."""
    lid = FUNCTIONS.get(function)
    if lid is None:
        raise RuntimeError(f"no function built from binary {function} in {OPTS.template}")
    cmd = ["sam", "local", "invoke", lid, "-t", OPTS.template, "-e", data_file,
           "--env-vars", OPTS.env_vars, "--skip-pull-image"]
    started = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=INVOKE_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`{' '.join(cmd)}` did not finish within {INVOKE_TIMEOUT} s")
    err = p.stderr.decode("utf-8", "replace")
    if OPTS.invoke_log:
        with open(OPTS.invoke_log, "a", encoding="utf-8") as f:
            f.write(f"==== {lid} <- {os.path.basename(data_file)} (exit {p.returncode})\n{err}\n")
    if p.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {p.returncode}: {e2e.short(err.strip(), 2000)}")
    print(f"  .. {lid} <- {os.path.basename(data_file)} ({time.monotonic() - started:.1f} s)", flush=True)
    return p.stdout


def sam_invoke(_port, function, data_file, raw=False):
    """In place of scripts/e2e/checks.py's `invoke` (`cargo lambda invoke`): the function's result."""
    out = run_sam_invoke(function, data_file)
    if raw:
        return out.decode("utf-8", "replace")
    try:
        return json.loads(out)
    except ValueError:
        raise RuntimeError(f"`sam local invoke` printed no JSON: {e2e.short(out.decode('utf-8', 'replace'))}")


def sam_invoke_streaming(_port, function, data_file):
    """In place of scripts/e2e/checks.py's `invoke_streaming` (the emulator's Invoke API):
    (status, lower-cased headers, body text) of a streaming function's response."""
    out = run_sam_invoke(function, data_file)
    streamed = split_stream(out)
    if not C.check(f"sam local invoke {FUNCTIONS.get(function)} {os.path.basename(data_file)}: prints the raw "
                   "stream (JSON prelude, 8 NUL bytes, body)", streamed is not None, e2e.short(repr(out[:300]))):
        raise RuntimeError("not a streamed response")
    prelude, body = streamed
    headers = {k.lower(): v for k, v in (prelude.get("headers") or {}).items()}
    return prelude.get("statusCode"), headers, body


# ---------------------------------------------------------------- HTTP ----


def psql_json(sql, *args):
    """The one JSON value `sql` selects on the run's database; args are bound as :'a1'... variables."""
    cmd = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", OPTS.db_url]
    for i, a in enumerate(args, 1):
        cmd += ["-v", f"a{i}={a}"]
    p = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"psql: {p.stderr.strip()}")
    return json.loads(p.stdout)


def stored_exchange(text):
    """(session id, reply) stored for the user message `text`, or (None, None)."""
    rows = psql_json("SELECT coalesce(json_agg(json_build_array(m.session_id, (SELECT a.text FROM chat_messages a"
                     " WHERE a.session_id = m.session_id AND a.sender = 'ai' AND a.seq > m.seq ORDER BY a.seq"
                     " LIMIT 1))), '[]') FROM chat_messages m WHERE m.sender = 'user' AND m.text = :'a1'", text)
    if len(rows) != 1:
        return None, None
    sid, reply = rows[0]
    return sid, (reply or None)


def api_log_count(needle):
    try:
        with open(OPTS.api_log, encoding="utf-8", errors="replace") as f:
            return f.read().count(needle)
    except OSError:
        return 0


def post_streamed(name, url, payload, origin, accept=None):
    """A POST /api/chat through SAM's local API: SAM's 502, and the exchange stored."""
    before = api_log_count(SAM_BAD_RESPONSE)
    data = json.dumps(payload).encode("utf-8")
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Origin", origin)
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=INVOKE_TIMEOUT) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    C.check(f"{name}: SAM answers a streamed response 502 {SAM_502}",
            status == 502 and body == SAM_502, f"got {status} {e2e.short(body)}")
    # SAM writes its log line after answering: give it a moment.
    for _ in range(20):
        if api_log_count(SAM_BAD_RESPONSE) > before:
            break
        time.sleep(0.1)
    C.check(f"{name}: SAM's log says '{SAM_BAD_RESPONSE}'", api_log_count(SAM_BAD_RESPONSE) > before)
    sid, reply = stored_exchange(payload["message"])
    C.check(f"{name}: the function ran: message and reply stored", e2e.is_uuid(sid) and bool(reply),
            f"session {sid}, reply {e2e.short(reply)}")
    return sid, reply


def over_api(port, origin, allowed, created):
    base = f"http://127.0.0.1:{port}"
    chat, history = f"{base}/api/chat", f"{base}/api/chat/history"
    tag = uuid.uuid4().hex[:8]
    texts = [f"Hi! Do you ship to Canada? ({tag})", f"How long does express delivery take? ({tag})"]

    sid, reply = post_streamed("POST /api/chat #1", chat, {"message": texts[0]}, origin)
    if sid is None:
        return
    exchanges = [(texts[0], reply)]
    sid2, reply = post_streamed("POST /api/chat #2 into the session", chat,
                                {"message": texts[1], "sessionId": sid}, origin)
    C.check("POST /api/chat #2: same session", sid2 == sid, f"{sid2} != {sid}")
    if sid2 != sid:
        return
    exchanges.append((texts[1], reply))

    status, headers, body = e2e.http("GET", f"{history}/{sid}", origin=origin)
    name = "GET /api/chat/history/{id}"
    if C.check(f"{name}: 200", status == 200, f"got {status} {e2e.short(body)}"):
        e2e.check_headers(name, headers, origin, allowed)
        e2e.check_history(name, body, sid, exchanges)

    text = f"Is there a store in Lyon? ({tag})"
    sid3, _ = post_streamed("POST /api/chat with Accept: text/event-stream", chat,
                            {"message": text, "sessionId": sid}, origin, accept="text/event-stream")
    C.check("POST /api/chat (SSE): same session", sid3 == sid, f"{sid3} != {sid}")

    # The sessions the fixtures created, read back through the local API.
    for fname, fsid, ftext, freply in created:
        status, _, body = e2e.http("GET", f"{history}/{fsid}", origin=origin)
        name = f"GET history of the {fname} session"
        if C.check(f"{name}: 200", status == 200, f"got {status} {e2e.short(body)}"):
            e2e.check_history(name, body, fsid, [(ftext, freply)])

    status, _, body = e2e.http("GET", f"{history}/{uuid.uuid4()}", origin=origin)
    e2e.check_error("GET history of an unknown UUID", status, body, 404, "session_not_found")
    status, _, body = e2e.http("GET", f"{history}/not-a-uuid", origin=origin)
    e2e.check_error("GET history of a non-UUID", status, body, 400, "invalid_session_id")
    status, _, body = e2e.http("GET", f"{base}/api/nothing-here", origin=origin)
    C.check("GET an unknown route: SAM's 403 Missing Authentication Token (as API Gateway REST)",
            status == 403 and isinstance(body, dict) and body.get("message") == "Missing Authentication Token",
            f"got {status} {e2e.short(body)}")


def main():
    global OPTS
    ap = argparse.ArgumentParser()
    ap.add_argument("--template", required=True)
    ap.add_argument("--env-vars", required=True)
    ap.add_argument("--events", required=True)
    ap.add_argument("--api-port", type=int, required=True)
    ap.add_argument("--api-log", required=True)
    ap.add_argument("--db-url", required=True)
    ap.add_argument("--origin", required=True)
    ap.add_argument("--allowed-origins", default="")
    ap.add_argument("--counts", required=True)
    ap.add_argument("--invoke-log", default="")
    OPTS = ap.parse_args()
    allowed = {o.strip() for o in (OPTS.allowed_origins or OPTS.origin).split(",") if o.strip()}

    created = []
    try:
        ids, events = read_template(OPTS.template)
        FUNCTIONS.update(ids)
        # SAM's local API builds a payload 1.0 event for an `Api` (REST) route,
        # 2.0 for an `HttpApi` one by default.
        C.check("the routes are REST API events (`Api`): start-api sends them payload 1.0",
                events.get("send-message") == ["Api"] and events.get("get-history") == ["Api"], str(events))
        e2e.invoke = sam_invoke
        e2e.invoke_streaming = sam_invoke_streaming
        print("sam-local: every fixture through `sam local invoke`", flush=True)
        e2e.fixtures(0, OPTS.events, allowed, created)
        print("sam-local: a conversation through `sam local start-api`", flush=True)
        over_api(OPTS.api_port, OPTS.origin, allowed, created)
    except Exception as e:  # an unexpected error is a failed check, not a traceback-only exit
        C.check("checks ran to the end", False, f"{type(e).__name__}: {e}")
    finally:
        with open(OPTS.counts, "w") as f:
            f.write(f"{C.passed} {C.failed}\n")
    sys.exit(1 if C.failed else 0)


if __name__ == "__main__":
    main()
