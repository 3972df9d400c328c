"""The release bootstraps run as Lambda runs them, for `make cost`.

Each function instance is a process of its own with a Runtime API of its
own (a small HTTP server here), so the time from an event handed out on
`/next` to the last byte of the posted response (what Lambda bills), the
time from exec to the first `/next` (init), the process's CPU time and its
peak RSS (VmHWM) can all be read. An instance can run under a CPU quota (a
cgroup), to emulate the CPU share Lambda gives a memory size.

Only the standard library: the script runs with the machine's python3.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:support-chat"
DEADLINE_MS = 20_000  # the template's FunctionTimeoutSeconds
CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAM_DELIMITER = b"\x00" * 8
# The Lambda runtime client (lambda_runtime_api_client: hyper's HttpConnector,
# TCP_NODELAY off) leaves Nagle's algorithm on, so each chunk of a streamed
# response after the first waits for the server's ACK of the one before; a
# server that delays its ACKs (Linux does, up to 40 ms) adds about 40 ms to
# every streamed invocation (measured here: send-message 43 ms instead of 3
# ms, warm, Claude answering at once). This Runtime API ACKs each chunk at
# once, so the figures are the function's own; COST_QUICK_ACK=0 shows the
# other case. Whether Lambda's own Runtime API delays its ACKs is not known here.
QUICK_ACK = os.environ.get("COST_QUICK_ACK", "1") == "1"


@dataclass
class Outcome:
    """What the function posted for one invocation."""

    kind: str  # "response", "error" or "init_error"
    request_id: str
    body: bytes
    handed_out: float | None  # time.monotonic() when /next handed the event out
    finished: float  # when the whole body had been read
    streamed: bool = False

    @property
    def duration(self) -> float:
        return self.finished - (self.handed_out or self.finished)

    def http(self) -> tuple[int, dict, bytes]:
        """Status, headers and body of the API Gateway response it encodes."""
        if self.kind != "response":
            return 0, {}, self.body
        i = self.body.find(STREAM_DELIMITER)
        if self.streamed and i >= 0:
            prelude = json.loads(self.body[:i] or b"{}")
            return prelude.get("statusCode", 0), prelude.get("headers") or {}, self.body[i + 8 :]
        v = json.loads(self.body or b"{}")
        body = v.get("body") or ""
        raw = base64.b64decode(body) if v.get("isBase64Encoded") else body.encode()
        return v.get("statusCode", 0), v.get("headers") or {}, raw


@dataclass
class _Shared:
    events: "queue.Queue[tuple[str, bytes]]" = field(default_factory=queue.Queue)
    outcomes: "queue.Queue[Outcome]" = field(default_factory=queue.Queue)
    handed: dict = field(default_factory=dict)
    next_calls: "queue.Queue[float]" = field(default_factory=queue.Queue)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    shared: _Shared  # set on the subclass

    def log_message(self, *_args) -> None:  # quiet
        pass

    def _reply(self, status: int, body: bytes = b"{}", headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _quickack(self) -> None:
        if QUICK_ACK:
            try:
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except (AttributeError, OSError):
                pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                self._quickack()
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self) -> None:
        if self.path != "/2018-06-01/runtime/invocation/next":
            return self._reply(404)
        self.shared.next_calls.put(time.monotonic())
        try:
            request_id, event = self.shared.events.get(timeout=600)
        except queue.Empty:
            return self._reply(410)
        with self.shared.lock:
            self.shared.handed[request_id] = time.monotonic()
        deadline = int(time.time() * 1000) + DEADLINE_MS
        self._reply(
            200,
            event,
            {
                "Lambda-Runtime-Aws-Request-Id": request_id,
                "Lambda-Runtime-Deadline-Ms": str(deadline),
                "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                "Lambda-Runtime-Trace-Id": "Root=1-6924caf2-3f1a9c2e7b4d6058a1c2e3f4;Parent=53995c3f42cd8ad8;Sampled=0",
            },
        )

    def do_POST(self) -> None:
        body = self._read_body()
        finished = time.monotonic()
        rest = self.path.removeprefix("/2018-06-01/runtime/")
        streamed = (self.headers.get("Lambda-Runtime-Function-Response-Mode") or "").lower() == "streaming"
        if rest == "init/error":
            kind, request_id = "init_error", ""
        elif rest.startswith("invocation/") and rest.endswith("/response"):
            kind, request_id = "response", rest[len("invocation/") : -len("/response")]
        elif rest.startswith("invocation/") and rest.endswith("/error"):
            kind, request_id = "error", rest[len("invocation/") : -len("/error")]
        else:
            return self._reply(404)
        if kind == "response" and self.headers.get("Lambda-Runtime-Function-Error-Type"):
            kind = "error"
        with self.shared.lock:
            handed = self.shared.handed.pop(request_id, None)
        self._reply(202, b'{"status":"OK"}')
        self.shared.outcomes.put(Outcome(kind, request_id, body, handed, finished, streamed))


class RuntimeApi:
    """A Runtime API for one function instance, on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        self.shared = _Shared()
        handler = type("Handler", (_Handler,), {"shared": self.shared})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CpuQuota:
    """A cgroup with a CFS quota (v1 `cpu` controller or v2 `cpu.max`), or
    None when this machine does not let us make one."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    @staticmethod
    def create(name: str, share: float, period_us: int) -> "CpuQuota | None":
        quota_us = max(1000, int(round(share * period_us)))
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = Path("/sys/fs/cgroup")
        try:
            if (v1 / "cpu.cfs_quota_us").exists():
                p = v1 / name
                p.mkdir(exist_ok=True)
                (p / "cpu.cfs_period_us").write_text(str(period_us))
                (p / "cpu.cfs_quota_us").write_text(str(quota_us))
                return CpuQuota(p, 1)
            if "cpu" in (v2 / "cgroup.controllers").read_text().split():
                subtree = (v2 / "cgroup.subtree_control").read_text().split()
                if "cpu" not in subtree:
                    (v2 / "cgroup.subtree_control").write_text("+cpu")
                p = v2 / name
                p.mkdir(exist_ok=True)
                (p / "cpu.max").write_text(f"{quota_us} {period_us}")
                return CpuQuota(p, 2)
        except OSError:
            return None
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run inside the cgroup: a shell moves itself in, then execs."""
        return ["/bin/sh", "-c", f'echo $$ > "{self.path}/cgroup.procs" && exec "$@"', "sh", *argv]

    def throttled(self) -> tuple[int, float]:
        """Periods throttled and seconds throttled so far."""
        stat = dict(
            line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if len(line.split()) == 2
        )
        if self.version == 1:
            return int(stat.get("nr_throttled", 0)), int(stat.get("throttled_time", 0)) / 1e9
        return int(stat.get("nr_throttled", 0)), int(stat.get("throttled_usec", 0)) / 1e6

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def lambda_env(name: str, runtime_api: str, memory_mb: int) -> dict:
    return {
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "AWS_LAMBDA_FUNCTION_NAME": f"support-chat-{name}",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/01/[$LATEST]0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/support-chat-{name}",
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "LAMBDA_TASK_ROOT": "/var/task",
        "LAMBDA_RUNTIME_DIR": "/var/runtime",
        "_HANDLER": "bootstrap",
        "TZ": ":UTC",
        "LANG": "en_US.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin/:/bin:/opt/bin",
    }


