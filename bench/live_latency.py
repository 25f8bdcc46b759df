#!/usr/bin/env python
"""Live push latency: how long after its POST is answered does a tweet reach followers' sockets?

    .venv/bin/python bench/live_latency.py --followers 100 1000 --tweets 20 [--layer redis pubsub]

For each (followers, layer) pair a world from scratch (bench/harness.py): one author and N
followers, a session each, every home timeline materialized; a private Redis; daphne and two
fan-out workers. The script opens N follower websockets and one for the author, all before
measuring, and posts tweets one at a time over HTTP as the author (session cookie plus the CSRF
cookie/header pair, as a browser does). For each tweet it notes when the POST's answer arrived
and when each follower's socket received the matching ``tweet.new`` frame, with
``time.perf_counter`` in this one process, so the clocks agree. Latency of a frame = its
arrival - the answer's arrival. The client is one asyncio process, each socket a bare protocol
that time-stamps a frame as it is read (bench/wsclient.py; until 29 Nov 2026 the ``websockets``
library, about three times the CPU per frame); on a small machine it competes with the server
for the same cores, which the report says.

Results: a table on stdout, a JSON file in bench/out/ (the servers' logs beside it), and a
generated block of the "Live push latency" section of docs/benchmarks.md (``--no-docs`` leaves
the file alone; ``--docs-section NAME`` picks the block; ``--docs-from`` writes it from result
files). What-if runs: ``--patch FILE`` (repeatable) runs a copy of the working tree with the
patch applied, ``--web N`` spreads the sockets over N daphne processes (a port each),
``--server daphne`` serves with plain daphne (no prepared frames: timeline.serve), ``--server
uvicorn`` with uvicorn, and ``PYTHONPATH=DIR`` reaches the server
processes too (e.g. a scratch dir with hiredis in it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import (  # noqa: E402
    BASE_DIR,
    HOST,
    OUT_DIR,
    CpuClock,
    HTTPConnection,
    Template,
    World,
    header,
    log,
    machine_info,
    others_share,
    percentile,
    post_request,
    stamp,
    stop_on_sigterm,
    wait_for_quiet,
    write_docs,
)
from bench.wsclient import LightSocket, open_socket  # noqa: E402


# The aims: p99 under 250 ms up to 1,000 online followers, under 1 s at 10,000.
def target_p99_ms(followers: int) -> float:
    return 250.0 if followers <= 1000 else 1000.0


COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "var", "out", "__pycache__", "node_modules", ".pytest_cache")


# -- the client side (one asyncio process) ----------------------------------------------------------


@dataclass
class Collector:
    """What the socket tasks record: as little work per frame as possible."""

    n_followers: int
    follower_frames: dict[int, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    follower_seen: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    done_at: dict[int, float] = field(default_factory=dict)
    progress_frames: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    other_frames: int = 0
    closed_followers: set[int] = field(default_factory=set)
    author_closed: bool = False

    def settled(self, tweet_id: int) -> bool:
        """Every follower socket has the tweet or is gone, and the author has fanout.done or is gone."""
        seen = self.follower_seen.get(tweet_id, set())
        return len(seen | self.closed_followers) >= self.n_followers and (
            tweet_id in self.done_at or self.author_closed
        )

    def on_follower_frame(self, index: int, t: float, raw: bytes) -> None:
        message = json.loads(raw)
        if message.get("type") != "tweet.new":
            self.other_frames += 1
            return
        tweet_id = message["tweet"]["id"]
        self.follower_frames[tweet_id].append((t, index))
        self.follower_seen[tweet_id].add(index)

    def on_author_frame(self, t: float, raw: bytes) -> None:
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "fanout.done":
            self.done_at.setdefault(message["tweet_id"], t)
        elif kind == "fanout.progress":
            self.progress_frames[message["tweet_id"]] += 1
        else:
            self.other_frames += 1


def resident_kib(pid: int) -> int:
    """A process's resident set (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def post(port: int, session: str, number: int) -> tuple[int, bytes, bytes, float, float]:
    """POST one tweet on a new connection: status, headers, body, when sent and when answered."""
    data = post_request(f"{HOST}:{port}", session, {"body": f"bench tweet {number}", "client_id": str(uuid.uuid4())})
    conn = HTTPConnection(HOST, port)
    t_sent = time.perf_counter()
    try:
        await asyncio.wait_for(conn.open(), 30)
        status, head, body = await asyncio.wait_for(conn.request(data), 30)
        return status, head, body, t_sent, time.perf_counter()
    finally:
        conn.close()


