#!/usr/bin/env python3
"""`make cost` (scripts/cost.sh starts the services and calls this).

Two measurements, then two tables:

1. **What 1,000 conversations cost.** Conversations of five messages (the
   sample shopper questions of shared/src/knowledge.rs's tests) go through
   the release bootstraps as Lambda runs them (lambda_sim.py: a Runtime API
   per instance, API Gateway REST events, the widget's streamed replies),
   under the CPU share of the template's memory size, against PostgreSQL, a
   Redis of their own (every command it receives is counted) and the fake
   Claude taking `claude_reply_ms` a reply. Measured: the billed duration of
   each invocation, the token usage stored with each reply, the Redis
   commands. Priced with prices.toml, extrapolated to 1,000 conversations.
   Run again at 128 MB for the comparison.
2. **Is 128 MB enough?** Peak RSS of both functions (also on a 500-message
   conversation of 2,000-character messages: the largest page), and init,
   first-invocation and warm times with the fake Claude answering at once,
   without a CPU quota and under the quotas of 256 and 128 MB.

Only the standard library, and psql for the database.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lambda_sim import CpuQuota, Instance, history_event, send_event, sse_events  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("send-message", "get-history")


def log(msg: str) -> None:
    print(f"[cost] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------ inputs ----


def template_settings() -> dict:
    text = (ROOT / "template.yaml").read_text()
    glob = text[text.index("\nGlobals:") :]
    memory = int(re.search(r"^\s+MemorySize:\s*(\d+)", glob, re.M).group(1))
    arch = re.search(r"^\s+Architectures:\s*\[\s*(\w+)", glob, re.M).group(1)
    model = re.search(r"^  ClaudeModel:\n(?:    .*\n)*?    Default:\s*(\S+)", text, re.M).group(1)
    return {"memory_mb": memory, "architecture": arch, "model": model}


def sample_questions() -> list[str]:
    """The shopper questions of knowledge.rs's test tables, in order."""
    src = (ROOT / "shared/src/knowledge.rs").read_text()
    out = []
    for table in ("QUESTIONS", "FRESH_QUESTIONS"):
        start = src.index(f"const {table}: ")
        body = src[start : src.index("];", start)]
        out += re.findall(r'\(\s*"((?:[^"\\]|\\.)*)",\s*&\[', body)
    if len(out) < 20:
        raise SystemExit("cost: could not read the sample questions from shared/src/knowledge.rs")
    return [q.encode().decode("unicode_escape") if "\\" in q else q for q in out]


def tools_json_bytes() -> int:
    """Bytes of the `tools` array the request sends (the fake does not count
    it; the real API does): rebuilt from llm/wire.rs and domain.rs."""
    wire = (ROOT / "shared/src/llm/wire.rs").read_text()
    domain = (ROOT / "shared/src/domain.rs").read_text()
    m = re.search(r'"description":\s*"((?:[^"\\]|\\.)*)"', wire[wire.index("fn hand_off_tools") :])
    block = domain[domain.index("impl HandoffReason") :]
    reasons = re.findall(r'HandoffReason::\w+ => "(\w+)"', block[: block.index("pub fn parse")])
    if not m or not reasons:
        log("warning: could not rebuild the tools array; counting it as 0 tokens")
        return 0
    tools = [
        {
            "name": "hand_off",
            "description": m.group(1),
            "input_schema": {
                "type": "object",
                "properties": {"reason": {"type": "string", "enum": reasons}},
                "required": ["reason"],
            },
        }
    ]
    return len(json.dumps(tools, ensure_ascii=False, separators=(",", ":")).encode())


def psql_json(db_url: str, sql: str):
    out = subprocess.run(
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", db_url, "-c", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.strip()
    return json.loads(out or "null")


def psql(db_url: str, sql: str) -> None:
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", db_url, "-c", sql],
        check=True,
        capture_output=True,
        timeout=300,
    )


def money(x: float) -> str:
    """A unit price: small ones without an exponent."""
    return "$" + (f"{x:.10f}".rstrip("0") if x < 0.01 else f"{x:g}")


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


# ------------------------------------------------------ the functions ----


