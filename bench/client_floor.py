#!/usr/bin/env python
"""How fast can live_latency.py's client take in a fan-out? Its floor, against an ideal server.

    .venv/bin/python bench/client_floor.py [--sockets 1000] [--rounds 10]

A bare ``websockets`` server in a child process (no Django, no Channels, no Redis) broadcasts one
``tweet.new``-sized frame to every socket at once; this process holds the sockets, reads them the
way bench/live_latency.py does (one task per socket, time-stamp, ``json.loads``), and reports
when the first, median and last copy arrived after the broadcast began, and its own CPU per
frame. Whatever live_latency.py reports at N followers includes at least this much.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import free_port  # noqa: E402

FRAME = json.dumps(
    {
        "type": "tweet.new",
        "tweet": {
            "id": 0,
            "author": {"id": 1, "username": "bench_author"},
            "body": "bench tweet 1",
            "created_at": "2026-01-01T00:00:00.000000Z",
            "client_id": "9b0f7d0e-3c5b-4a7e-9a44-2f0c8d2f1e11",
        },
    }
)


async def serve(port: int) -> None:
    """Child process: accept sockets; for each line "N" on stdin, broadcast frame N to all."""
    from websockets.asyncio.server import broadcast
    from websockets.asyncio.server import serve as ws_serve

    sockets = set()

    async def handler(ws):
        sockets.add(ws)
        try:
            await ws.wait_closed()
        finally:
            sockets.discard(ws)

    async with ws_serve(handler, "127.0.0.1", port, compression=None, ping_interval=None):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        print("ready", flush=True)
        while line := await reader.readline():
            started = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in both processes
            broadcast(sockets, FRAME.replace('"id": 0', f'"id": {int(line)}', 1))
            print(started, flush=True)


async def measure(n: int, rounds: int) -> None:
    from websockets.asyncio.client import connect

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", str(port), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert (await asyncio.wait_for(server.stdout.readline(), 30)).strip() == b"ready"
        limit = asyncio.Semaphore(50)

        async def open_one():
            async with limit:
                return await connect(f"ws://127.0.0.1:{port}/", compression=None, ping_interval=None, open_timeout=30)

        sockets = await asyncio.gather(*(open_one() for _ in range(n)))
        arrivals: dict[int, list[float]] = {}

        async def read(ws):
            while True:
                raw = await ws.recv(decode=False)
                t = time.perf_counter()
                arrivals.setdefault(json.loads(raw)["tweet"]["id"], []).append(t)

        tasks = [asyncio.create_task(read(ws)) for ws in sockets]
        await asyncio.sleep(0.5)
        cpu_before, rows = time.process_time(), []
        for number in range(1, rounds + 1):
            server.stdin.write(f"{number}\n".encode())
            await server.stdin.drain()
            started = float(await server.stdout.readline())
            deadline = time.monotonic() + 30
            while len(arrivals.get(number, [])) < n and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            got = sorted(arrivals.get(number, []))
            rows.append([(t - started) * 1000 for t in (got[0], got[len(got) // 2], got[-1])])
            print(f"round {number}: first {rows[-1][0]:.1f} ms, median {rows[-1][1]:.1f} ms, last {rows[-1][2]:.1f} ms")
            await asyncio.sleep(0.25)
        cpu = time.process_time() - cpu_before
        last = [r[2] for r in rows]
        print(
            f"{n} sockets: last copy after {statistics.median(last):.0f} ms at the median, {max(last):.0f} ms at worst;"
            f" client CPU {cpu / (rounds * n) * 1e6:.0f} us per frame"
        )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    finally:
        if server.returncode is None:
            server.terminate()
            await server.wait()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(measure(args.sockets, args.rounds))


if __name__ == "__main__":
    main()