async def measure(*, ports: list[int], people: dict, pids: dict[str, int], args) -> dict:
    """Connect every socket, then post tweets one at a time and time their frames.

    With several web processes (``ports``), followers are spread over them round-robin; the
    author's socket and the POSTs go to the first.
    """
    port, followers, author = ports[0], people["readers"], people["authors"][0]
    collector = Collector(n_followers=len(followers))
    sockets: list[LightSocket] = []
    limit = asyncio.Semaphore(args.connect_concurrency)

    async def open_one(session_key: str, ws_port: int, on_text, on_closed) -> None:
        """A socket whose frames are time-stamped as they arrive (bench/wsclient.py)."""
        async with limit:
            for attempt in range(3):
                try:
                    sockets.append(
                        await open_socket(
                            HOST,
                            ws_port,
                            "/ws/timeline/",
                            cookie=f"sessionid={session_key}",
                            origin=f"http://{HOST}:{ws_port}",
                            on_text=on_text,
                            on_closed=on_closed,
                        )
                    )
                    return
                except (OSError, asyncio.TimeoutError):
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.5)

    result: dict = {"tweets": []}
    web_pids = [pid for name, pid in pids.items() if name.startswith("web")]
    rss_before = sum(map(resident_kib, web_pids))
    try:
        t0 = time.perf_counter()
        await open_one(
            author["session"], port, collector.on_author_frame, lambda: setattr(collector, "author_closed", True)
        )
        await asyncio.gather(
            *(
                open_one(
                    f["session"],
                    ports[i % len(ports)],
                    lambda t, raw, i=i: collector.on_follower_frame(i, t, raw),
                    lambda i=i: collector.closed_followers.add(i),
                )
                for i, f in enumerate(followers)
            )
        )
        result["connect_seconds"] = time.perf_counter() - t0
        log(f"    {len(sockets)} sockets open in {result['connect_seconds']:.1f}s")
        # Presence marks are written as each socket is accepted; give the last ones a moment,
        # and let the machine settle (other sessions' work shows up as latency here).
        await asyncio.sleep(0.5)
        result["busy_before"] = await asyncio.to_thread(
            wait_for_quiet, max_busy=args.quiet_busy, max_wait=args.quiet_wait, window=2.0
        )
        # The web processes' resident memory for these sockets, before any tweet.
        result["web_rss_kib"] = {
            "before": rss_before,
            "open": sum(map(resident_kib, web_pids)),
            "sockets": len(sockets),
        }
        for number in range(args.warmup + args.tweets):
            is_warmup = number < args.warmup
            if number == args.warmup:
                clock, wall_start = CpuClock(pids, me="client"), time.perf_counter()
            for retries in range(6):
                status, head, data, t_sent, t_answer = await post(port, author["session"], number)
                wall_answer = time.time()
                if status not in (429, 503) or retries == 5:
                    break
                await asyncio.sleep(float(header(head, b"retry-after") or 1))
            if status not in (200, 202):
                raise RuntimeError(f"POST /api/tweets answered {status}: {data[:300]!r}")
            tweet_id = json.loads(data)["tweet"]["id"]
            # Wait until every socket has the tweet (or has been closed by the server), or the
            # deadline; the socket tasks time-stamp frames as they come, whatever this loop does.
            timed_out = False
            while not collector.settled(tweet_id):
                if time.perf_counter() - t_answer > args.deadline:
                    timed_out = True
                    break
                await asyncio.sleep(0.01)
            first_per_socket: dict[int, float] = {}
            for t, index in collector.follower_frames.get(tweet_id, []):
                first_per_socket.setdefault(index, t)
            latencies = sorted((t - t_answer) * 1000 for t in first_per_socket.values())
            record = {
                "tweet_id": tweet_id,
                "warmup": is_warmup,
                "status": status,
                "retries": retries,
                "post_ms": (t_answer - t_sent) * 1000,
                "wall_answer": wall_answer,
                "received": len(first_per_socket),
                "missing": len(followers) - len(first_per_socket),
                "timed_out": timed_out,
                "first_ms": latencies[0] if latencies else None,
                "all_ms": latencies[-1] if latencies and len(latencies) == len(followers) else None,
                "done_ms": (collector.done_at[tweet_id] - t_answer) * 1000 if tweet_id in collector.done_at else None,
                "progress_frames": collector.progress_frames.get(tweet_id, 0),
                "latencies_ms": [round(x, 2) for x in latencies],
            }
            result["tweets"].append(record)
            tag = "warm-up" if is_warmup else f"{number - args.warmup + 1}/{args.tweets}"
            log(
                f"    tweet {tag}: post {record['post_ms']:.0f} ms, p50 {percentile(latencies, 50) or 0:.0f} ms, "
                f"all {record['all_ms'] or float('nan'):.0f} ms, done {record['done_ms'] or float('nan'):.0f} ms"
                + (f", MISSING {record['missing']}" if record["missing"] else "")
            )
            await asyncio.sleep(args.gap)
        # CPU time each process used per measured tweet (background work such as presence
        # renewals and pings included), from /proc; "client" is this script.
        used = clock.read()
        result["measure_seconds"] = time.perf_counter() - wall_start
        result["cpu_ms_per_tweet"] = {k: v * 1000 / args.tweets for k, v in used.items() if not k.startswith("_")}
        result["other_load"] = others_share(used)  # everything else the machine did meanwhile: noise
        # A short drain, so late duplicates (at-least-once) are counted too.
        await asyncio.sleep(0.5)
        for record in result["tweets"]:
            frames = collector.follower_frames.get(record["tweet_id"], [])
            record["late_received"] = len({i for _, i in frames}) - record["received"]
            record["duplicates"] = len(frames) - len({i for _, i in frames})
        result["closed_sockets_during_run"] = len(collector.closed_followers) + int(collector.author_closed)
        result["other_frames"] = collector.other_frames
        return result
    finally:
        for socket in sockets:
            socket.close()
        await asyncio.sleep(0.5)  # the close frames go out