class Fleet:
    """Starts function instances with the service's environment, each under a
    CPU quota of its own when asked (as each Lambda instance has its own)."""

    def __init__(self, args, env: dict, memory_mb: int, share: float | None, period_us: int, tag: str):
        self.args = args
        self.env = env
        self.memory_mb = memory_mb
        self.share = share
        self.period_us = period_us
        self.tag = tag
        self.quotas: list[CpuQuota] = []
        self.instances: list[Instance] = []
        self.lock = threading.Lock()
        self.quota_failed = False

    def start(self, name: str) -> Instance:
        quota = None
        if self.share is not None:
            quota = CpuQuota.create(f"cost-{self.args.run_id}-{self.tag}-{uuid.uuid4().hex[:8]}", self.share, self.period_us)
            if quota is None:
                self.quota_failed = True
        inst = Instance(
            name,
            Path(self.args.bin_dir) / name,
            self.env,
            Path(self.args.work) / f"{name}.log",
            self.memory_mb,
            quota,
        )
        inst.quota = quota
        with self.lock:
            self.instances.append(inst)
            if quota:
                self.quotas.append(quota)
        return inst

    def stop(self, inst: Instance) -> None:
        inst.stop()
        if inst.quota:
            inst.quota.remove()

    def close(self) -> None:
        for inst in self.instances:
            try:
                inst.stop()
            except Exception:
                pass
        for q in self.quotas:
            q.remove()


def service_env(args, claude_url: str, rate_limits: bool) -> dict:
    env = {
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "REDIS_KEY_PREFIX": args.redis_prefix,
        "CLAUDE_API_KEY": "test",
        "ANTHROPIC_BASE_URL": claude_url,
        "ALLOWED_ORIGINS": "https://shop.example.com",
        "RUST_LOG": "info",
    }
    if not rate_limits:
        env |= {
            "RATE_LIMIT_PER_SESSION_PER_MINUTE": "0",
            "RATE_LIMIT_PER_IP_PER_MINUTE": "0",
            "RATE_LIMIT_HISTORY_PER_IP_PER_MINUTE": "0",
        }
    return env


def with_ip(event: dict, n: int) -> dict:
    """Each shopper behind an address of their own (rate limits are per IP)."""
    ip = f"198.51.{100 + n // 250}.{1 + n % 250}"
    event["requestContext"]["identity"]["sourceIp"] = ip
    event["headers"]["X-Forwarded-For"] = ip
    event["multiValueHeaders"]["X-Forwarded-For"] = [ip]
    return event


def converse(send: Instance, questions: list[str], ip_n: int) -> tuple[str, list[float]]:
    """One conversation, streamed as the widget does; returns its session id
    and the duration of each POST."""
    sid, durations = None, []
    for q in questions:
        out = send.invoke(with_ip(send_event(q, sid, stream=True, key=str(uuid.uuid4())), ip_n), timeout=60)
        status, _, body = out.http()
        events = dict(sse_events(body)) if status == 200 else {}
        if "done" not in events:
            raise RuntimeError(f"send-message answered {status}: {body[:300]!r}")
        sid = events["done"]["sessionId"]
        durations.append(out.duration)
        send.wait_idle()
    return sid, durations


def read_history(hist: Instance, sid: str, ip_n: int, expect: int | None = None) -> float:
    out = hist.invoke(with_ip(history_event(sid), ip_n), timeout=60)
    status, _, body = out.http()
    if status != 200:
        raise RuntimeError(f"get-history answered {status}: {body[:300]!r}")
    n = len(json.loads(body)["messages"])
    if expect is not None and n != expect:
        raise RuntimeError(f"get-history: {n} messages, expected {expect}")
    hist.wait_idle()
    return out.duration


# ------------------------------------------------------------ 1. cost ----