class Instance:
    """One cold-started function process and its Runtime API."""

    def __init__(
        self,
        name: str,
        binary: Path,
        env: dict,
        log_path: Path,
        memory_mb: int,
        quota: CpuQuota | None = None,
    ) -> None:
        self.name = name
        self.api = RuntimeApi()
        full_env = lambda_env(name, self.api.address, memory_mb) | env
        argv = [str(binary)]
        if quota is not None:
            argv = quota.wrap(argv)
        self.log = open(log_path, "ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            env=full_env,
            cwd=str(binary.parent),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        self.init: float | None = None

    def wait_ready(self, timeout: float = 30) -> float:
        """Init: exec to the first `/next`."""
        try:
            t = self.api.shared.next_calls.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no /next within {timeout}s (exit {self.proc.poll()})") from None
        self.init = t - self.started
        return self.init

    def invoke(self, event: dict, timeout: float = 30) -> Outcome:
        request_id = str(uuid.uuid4())
        self.api.shared.events.put((request_id, json.dumps(event).encode()))
        try:
            out = self.api.shared.outcomes.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no response within {timeout}s (exit {self.proc.poll()})") from None
        if out.request_id != request_id or out.kind != "response":
            raise RuntimeError(f"{self.name}: {out.kind} for {out.request_id!r}: {out.body[:300]!r}")
        return out

    def wait_idle(self, timeout: float = 5) -> bool:
        """Until the function asks for its next event (its work is done)."""
        try:
            self.api.shared.next_calls.get(timeout=timeout)
            return True
        except queue.Empty:
            return False

    def cpu_seconds(self) -> float:
        """CPU time of all the process's threads (schedstat: nanoseconds; the
        clock ticks of /proc/PID/stat are 10 ms, too coarse here)."""
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        if total:
            return total / 1e9
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.api.close()
        self.log.close()


# ------------------------------------------------------------- events ----


def _rest_event(method: str, path: str, resource: str, body: str | None, headers: dict, path_params=None, query=None) -> dict:
    """An API Gateway REST (payload 1.0) proxy event, as the deployed API sends."""
    request_id = str(uuid.uuid4())
    now = int(time.time() * 1000)
    headers = {
        "Host": "p9w3n5k8d2.execute-api.us-east-1.amazonaws.com",
        "Origin": "https://shop.example.com",
        "User-Agent": "Mozilla/5.0 (cost run)",
        "X-Forwarded-For": "203.0.113.42",
        "X-Forwarded-Proto": "https",
        **headers,
    }
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_params,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "x4h7tq",
            "resourcePath": resource,
            "httpMethod": method,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "path": f"/prod{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": "prod",
            "domainPrefix": "p9w3n5k8d2",
            "requestTimeEpoch": now,
            "requestId": request_id,
            "identity": {"sourceIp": "203.0.113.42", "userAgent": "Mozilla/5.0 (cost run)"},
            "domainName": "p9w3n5k8d2.execute-api.us-east-1.amazonaws.com",
            "apiId": "p9w3n5k8d2",
        },
        "body": body,
        "isBase64Encoded": False,
    }


def send_event(message: str, session_id: str | None, stream: bool = True, key: str | None = None) -> dict:
    body = json.dumps({"message": message, **({"sessionId": session_id} if session_id else {})})
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream, application/json" if stream else "application/json",
    }
    if key:
        headers["Idempotency-Key"] = key
    return _rest_event("POST", "/api/chat", "/api/chat", body, headers)


def history_event(session_id: str, query: dict | None = None) -> dict:
    return _rest_event(
        "GET",
        f"/api/chat/history/{session_id}",
        "/api/chat/history/{sessionId}",
        None,
        {"Accept": "application/json"},
        path_params={"sessionId": session_id},
        query=query,
    )


def sse_events(body: bytes) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a Server-Sent Events body."""
    out = []
    for block in body.decode().split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if name:
            out.append((name, json.loads("\n".join(data) or "null")))
    return out