# -- one run: a fresh world, its processes, the measurement -------------------------------------------


def prepare_tree(patches: list[Path], into: Path) -> Path:
    """A copy of the working tree with the patches applied (the original is left alone)."""
    tree = into / "tree"
    shutil.copytree(BASE_DIR, tree, ignore=COPY_IGNORE, symlinks=True)
    for patch in patches:
        cmd = ["patch", "-p1", "--batch", "--forward", "-i", str(patch.resolve())]
        done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{patch} does not apply to the working tree:\n{done.stdout}{done.stderr}")
        log(f"applied {patch}")
    return tree


def extra_hiredis(env: dict[str, str]) -> bool:
    """Whether the servers' redis-py has the compiled hiredis parser through PYTHONPATH, not the venv."""
    cmd = [sys.executable, "-c", "from redis.utils import HIREDIS_AVAILABLE as h; print(h)"]
    has = lambda e: subprocess.run(cmd, env=e, capture_output=True, text=True).stdout.strip() == "True"  # noqa: E731
    return has(env) and not has({k: v for k, v in env.items() if k != "PYTHONPATH"})


def run_one(template: Template, *, layer: str, app_dir: Path, logs: Path, args) -> dict:
    n = len(template.people["readers"])
    profile_dir = OUT_DIR / "profiles" if args.profile else None
    env = {"CHANNEL_LAYER": layer}
    with World(template, logs=logs, env=env, app_dir=app_dir, profile_dir=profile_dir, keep=args.keep) as world:
        ports = world.start_web(args.web, server=args.server, one_port=False)
        world.start_workers(args.workers)
        time.sleep(1.0)  # the workers register and block on the queue
        result = asyncio.run(measure(ports=ports, people=template.people, pids=world.pids(), args=args))
        if died := world.died():
            raise RuntimeError(f"{', '.join(died)} during the run; see {logs}")
        for record in result["tweets"]:
            record["fanout"] = world.fanout(record["tweet_id"])
            started, finished = record["fanout"]["started_at"], record["fanout"]["finished_at"]
            if started and finished:
                # On the wall clock: answer -> job started -> job finished (its last tweet.new sent).
                record["answer_to_start_ms"] = (started - record["wall_answer"]) * 1000
                record["job_ms"] = (finished - started) * 1000
                if record["all_ms"] is not None:
                    record["finish_to_all_ms"] = record["all_ms"] - (finished - record["wall_answer"]) * 1000
        setup = {"patches": [Path(x).stem for x in args.patch], "web": args.web, "server": args.server}
        result |= {"followers": n, "layer": layer, "redis_version": world.redis_version, "profiled": args.profile}
        result["setup"] = setup | {"hiredis": extra_hiredis(world.env)}
    return result


