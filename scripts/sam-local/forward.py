"""TCP forwarders from the Docker bridge to services that listen on 127.0.0.1.

    python forward.py --listen 172.17.0.1 [--map FILE] HOST:PORT[@LISTEN_PORT]...

`sam local` runs each function in a container on Docker's default bridge
(SAM CLI 1.170 ignores `--docker-network host`: the container is never put in
the host's network namespace), where 127.0.0.1 is the container itself. The
test services listen on 127.0.0.1 only, so this process listens on the
bridge's gateway address, one port per target (LISTEN_PORT, else an
ephemeral one), and copies bytes both ways. FILE receives
{"127.0.0.1:5432": "172.17.0.1:PORT", ...} once every listener is up (the
same goes to stderr). Runs until SIGTERM/SIGINT.

By hand, for `sam local invoke` with events/sam-local-env.json (the test
services on the addresses that file names):

    .venv/bin/python scripts/sam-local/forward.py --listen 172.17.0.1 \
        127.0.0.1:5432@5432 127.0.0.1:6379@6379
"""

import argparse
import asyncio
import json
import os
import signal
import sys


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


def handler(host, port):
    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, asyncio.TimeoutError) as e:
            print(f"forward: {host}:{port} unreachable: {e}", file=sys.stderr, flush=True)
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))

    return handle


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True, help="address to listen on (the Docker bridge gateway)")
    ap.add_argument("--map", help="file to write the address map to")
    ap.add_argument("targets", nargs="+", help="HOST:PORT[@LISTEN_PORT] to forward to")
    a = ap.parse_args()

    mapping, servers = {}, []
    for spec in a.targets:
        t, _, listen_port = spec.partition("@")
        host, _, port = t.rpartition(":")
        server = await asyncio.start_server(handler(host, int(port)), a.listen, int(listen_port or 0))
        servers.append(server)
        mapping[t] = f"{a.listen}:{server.sockets[0].getsockname()[1]}"
    if a.map:
        tmp = a.map + ".tmp"
        with open(tmp, "w") as f:
            json.dump(mapping, f)
        os.replace(tmp, a.map)
    print(f"forward: {mapping}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    asyncio.run(main())