def workload(args, memory_mb: int, share: float | None, questions: list[str]) -> dict:
    """`args.conversations` conversations on `args.workers` pairs of instances."""
    fleet = Fleet(args, service_env(args, args.claude_url, rate_limits=True), memory_mb, share, 100_000, f"w{memory_mb}")
    jobs: queue.Queue[int] = queue.Queue()
    offset = args.conversation_offset
    args.conversation_offset += args.conversations
    for i in range(args.conversations):
        jobs.put(offset + i)
    results = {"post": [], "get": [], "init": {f: [] for f in FUNCTIONS}, "rss_kib": {f: [] for f in FUNCTIONS}, "sessions": []}
    errors: list[str] = []
    lock = threading.Lock()
    per = args.messages

    def worker() -> None:
        try:
            send, hist = fleet.start("send-message"), fleet.start("get-history")
            inits = (send.wait_ready(), hist.wait_ready())
            with lock:
                results["init"]["send-message"].append(inits[0])
                results["init"]["get-history"].append(inits[1])
            while True:
                try:
                    n = jobs.get_nowait()
                except queue.Empty:
                    break
                qs = [questions[(n * per + j) % len(questions)] for j in range(per)]
                sid, posts = converse(send, qs, n)
                got = read_history(hist, sid, n, expect=2 * per)
                with lock:
                    results["post"] += posts
                    results["get"].append(got)
                    results["sessions"].append(sid)
            with lock:
                results["rss_kib"]["send-message"].append(send.peak_rss_kib())
                results["rss_kib"]["get-history"].append(hist.peak_rss_kib())
        except Exception as e:  # reported below, after the others finish
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.workers)]
    started = time.monotonic()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        fleet.close()
    results["wall_s"] = time.monotonic() - started
    results["quota_applied"] = share is not None and not fleet.quota_failed
    if errors:
        raise SystemExit("cost: the workload failed: " + "; ".join(errors[:3]))
    return results


def redis_commands(monitor_file: Path) -> dict:
    """Commands clients sent (a script's inner calls are not commands of their own)."""
    counts: dict[str, int] = {}
    pattern = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"')
    for line in monitor_file.read_text(errors="replace").splitlines():
        m = pattern.match(line)
        if not m or m.group(1) == "lua":
            continue
        name = m.group(2).upper()
        counts[name] = counts.get(name, 0) + 1
    return counts


SETUP_COMMANDS = {"HELLO", "CLIENT", "SELECT", "AUTH", "PING", "INFO", "SCRIPT"}


def token_usage(args, sessions: list[str]) -> dict:
    """The stored usage of every reply, and the split of each request's
    input into the system prompt and the conversation (the fake counts
    bytes/4 of both; the conversation part is rebuilt from the stored turns)."""
    ids = ",".join(f"'{s}'" for s in sessions)
    rows = psql_json(
        args.database_url,
        "SELECT coalesce(json_agg(json_build_object('s', session_id, 'sender', sender, 'text', text, "
        "'in', input_tokens, 'out', output_tokens, 'cr', cache_read_tokens, 'cw', cache_write_tokens, "
        "'source', source, 'model', model) ORDER BY session_id, seq), '[]'::json) "
        f"FROM chat_messages WHERE session_id IN ({ids})",
    )
    by_session: dict[str, list] = {}
    for r in rows:
        by_session.setdefault(r["s"], []).append(r)
    requests = []
    for msgs in by_session.values():
        for i, m in enumerate(msgs):
            if m["sender"] != "ai":
                continue
            turns = [{"role": "user" if t["sender"] == "user" else "assistant", "content": t["text"]} for t in msgs[:i]]
            msg_bytes = len(json.dumps(turns, ensure_ascii=False, separators=(",", ":")).encode())
            requests.append({**m, "messages_bytes": msg_bytes})
    sources = {r["source"] for r in requests}
    if sources != {"claude"}:
        raise SystemExit(f"cost: replies came from {sources}, not only Claude (the fake): see the function logs")
    system_bytes = statistics.median(4 * r["in"] - r["messages_bytes"] + 1.5 for r in requests)
    return {
        "requests": requests,
        "system_bytes": system_bytes,
        "models": sorted({r["model"] for r in requests}),
        "cache_reported": sum((r["cr"] or 0) + (r["cw"] or 0) for r in requests),
    }


