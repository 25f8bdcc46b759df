#!/usr/bin/env python
"""Reads against the server itself: each path's requests per second as a share of a bare ASGI app.

    .venv/bin/python bench/reads.py                  # about 2 minutes
    .venv/bin/python bench/reads.py --duration 3     # a smoke test

One daphne process (bench/read_app.py) serves a bare ASGI endpoint (/bare, the server's own
cost), a trivial Django JSON view (GET /api/auth/csrf: Django's fixed cost, no session read),
the home timeline (GET /api/timeline/home, 20 tweets, timeline materialized: timeline.hot_reads),
the HTML home page (GET /) and one tweet (GET /api/tweets/<id>), all as one logged-in reader.
Each path is loaded with wrk (closed model: C connections, each sending its next request as soon
as the last is answered) for --duration seconds at each concurrency; the daphne process's CPU
time over the run, divided by the requests answered, is the CPU per request. Each Django path is
also profiled in-process with pyinstrument (Django's test client; the profiles are written to
bench/out/). The world: a private redis-server and a fresh SQLite database in a temporary
folder, a reader following 50 authors, 400 tweets, the reader's timeline read once so that it
is in Redis; the cron runs, as under make run (it publishes the low watermark every second).
wrk shares the machine's cores with daphne; the table says so.

Output: bench/out/reads-<time>/results.json, the profiles, and the "Reads" section of
docs/benchmarks.md (--no-docs leaves it alone).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (  # noqa: E402
    BASE_DIR,
    HOST,
    OUT_DIR,
    Template,
    World,
    cpu_seconds,
    machine_info,
    stamp,
    write_docs,
)

PATHS = {
    "bare ASGI app": "/bare",
    "trivial Django JSON view": "/api/auth/csrf",
    "home timeline (API)": "/api/timeline/home",
    "home page (HTML)": "/",
    "one tweet (API)": "/api/tweets/{tweet_id}",
}


def build_world(world: World) -> dict:
    """In this process, against the world: the reader's 400 tweets, delivered; its session."""
    os.environ.update({k: world.env[k] for k in ("DATABASE_URL", "REDIS_URL", "VAR_DIR", "DJANGO_SECRET_KEY")})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timeline.settings")
    import django

    django.setup()
    import uuid

    from django.contrib.auth import get_user_model
    from django.test import Client

    from fanout import delivery, watermark
    from timeline import selectors
    from timeline.services import tweet_create

    User = get_user_model()
    reader = User.objects.get(pk=world.template.people["readers"][0]["id"])
    authors = list(User.objects.filter(pk__in=[a["id"] for a in world.template.people["authors"]]).order_by("pk"))
    selectors.home_timeline(user=reader)  # materialized: fan-out writes into it
    for i in range(400):
        tweet = tweet_create(author=authors[i % 50], body=f"tweet {i}", client_id=uuid.uuid4(), admission_control=False)
        delivery.deliver_tweet(tweet_id=tweet.tweet.pk)
    watermark.publish()
    client = Client(HTTP_HOST=HOST)
    client.force_login(reader)
    return {"cookie": f"sessionid={client.cookies['sessionid'].value}", "tweet_id": tweet.tweet.pk, "client": client}


def wrk(url: str, cookie: str, concurrency: int, duration: float) -> dict:
    result = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(2, concurrency)),  # wrk wants at least one connection per thread
            "-c",
            str(concurrency),
            "-d",
            f"{max(1, round(duration))}s",
            "--latency",
            "-H",
            f"Cookie: {cookie}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    text = result.stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    requests = int(re.search(r"(\d+) requests in", text).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    refused = int(non_2xx.group(1)) if non_2xx else 0  # 503s from the door, past WEB_MAX_IN_FLIGHT
    seconds = requests / float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    return {
        "rps": (requests - refused) / seconds,  # answered with the page, not shed
        "refused_per_s": refused / seconds,
        "requests": requests,
        "p50_ms": ms("50%"),
        "p99_ms": ms("99%"),
    }