# -- summary, table, JSON and docs ---------------------------------------------------------------------


def setup_label(setup: dict) -> str:
    parts = list(setup.get("patches", []))
    if setup.get("hiredis"):
        parts.append("hiredis")
    server = setup.get("server", "serve")
    if server != "serve":
        parts.append("plain daphne" if server == "daphne" else server)
    if setup.get("web", 1) > 1:
        parts.append(f"{setup['web']} web processes")
    return " + ".join(parts) or "as is"


def summarize(run: dict) -> dict:
    measured = [t for t in run["tweets"] if not t["warmup"]]
    rss = run.get("web_rss_kib")
    frames = [x for t in measured for x in t["latencies_ms"]]
    all_ms = [t["all_ms"] for t in measured if t["all_ms"] is not None]
    done_ms = [t["done_ms"] for t in measured if t["done_ms"] is not None]

    def med(key):
        values = [t[key] for t in measured if t.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "layer": run["layer"],
        "followers": run["followers"],
        "setup": setup_label(run["setup"]),
        "tweets": len(measured),
        "frames": len(frames),
        "missing": sum(t["missing"] for t in measured),
        "dropped": run.get("closed_sockets_during_run", 0),
        "late": sum(t.get("late_received", 0) for t in measured),
        "duplicates": sum(t["duplicates"] for t in measured),
        "p50_ms": percentile(frames, 50),
        "p99_ms": percentile(frames, 99),
        "max_ms": max(frames, default=None),
        "all_p50_ms": percentile(all_ms, 50),
        "all_max_ms": max(all_ms, default=None),
        "done_p50_ms": percentile(done_ms, 50),
        "done_max_ms": max(done_ms, default=None),
        "post_p50_ms": med("post_ms"),
        "answer_to_start_p50_ms": med("answer_to_start_ms"),
        "job_p50_ms": med("job_ms"),
        "finish_to_all_p50_ms": med("finish_to_all_ms"),
        "cpu_ms_per_tweet": {k: round(v, 1) for k, v in run["cpu_ms_per_tweet"].items()},
        "web_rss_mib": round(rss["open"] / 1024) if rss else None,
        "kib_per_socket": round((rss["open"] - rss["before"]) / rss["sockets"], 1) if rss and rss["sockets"] else None,
        "measure_seconds": run["measure_seconds"],
        "busy_before": run.get("busy_before"),
        "other_load": run.get("other_load"),
        "profiled": run["profiled"],
    }