def price_run(prices: dict, tmpl: dict, run: dict, usage: dict, redis: dict, tools_bytes: int, memory_mb: int) -> dict:
    a = prices["assumptions"]
    conv = a["conversations"]
    n_conv = len(run["sessions"])
    scale = conv / n_conv
    lam = prices["lambda"]
    gb_s_price = lam[f"{tmpl['architecture']}_gb_second"]
    gb = memory_mb / 1024
    post_ms = [math.ceil(d * 1000) for d in run["post"]]
    get_ms = [math.ceil(d * 1000) for d in run["get"]]
    init_ms = {f: statistics.median(v) * 1000 for f, v in run["init"].items()}
    posts = conv * a["messages_per_conversation"]
    gets = conv * a["history_reads_per_conversation"]
    colds = conv * a["cold_starts_per_conversation"]
    lines = []

    def line(name, qty, unit, unit_price, per, note=""):
        cost = qty * unit_price / per
        lines.append({"line": name, "quantity": qty, "unit": unit, "unit_price": unit_price, "per": per, "cost": cost, "note": note})

    post_mean = statistics.mean(post_ms)
    get_mean = statistics.mean(get_ms)
    line("Lambda duration: send-message", posts * post_mean / 1000 * gb, "GB-s", gb_s_price, 1,
         f"{posts:,} x {post_mean:,.0f} ms billed (mean) x {gb:g} GB")
    line("Lambda duration: get-history", gets * get_mean / 1000 * gb, "GB-s", gb_s_price, 1,
         f"{gets:,} x {get_mean:,.1f} ms x {gb:g} GB")
    init_total = sum(init_ms.values())
    line("Lambda duration: init (cold starts)", colds * init_total / 1000 * gb, "GB-s", gb_s_price, 1,
         f"{colds:,} x ({init_ms['send-message']:.0f} + {init_ms['get-history']:.0f} ms) x {gb:g} GB")
    line("Lambda requests", posts + gets, "requests", lam["per_million_requests"], 1e6)
    preflights = conv * a["preflights_per_conversation"]
    line("API Gateway REST requests", posts + gets + preflights, "requests",
         prices["api_gateway"]["rest_per_million_requests"], 1e6, f"{posts:,} POST + {gets:,} GET + {preflights:,} preflights")

    f = a["tokenizer_factor"]
    model = usage["models"][0] if usage["models"] else tmpl["model"]
    cp = prices["claude"]["models"][model]
    reqs = usage["requests"]
    system_tok = usage["system_bytes"] / 4
    tools_tok = tools_bytes / 4
    prefix = (system_tok + tools_tok) * f  # per request, in the real tokenizer's tokens
    conv_in = sum(r["in"] - system_tok for r in reqs) * f * scale
    out_tok = sum(r["out"] for r in reqs) * f * scale
    n_req = len(reqs) * scale
    w = a["cache_write_share"]
    line("Claude input: the conversation (uncached)", conv_in, "tokens", cp["input"], 1e6,
         f"{conv_in / n_req:,.0f} a request")
    line("Claude input: cache reads (tool + system prompt)", prefix * n_req * (1 - w), "tokens", cp["cache_read"], 1e6,
         f"{prefix:,.0f} a request, {1 - w:.0%} of requests")
    line("Claude input: cache writes (5 min)", prefix * n_req * w, "tokens", cp["cache_write_5m"], 1e6,
         f"{w:.0%} of requests")
    line("Claude output", out_tok, "tokens", cp["output"], 1e6, f"{out_tok / n_req:,.0f} a reply")
    setup = sum(v for k, v in redis["commands"].items() if k in SETUP_COMMANDS)
    work = sum(v for k, v in redis["commands"].items() if k not in SETUP_COMMANDS)
    per_cold = setup / max(1, redis["instances"])
    redis_total = work * scale + per_cold * colds * 2
    line("Redis commands (Upstash)", redis_total, "commands", prices["redis"]["per_100k_commands"], 1e5,
         f"{work / n_conv:.1f} a conversation + {per_cold:.1f} per cold start")
    total = sum(l["cost"] for l in lines)
    uncached_claude = (conv_in + prefix * n_req) * cp["input"] / 1e6
    cached_claude = sum(l["cost"] for l in lines if l["line"].startswith("Claude input"))
    return {
        "memory_mb": memory_mb,
        "lines": lines,
        "total": total,
        "total_without_caching": total - cached_claude + uncached_claude,
        "post_ms": {"mean": post_mean, "p50": quantile(post_ms, 0.5), "p90": quantile(post_ms, 0.9), "max": max(post_ms)},
        "get_ms": {"mean": get_mean, "p50": quantile(get_ms, 0.5), "max": max(get_ms)},
        "init_ms": init_ms,
        "model": model,
        "tokens_per_request": {
            "fake_input_mean": statistics.mean(r["in"] for r in reqs),
            "fake_output_mean": statistics.mean(r["out"] for r in reqs),
            "system_prompt": system_tok * f,
            "tools": tools_tok * f,
        },
        "redis": {"per_conversation": work / n_conv, "per_cold_start": per_cold, "commands": redis["commands"]},
        "measured": {"conversations": n_conv, "posts": len(run["post"]), "gets": len(run["get"])},
        "quota_applied": run["quota_applied"],
    }