def profile(client, path: str, out: Path, rounds: int = 200) -> None:
    from pyinstrument import Profiler

    for _ in range(20):
        client.get(path)
    profiler = Profiler(interval=0.0002)
    profiler.start()
    for _ in range(rounds):
        client.get(path)
    profiler.stop()
    out.write_text(profiler.output_text(unicode=False, color=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    out = OUT_DIR / f"reads-{stamp()}"
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="bench-reads-") as tmp:
        template = Template.build(Path(tmp), authors=[1] * 50, readers=1)
        with World(template, logs=out) as world:  # everything stopped on the way out, also on errors
            built = build_world(world)
            port = world.start_web(app="bench.read_app:application", options=("--application-close-timeout", "2"))[0]
            # As make run has it: the cron publishes the low watermark every second. Without it
            # the published one lapses every 5 s and the reads in flight then go to Django.
            world.start_cron()
            server = world.processes["web1"]
            rows = []
            for name, path in PATHS.items():
                path = path.format(tweet_id=built["tweet_id"])
                url = f"http://{HOST}:{port}{path}"
                wrk(url, built["cookie"], 4, 1.0)  # warm: caches filled, code paths loaded
                for concurrency in args.concurrency:
                    before = cpu_seconds(server.pid)
                    run = wrk(url, built["cookie"], concurrency, args.duration)
                    spent = cpu_seconds(server.pid) - before
                    cpu_ms = 1000 * spent / max(run["requests"], 1)
                    run.update(name=name, path=path, concurrency=concurrency, cpu_ms_per_request=cpu_ms)
                    rows.append(run)
                    print(
                        f"{name:28} c={concurrency:<3} {run['rps']:8.0f}/s  p50 {run['p50_ms']:6.1f} ms  "
                        f"p99 {run['p99_ms']:6.1f} ms  cpu {cpu_ms:.2f} ms/req  shed {run['refused_per_s']:.0f}/s"
                    )
            for name, path in list(PATHS.items())[1:]:  # while Redis still runs
                slug = re.sub(r"[^a-z]+", "-", name.lower()).strip("-")
                profile(built["client"], path.format(tweet_id=built["tweet_id"]), out / f"profile-{slug}.txt")
    machine = machine_info(None)
    (out / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    if not args.no_docs:
        write_docs("reads", docs_text(rows, machine, args, out), heading="Reads")
    print(f"results in {out}")
    return 0


def docs_text(rows: list[dict], machine: dict, args, out: Path) -> str:
    bare = {r["concurrency"]: r["rps"] for r in rows if r["path"] == "/bare"}
    trivial = {r["concurrency"]: r["rps"] for r in rows if r["path"] == "/api/auth/csrf"}
    lines = [
        f"Measured {machine['date']} on {machine['nproc']} cores ({machine['cpu_model']}), {machine['memory_gib']} GiB,"
        f" Python {machine['python']}, commit {machine['git']}; wrk and daphne share the cores;"
        f" {args.duration:.0f} s per run. `x bare` is the share of the bare ASGI app's requests per second at the"
        " same concurrency, in the same run. `answered/s` counts 200s only: past 32 requests in flight"
        " (`WEB_MAX_IN_FLIGHT`) the process sheds the rest with 503 at the door, counted apart.",
        "",
        "| path | connections | answered/s | x bare | x trivial Django | p50 | p99 | daphne CPU per request | shed (503)/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["concurrency"]
        lines.append(
            f"| {r['name']} | {c} | {r['rps']:,.0f} | {r['rps'] / bare[c]:.0%} | {r['rps'] / trivial[c]:.1f}x |"
            f" {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['cpu_ms_per_request']:.2f} ms | {r['refused_per_s']:,.0f} |"
        )
    return "\n".join([*lines, "", f"Profiles of each Django path: `{out.relative_to(BASE_DIR)}/profile-*.txt`."])


if __name__ == "__main__":
    raise SystemExit(main())