def fmt(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(summaries: list[dict]) -> str:
    keys = ["p50_ms", "p99_ms", "max_ms", "all_p50_ms", "all_max_ms", "done_p50_ms", "post_p50_ms"]
    keys += ["answer_to_start_p50_ms", "job_p50_ms", "finish_to_all_p50_ms"]
    lines = [
        "| followers | layer | setup | frames | missing | sockets dropped | p50 ms | p99 ms | max ms | all p50 ms "
        "| all max ms | done p50 ms | POST p50 ms | answer->job start ms | job run ms | job end->all ms |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        cells = [fmt(s[k]) for k in keys]
        cells[1] = f"**{cells[1]}**"
        lines.append(
            f"| {s['followers']} | {s['layer']} | {s['setup']} | {s['frames']} | {s['missing']} | {s.get('dropped', 0)} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def cpu_table(summaries: list[dict]) -> str:
    roles = {"web": ("web",), "workers": ("worker",), "redis": ("redis",), "client": ("client",)}
    lines = [
        "| followers | layer | setup | " + " | ".join(f"{n} CPU ms/tweet" for n in roles) + " | other load "
        "| web resident MiB (all processes, sockets open) | KiB per socket |",
        "|---:|---|---|" + "---:|" * len(roles) + "---:|---:|---:|",
    ]
    for s in summaries:
        cpu = s["cpu_ms_per_tweet"]
        per_role = [sum(v for k, v in cpu.items() if k.startswith(prefix)) for prefix in roles.values()]
        other = "-" if s.get("other_load") is None else f"{s['other_load']:.0%}"
        lines.append(
            f"| {s['followers']} | {s['layer']} | {s['setup']} | "
            + " | ".join(f"{v:.0f}" for v in per_role)
            + f" | {other} | {fmt(s.get('web_rss_mib'))} | {fmt(s.get('kib_per_socket'), 1)} |"
        )
    return "\n".join(lines) + "\n"


def describe_source(source: dict) -> str:
    o = source.get("options", {})
    extra = ", web and workers under cProfile" if o.get("profile") else ""
    # Extra packages reach the servers through PYTHONPATH, which argv does not show.
    extras = [name for name in ("hiredis",) if any(name in s["setup"] for s in source["summaries"])]
    if o.get("server") == "uvicorn":
        extras.append("uvicorn, uvloop, httptools")
    env = f"PYTHONPATH=<dir with {', '.join(extras)}> " if extras else ""
    code = source.get("machine", {}).get("git") or "unknown revision"
    return (
        f"{source['when']}: `{env}{' '.join(['bench/live_latency.py', *source['argv']])}`"
        f" ({o.get('tweets')} measured tweets per row after {o.get('warmup')} warm-up, {o.get('workers')} fan-out"
        f" workers, {o.get('gap')} s between tweets{extra}; code at {code})"
    )


def docs_text(sources: list[dict]) -> str:
    """The generated part of docs/benchmarks.md for one or more result files (same machine)."""
    summaries = [s for source in sources for s in source["summaries"]]
    best = {}
    for s in summaries:
        if s["p99_ms"] is not None and s["missing"] == 0:
            if s["followers"] not in best or s["p99_ms"] < best[s["followers"]]["p99_ms"]:
                best[s["followers"]] = s
    verdicts = [
        f"at {n} followers, **{s['layer']}, {s['setup']}** ({s['p99_ms']:.0f} ms, "
        f"{'meets' if s['p99_ms'] < target_p99_ms(n) else 'misses'} the {target_p99_ms(n):,.0f} ms aim)"
        for n, s in sorted(best.items())
    ]
    m = sources[0]["machine"]
    runs = "".join(f"- {describe_source(source)}\n" for source in sources)
    return (
        ("Run on " + describe_source(sources[0]) + ".\n\n" if len(sources) == 1 else f"Runs:\n\n{runs}\n")
        + f"Machine: {m['nproc']} CPU(s), {m['cpu_model']}, {m['memory_gib']} GiB RAM, Linux {m['kernel']};"
        f" Python {m['python']}, Redis {m['redis']}; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + ". Client and server share these cores.\n\n"
        + table(summaries)
        + "\nCPU time per measured tweet, by process (from /proc; web = daphne; client = this script's"
        " websocket clients; other load = what the rest of the machine used meanwhile, as a share of all"
        " cores), and the web processes' memory (VmRSS, summed) once the sockets were open, with its"
        " growth since before they opened divided by the sockets:\n\n"
        + cpu_table(summaries)
        + ("\nLowest p99 in this table with no missing frames: " + "; ".join(verdicts) + ".\n" if verdicts else "")
    )


# -- entry point ---------------------------------------------------------------------------------------


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--followers", type=int, nargs="+", default=[100, 1000], help="follower counts (default 100 1000)")
    p.add_argument("--tweets", type=int, default=20, help="measured tweets per run (default 20)")
    p.add_argument(
        "--layer", nargs="+", choices=["redis", "pubsub"], default=["redis", "pubsub"], help="channel layers"
    )
    p.add_argument("--warmup", type=int, default=1, help="tweets posted first and not counted (default 1)")
    p.add_argument("--workers", type=int, default=2, help="fan-out worker processes (default 2)")
    p.add_argument("--deadline", type=float, default=30.0, help="seconds to wait for one tweet's frames (default 30)")
    p.add_argument("--gap", type=float, default=0.25, help="seconds of quiet between tweets (default 0.25)")
    p.add_argument("--connect-concurrency", type=int, default=50, help="websocket handshakes at once (default 50)")
    p.add_argument(
        "--quiet-busy",
        type=float,
        default=0.15,
        help="before measuring, wait until the machine is at most this busy (share of all cores; default 0.15)",
    )
    p.add_argument(
        "--quiet-wait", type=float, default=300, help="...but no longer than this many seconds (default 300)"
    )
    p.add_argument(
        "--profile", action="store_true", help="run daphne and the workers under cProfile (bench/out/profiles)"
    )
    p.add_argument("--web", type=int, default=1, help="web (daphne) processes; sockets spread over them (default 1)")
    p.add_argument(
        "--server",
        choices=["serve", "daphne", "uvicorn"],
        default="serve",
        help="ASGI server: serve (make run's: daphne with prepared frames, the default), plain daphne, uvicorn",
    )
    p.add_argument(
        "--patch", action="append", default=[], type=Path, help="run a copy of the tree with this patch applied"
    )
    p.add_argument("--docs-section", default="main", help="which generated block of docs/benchmarks.md to replace")
    p.add_argument("--docs-from", nargs="+", type=Path, metavar="JSON", help="run nothing: the docs block from these")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--keep", action="store_true", help="keep each run's temp dir (database, Redis)")
    args = p.parse_args()
    if any(n < 1 for n in args.followers) or args.tweets < 1 or args.web < 1:
        p.error("--followers, --tweets and --web must be at least 1")
    if not re.fullmatch(r"[a-z0-9-]+", args.docs_section):
        p.error("--docs-section: lower-case letters, digits and dashes")
    return args


def main() -> int:
    args = parse_args()
    tag = f"live_latency:{args.docs_section}"
    if args.docs_from:
        write_docs(
            tag, docs_text([json.loads(path.read_text()) for path in args.docs_from]), heading="Live push latency"
        )
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.followers) * 2 + 512
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    stop_on_sigterm()
    when = dt.datetime.now(dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out = OUT_DIR / f"live_latency-{stamp()}.json"
    runs, summaries = [], []
    scratch = Path(tempfile.mkdtemp(prefix="live-latency-"))
    try:
        app_dir = prepare_tree(args.patch, scratch) if args.patch else BASE_DIR
        for n in args.followers:
            t0 = time.perf_counter()
            template = Template.build(
                scratch / f"world-{n}", authors=[n], readers=n, reader_sessions=True, app_dir=app_dir
            )
            log(f"== {n} followers: database ready in {time.perf_counter() - t0:.1f}s")
            for layer in args.layer:
                log(f"== {n} followers, layer {layer}")
                logs = out.with_name(f"{out.stem}-logs") / f"{n}-{layer}"
                runs.append(run_one(template, layer=layer, app_dir=app_dir, logs=logs, args=args))
                summaries.append(summarize(runs[-1]))
    except KeyboardInterrupt:
        log("interrupted; processes stopped")
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log("\n" + table(summaries))
    log(cpu_table(summaries))
    options = {k: [str(x) for x in v] if k == "patch" else v for k, v in vars(args).items()}
    source = {
        "when": when,
        "argv": sys.argv[1:],
        "options": options,
        "machine": machine_info(runs[0]["redis_version"] if runs else None),
        "summaries": summaries,
        "runs": runs,
    }
    out.write_text(json.dumps(source, indent=1))
    log(f"wrote {out.relative_to(BASE_DIR)}")
    if not args.no_docs:
        write_docs(tag, docs_text([source]), heading="Live push latency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