def print_cost(priced: list[dict], prices: dict, tmpl: dict, usage_note: dict) -> None:
    a = prices["assumptions"]
    main = priced[0]
    print()
    print(
        f"What {a['conversations']:,} conversations of {a['messages_per_conversation']} messages cost "
        f"({main['model']}, Lambda {tmpl['architecture']} at {main['memory_mb']} MB, us-east-1 list prices, no free tier)"
    )
    print(f"  {'line':<48} {'quantity':>14} {'unit':<9} {'unit price':>16}  {'USD':>8}  {'share':>5}  basis")
    for l in sorted(main["lines"], key=lambda l: -l["cost"]):
        per = {1: "", 1e6: " / M", 1e5: " / 100K"}[l["per"]]
        print(
            f"  {l['line']:<48} {l['quantity']:>14,.0f} {l['unit']:<9} {(money(l['unit_price']) + per):>16}"
            f"  {l['cost']:>8.4f}  {l['cost'] / main['total']:>5.1%}  {l['note']}"
        )
    print(f"  {'total':<48} {'':>14} {'':<9} {'':>16}  {main['total']:>8.4f}")
    top = max(main["lines"], key=lambda l: l["cost"])
    print(f"  dominant line: {top['line']} ({top['cost'] / main['total']:.0%})")
    print(f"  without prompt caching (a prefix under the model's minimum cacheable length): ${main['total_without_caching']:.4f}")
    for other in priced[1:]:
        lam = sum(l["cost"] for l in other["lines"] if l["line"].startswith("Lambda duration"))
        lam0 = sum(l["cost"] for l in main["lines"] if l["line"].startswith("Lambda duration"))
        print(
            f"  at {other['memory_mb']} MB instead: send-message {other['post_ms']['mean']:,.0f} ms billed (mean), "
            f"Lambda duration ${lam:.4f} instead of ${lam0:.4f}: total ${other['total']:.4f}"
        )
    levers(main, prices)
    t = main["tokens_per_request"]
    print("Measured (this run)")
    print(
        f"  {main['measured']['conversations']} conversations: {main['measured']['posts']} streamed POSTs, billed "
        f"mean {main['post_ms']['mean']:,.0f} ms (p50 {main['post_ms']['p50']:,.0f}, p90 {main['post_ms']['p90']:,.0f}, "
        f"max {main['post_ms']['max']:,}) of which the fake Claude {a['claude_reply_ms']:,} ms; "
        f"{main['measured']['gets']} history reads, mean {main['get_ms']['mean']:.1f} ms; "
        f"init {main['init_ms']['send-message']:.0f} / {main['init_ms']['get-history']:.0f} ms"
    )
    print(
        f"  stored usage a request (the fake's count, 4 characters a token): input {t['fake_input_mean']:,.0f}, "
        f"output {t['fake_output_mean']:,.0f}; of the input, the system prompt {t['system_prompt'] / a['tokenizer_factor']:,.0f} "
        f"(+ the hand_off tool {t['tools'] / a['tokenizer_factor']:,.0f}, which the fake does not count)"
    )
    print(
        f"  Redis: {main['redis']['per_conversation']:.1f} commands a conversation "
        f"({', '.join(f'{k} {v}' for k, v in sorted(main['redis']['commands'].items()))} in all), "
        f"{main['redis']['per_cold_start']:.1f} per cold start"
    )
    if usage_note["cache_reported"]:
        print("  note: the fake reported cache tokens; they are ignored (caching is priced by assumption)")
    print("Assumptions (scripts/cost/prices.toml)")
    print(
        f"  Claude replies take {a['claude_reply_ms']:,} ms (the fake's pace); token counts x{a['tokenizer_factor']} "
        f"for Haiku 5.5's tokenizer; the tool + system prompt prefix is cached (5 min), written by "
        f"{a['cache_write_share']:.0%} of requests and read by the rest"
    )
    print(
        f"  per conversation: {a['messages_per_conversation']} POSTs, {a['history_reads_per_conversation']} history read, "
        f"{a['preflights_per_conversation']} CORS preflight, {a['cold_starts_per_conversation']} cold start of each function"
    )
    if not main["quota_applied"]:
        print("  note: no cgroup CPU quota could be made here: the functions ran with the machine's whole CPU")


def levers(main: dict, prices: dict) -> None:
    """What a store's settings bound, from this run's figures."""
    a = prices["assumptions"]
    cp = prices["claude"]["models"][main["model"]]
    f = a["tokenizer_factor"]
    posts = a["conversations"] * a["messages_per_conversation"]
    out_line = next(l for l in main["lines"] if l["line"] == "Claude output")
    conv_line = next(l for l in main["lines"] if l["line"].startswith("Claude input: the conversation"))
    print("What the settings bound (per 1,000 conversations; a cap only matters when replies or conversations reach it)")
    for cap in (160, 100):
        print(
            f"  CLAUDE_MAX_TOKENS={cap}: Claude output at most {posts:,} x {cap} tokens = "
            f"${posts * cap * cp['output'] / 1e6:.2f} (measured: {out_line['quantity'] / posts:.0f} a reply, ${out_line['cost']:.2f})"
        )
    for chars in (12000, 4000):
        tokens = chars / 4 * f
        print(
            f"  CLAUDE_CONTEXT_CHARS={chars}: the conversation part of each request at most ~{tokens:,.0f} tokens, "
            f"${posts * tokens * cp['input'] / 1e6:.2f} (measured with {a['messages_per_conversation']}-message "
            f"conversations: {conv_line['quantity'] / posts:.0f} a request, ${conv_line['cost']:.2f})"
        )
    prefix = main["tokens_per_request"]["system_prompt"] + main["tokens_per_request"]["tools"]
    print(
        f"  the store facts (STORE_KNOWLEDGE): {prefix:,.0f} tokens a request with the tool: "
        f"${posts * prefix * cp['cache_read'] / 1e6:.3f} if always read from the cache, "
        f"${posts * prefix * cp['cache_write_5m'] / 1e6:.3f} if always written, ${posts * prefix * cp['input'] / 1e6:.3f} uncached"
    )


# --------------------------------------------------------- 2. memory ----


def seed_big_conversation(db_url: str) -> str:
    """A 500-message conversation of 2,000-emoji messages (8,000 bytes each):
    the largest default page (about 4 MB of JSON)."""
    sid = str(uuid.uuid4())
    psql(
        db_url,
        f"INSERT INTO chat_sessions (id, version) VALUES ('{sid}', 1); "
        "INSERT INTO chat_messages (id, session_id, sender, text, source) "
        f"SELECT gen_random_uuid(), '{sid}', CASE WHEN g % 2 = 0 THEN 'user' ELSE 'ai' END, "
        "repeat(U&'\\+01F600', 2000), CASE WHEN g % 2 = 0 THEN NULL ELSE 'claude' END "
        "FROM generate_series(0, 499) g",
    )
    return sid


def memory_study(args, tmpl: dict, prices: dict, questions: list[str]) -> dict:
    mb_per_vcpu = prices["lambda"]["mb_per_vcpu"]
    configs = [("no quota", None, 100_000, None)]
    sizes = sorted({tmpl["memory_mb"], 128}, reverse=True)
    for mb in sizes:
        configs.append((f"{mb} MB", mb / mb_per_vcpu, 100_000, mb))
    configs.append(("128 MB, 20 ms period", 128 / mb_per_vcpu, 20_000, 128))
    env = service_env(args, args.claude_fast_url, rate_limits=False)
    # A conversation for get-history to read (10 messages), made once.
    fleet = Fleet(args, env, 128, None, 100_000, "seed")
    try:
        send = fleet.start("send-message")
        send.wait_ready()
        history_sid, _ = converse(send, questions[:5], 0)
    finally:
        fleet.close()
    big_sid = seed_big_conversation(args.database_url)
    results = []
    for label, share, period, mb in configs:
        log(f"memory study: {label}")
        fleet = Fleet(args, env, mb or tmpl["memory_mb"], share, period, f"m{mb or 0}{period // 1000}")
        try:
            row = measure_config(args, fleet, label, share, period, mb, questions, history_sid, big_sid)
        finally:
            fleet.close()
        results.append(row)
    return {"configs": results, "sizes": sizes}


def measure_config(args, fleet, label, share, period, mb, questions, history_sid, big_sid) -> dict:
    """Cold starts and warm requests of both functions under one CPU quota."""
    row = {"config": label, "share": share, "period_ms": period / 1000, "functions": {}}
    for name in FUNCTIONS:
        inits, init_cpu, firsts = [], [], []
        for k in range(args.cold_runs):
            inst = fleet.start(name)
            inits.append(inst.wait_ready())
            init_cpu.append(inst.cpu_seconds())
            if name == "send-message":
                out = inst.invoke(with_ip(send_event(questions[k % len(questions)], None), k), timeout=60)
            else:
                out = inst.invoke(with_ip(history_event(history_sid), k), timeout=60)
            if out.http()[0] != 200:
                raise SystemExit(f"cost: {name} answered {out.http()[0]} on its first invocation")
            firsts.append(out.duration)
            inst.wait_idle()
            fleet.stop(inst)
        inst = fleet.start(name)
        inst.wait_ready()
        warm, cpu_before = [], None
        sid = None
        for k in range(args.warm_requests + 1):
            if name == "send-message":
                out = inst.invoke(with_ip(send_event(questions[k % len(questions)], sid), 1), timeout=60)
                sid = dict(sse_events(out.http()[2]))["done"]["sessionId"]
            else:
                out = inst.invoke(with_ip(history_event(history_sid), 1), timeout=60)
            inst.wait_idle()
            if k == 0:  # the first fills the connection pool and the cache
                cpu_before = inst.cpu_seconds()
                continue
            warm.append(out.duration)
        cpu_per_request = (inst.cpu_seconds() - cpu_before) / args.warm_requests
        throttled = inst.quota.throttled() if inst.quota else (0, 0.0)
        rss = inst.peak_rss_kib()
        big = {}
        if label == "no quota" or mb == 128:
            # The largest page: a miss (read and cache fill), then a hit;
            # a message into that conversation (the context at its cap).
            if name == "get-history":
                big["miss_ms"] = read_history(inst, big_sid, 1, expect=500) * 1000
                big["hit_ms"] = read_history(inst, big_sid, 1, expect=500) * 1000
            else:
                out = inst.invoke(with_ip(send_event("And how long do refunds take?", big_sid), 1), timeout=60)
                if out.http()[0] != 200:
                    raise SystemExit(f"cost: send-message answered {out.http()[0]} in the large conversation")
                inst.wait_idle()
                big["post_ms"] = out.duration * 1000
            big["peak_rss_kib"] = inst.peak_rss_kib()
        fleet.stop(inst)
        row["functions"][name] = {
            "init_ms": [x * 1000 for x in inits],
            "init_cpu_ms": [x * 1000 for x in init_cpu],
            "first_ms": [x * 1000 for x in firsts],
            "warm_ms": [x * 1000 for x in warm],
            "cpu_ms_per_request": cpu_per_request * 1000,
            "throttled_periods": throttled[0],
            "peak_rss_kib": rss,
            "large": big,
        }
    row["quota_applied"] = share is None or not fleet.quota_failed
    return row


def print_memory(study: dict, tmpl: dict) -> None:
    print()
    print(
        "Is 128 MB enough? Release builds (x86_64 here; deployed arm64), the fake Claude answering at once; CPU share "
        "= memory / 1,769 MB, emulated with a cgroup CPU quota per instance (CFS period 100 ms unless said)"
    )
    print(
        f"  {'CPU':<22} {'function':<13} {'init p50/max ms':>16} {'init CPU ms':>11} {'first inv. p50/max ms':>22} "
        f"{'warm p50/p90/max ms':>21} {'CPU ms/req':>10} {'peak RSS MiB':>12}"
    )
    for row in study["configs"]:
        if not row["quota_applied"]:
            print(f"  {row['config']:<22} (no cgroup could be made: skipped)")
            continue
        for name, r in row["functions"].items():
            init, first, warm = r["init_ms"], r["first_ms"], r["warm_ms"]
            print(
                f"  {row['config']:<22} {name:<13} {quantile(init, .5):>7.1f} / {max(init):>6.1f} "
                f"{quantile(r['init_cpu_ms'], .5):>11.2f} "
                f"{quantile(first, .5):>12.1f} / {max(first):>7.1f} "
                f"{quantile(warm, .5):>7.1f} / {quantile(warm, .9):>5.1f} / {max(warm):>5.1f} "
                f"{r['cpu_ms_per_request']:>10.3f} {r['peak_rss_kib'] / 1024:>12.1f}"
            )
    print("  the largest page (500 messages of 2,000 emoji, 4 MB of JSON) and a message into that conversation:")
    for row in study["configs"]:
        for name, r in row["functions"].items():
            b = r["large"]
            if not b:
                continue
            what = (
                f"GET miss {b['miss_ms']:.0f} ms, hit {b['hit_ms']:.0f} ms"
                if "miss_ms" in b
                else f"POST {b['post_ms']:.0f} ms"
            )
            print(f"    {row['config']:<22} {name:<13} {what:<34} peak RSS {b['peak_rss_kib'] / 1024:.1f} MiB")
    worst = max(
        max(r["peak_rss_kib"], r["large"].get("peak_rss_kib", 0))
        for row in study["configs"]
        for r in row["functions"].values()
    )
    print(f"  highest peak RSS seen: {worst / 1024:.1f} MiB of 128 MiB ({worst / 1024 / 128:.0%})")


# -------------------------------------------------------------- main ----


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin-dir", required=True)
    p.add_argument("--database-url", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--redis-prefix", required=True)
    p.add_argument("--redis-monitor", required=True, help="file the MONITOR of the private Redis writes to")
    p.add_argument("--claude-url", required=True, help="the fake Claude at the assumed pace")
    p.add_argument("--claude-fast-url", required=True, help="the fake Claude answering at once")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--conversations", type=int, default=12)
    p.add_argument("--messages", type=int, default=5)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--cold-runs", type=int, default=5)
    p.add_argument("--warm-requests", type=int, default=100)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--run-id", default=uuid.uuid4().hex[:6], help="names this run's cgroups (cost-<id>-...)")
    args = p.parse_args()
    args.conversation_offset = 0

    prices = tomllib.loads((Path(__file__).resolve().parent / "prices.toml").read_text())
    tmpl = template_settings()
    if tmpl["model"] not in prices["claude"]["models"]:
        raise SystemExit(f"cost: no prices for {tmpl['model']} in scripts/cost/prices.toml")
    questions = sample_questions()
    tools_bytes = tools_json_bytes()
    if args.messages != prices["assumptions"]["messages_per_conversation"]:
        raise SystemExit("cost: --messages must match messages_per_conversation in prices.toml")
    monitor = Path(args.redis_monitor)
    mb_per_vcpu = prices["lambda"]["mb_per_vcpu"]
    sizes = sorted({tmpl["memory_mb"], 128}, key=lambda mb: mb != tmpl["memory_mb"])

    priced, runs = [], []
    for mb in sizes:
        log(f"{args.conversations} conversations of {args.messages} messages at {mb} MB ({args.workers} instances of each function)")
        mark = monitor.stat().st_size
        run = workload(args, mb, mb / mb_per_vcpu, questions)
        time.sleep(0.5)  # MONITOR's last lines
        tail = Path(args.work) / f"monitor-{mb}.txt"
        with open(monitor, "rb") as f:
            f.seek(mark)
            tail.write_bytes(f.read())
        redis = {"commands": redis_commands(tail), "instances": 2 * args.workers}
        usage = token_usage(args, run["sessions"])
        priced.append(price_run(prices, tmpl, run, usage, redis, tools_bytes, mb))
        runs.append({"memory_mb": mb, "post_s": run["post"], "get_s": run["get"], "init_s": run["init"], "wall_s": run["wall_s"]})
        log(f"  {len(run['post'])} POSTs and {len(run['get'])} GETs in {run['wall_s']:.0f} s")

    study = None
    if not args.skip_memory:
        study = memory_study(args, tmpl, prices, questions)

    print_cost(priced, prices, tmpl, usage)
    if study:
        print_memory(study, tmpl)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"template": tmpl, "prices": prices, "cost": priced, "runs": runs, "memory": study}, indent=1)
    )
    print(f"\n(all figures: {Path(args.out).relative_to(ROOT) if Path(args.out).is_relative_to(ROOT) else args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
