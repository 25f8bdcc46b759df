#!/usr/bin/env python
"""Back pressure under overload: the fan-out queue cap on and off, at 0.5x, 1x and 3x capacity.

    .venv/bin/python bench/backpressure.py            # the whole benchmark, about 12 minutes
    .venv/bin/python bench/backpressure.py --quick    # 15 s runs, a smoke test of the script

The world (bench/harness.py): 200 authors and 1000 readers, each author followed by 200 readers
drawn at random (40,000 follows, so every fan-out writes 200 home timelines), a session per
author, every home timeline materialized; each run gets a fresh copy of it, a private Redis and
fresh processes: ``--web`` daphne processes on one port (as ``make run``), 2 fan-out workers and
the cron, with ``TWEET_RATE_LIMIT=0`` and the run's ``FANOUT_QUEUE_CAP``. A short warm-up (20
posts) is delivered before each measurement.

1. Capacity: ``bench/loadgen.py --concurrency 8`` (closed loop: 8 posters, each posting again as
   soon as answered) for 20 s with the cap off. If the queue grows (the web tier accepts faster
   than the workers drain), the workers are never idle and their drain rate, measured while the
   web tier is as busy as it gets, is the capacity. If the workers keep up (under a second of
   backlog), daphne is the bottleneck and its accept rate is the capacity.
2. The cap: Little's law, L = lambda x W. With the queue full, jobs leave at the drain rate mu,
   so a job admitted at depth L waits L / mu. For a target wait W the cap is mu x W
   (``--cap auto``, W = ``--target-wait``), or a number given with ``--cap``.
3. Six runs of ``bench/loadgen.py --rate`` (open model) for ``--duration`` seconds each: 0.5x, 1x
   and 3x capacity with the cap on, then the same with the cap off (``FANOUT_QUEUE_CAP=0``).
   After each run the load generator waits for every accepted tweet to be delivered and checks
   that none was lost.

Client and server share this machine's cores: the report says what each process took, and what
other processes on the machine took (each run first waits, at most ``--quiet-wait`` seconds, for
the machine to be idle). A run whose accepted tweets are not all delivered within
``--drain-timeout`` is reported with them as lost, and a server process that died is named.

Output: bench/out/backpressure-<time>/ (a JSON file, a load log and the servers' logs per run, a
summary), the plot docs/backpressure.png (queue depth and accept-to-delivery time per second, at
3x, cap on vs off), and the "Back pressure" block of docs/benchmarks.md (``--no-docs`` leaves both
alone; ``--docs-from bench/out/backpressure-<time>`` writes both again from a finished run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import (  # noqa: E402
    BASE_DIR,
    OUT_DIR,
    Template,
    World,
    log,
    machine_info,
    run_loadgen,
    stamp,
    stop_on_sigterm,
    wait_for_quiet,
    wait_until,
    write_docs,
)

PLOT = BASE_DIR / "docs" / "backpressure.png"
SHED_P99_TARGET_MS = 20.0


def posting_template(folder: Path, args, database: str = "sqlite") -> Template:
    t = time.monotonic()
    template = Template.build(
        folder,
        authors=[args.follows_per_author] * args.authors,
        readers=args.readers,
        pick="random",
        seed=20261127,
        database=database,
    )
    log(
        f"world: {args.authors} authors x {args.follows_per_author} followers of {args.readers} readers"
        f" on {database}, built in {time.monotonic() - t:.1f}s ({folder})"
    )
    return template


@contextlib.contextmanager
def posting_world(template: Template, *, logs: Path, cap: int, web: int, workers: int, keep: bool = False):
    """A world with web processes, workers and the cron running, warmed up by 20 delivered posts
    (so that imports and first connections are not measured)."""
    with World(template, logs=logs, env={"FANOUT_QUEUE_CAP": str(cap)}, keep=keep) as world:
        world.start_web(web)
        world.start_workers(workers)
        world.start_cron()
        authors = template.people["authors"]
        deadline = time.monotonic() + 60
        for i in range(20):
            while (status := world.post(authors[i % len(authors)]["session"], f"warm-up {i}")[0]) not in (200, 202):
                if status != 503 or time.monotonic() > deadline:  # a small cap may shed a warm-up post
                    raise RuntimeError(f"warm-up post answered {status}")
                time.sleep(0.2)
        wait_until(lambda: not world.sql("SELECT 1 FROM fanout_fanout WHERE state != 'done'"), timeout=60, every=0.2)
        yield world


# -- analysis ---------------------------------------------------------------------------------------


def drain_rate_under_load(series: list[dict], duration: float, skip: int = 4) -> float | None:
    """Fan-outs finished per second over the seconds of load in which the queue was never empty."""
    busy = [r["fanout_done"] for r in series[skip : int(duration)] if (r["max_depth"] or 0) > 0]
    return sum(busy) / len(busy) if len(busy) >= 3 else None


def row_for(label: str, cap: int, factor: float, rate: float, data: dict, cpu: dict) -> dict:
    s = data["summary"]
    duration = s["duration_s"]
    done_in_load = sum(r["fanout_done"] for r in data["series"][: int(duration)])
    return {
        "label": label,
        "duration": duration,
        "cap": cap,
        "factor": factor,
        "rate": rate,
        "offered_per_s": s["offered_per_s"],
        "accepted_per_s": s["accepted_per_s"],
        "accepted_by_server_per_s": s["check"]["accepted"] / duration,
        "shed_per_s": s["shed_per_s"],
        "other": {k: v for k, v in s["statuses"].items() if k not in ("202", "503")},
        "client_overflow": s["client_overflow"],
        "accepted_p50_ms": s["accepted_latency_ms"]["p50"],
        "accepted_p99_ms": s["accepted_latency_ms"]["p99"],
        "shed_p50_ms": s["shed_latency_ms"]["p50"],
        "shed_p99_ms": s["shed_latency_ms"]["p99"],
        "accept_to_done_p50_s": s["accept_to_done_s"]["p50"],
        "accept_to_done_p99_s": s["accept_to_done_s"]["p99"],
        "accept_to_done_max_s": s["accept_to_done_s"]["max"],
        "max_depth": s["max_depth"],
        "max_depth_plus_reserved": s["max_depth_plus_reserved"],
        "drain_per_s": done_in_load / duration,
        "drain_under_load_per_s": drain_rate_under_load(data["series"], duration),
        "drain_wait_s": s["drain_wait_s"],
        "lost": s["check"]["lost"],
        "check": s["check"],
        "phases_s": s["check"].get("phases_s"),
        "send_lag_p99_ms": s["send_lag_p99_ms"],
        "retry_after_s": s["retry_after_s"],
        "cpu_percent": {k: round(100 * v / duration, 1) for k, v in cpu.items() if not k.startswith("_")},
        "others_percent": round(100 * cpu.get("_others_cores", 0.0), 0),
    }


def web_percent(row: dict) -> float:
    return sum(v for k, v in row["cpu_percent"].items() if k.startswith(("web", "daphne")))


def fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}{unit}"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| cap | load | offered/s | 202/s | 503/s | no answer/s | accepted/s | p99 POST 202 | p99 POST 503 | "
        "p99 accept→done | max depth | drained/s | lost |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        other = (sum(r["other"].values()) + r["client_overflow"]) / (r.get("duration") or 1)
        lines.append(
            f"| {r['cap'] or 'off'} | {r['factor']:g}x | {fmt(r['offered_per_s'])} | {fmt(r['accepted_per_s'])} | "
            f"{fmt(r['shed_per_s'])} | {fmt(other)} | {fmt(r['accepted_by_server_per_s'])} | "
            f"{fmt(r['accepted_p99_ms'], 0, ' ms')} | {fmt(r['shed_p99_ms'], 0, ' ms')} | "
            f"{fmt(r['accept_to_done_p99_s'], 2, ' s')} | {r['max_depth']} | {fmt(r['drain_per_s'])} | {r['lost']} |"
        )
    return "\n".join(lines) + "\n"


def cpu_table(rows: list[dict]) -> str:
    names = sorted({name for r in rows for name in r["cpu_percent"]} - {"cron", "redis", "loadgen"})
    names += ["cron", "redis", "loadgen"]
    webs = [n for n in names if n.startswith(("web", "daphne"))]
    label = {n: "daphne" if len(webs) == 1 else n.replace("web", "daphne ") for n in webs}
    lines = [
        "| cap | load | " + " | ".join(label.get(n, n) for n in names) + " | total | other processes |",
        "|---|---|" + "---:|" * (len(names) + 2),
    ]
    for r in rows:
        cpu = r["cpu_percent"]
        lines.append(
            f"| {r['cap'] or 'off'} | {r['factor']:g}x | "
            + " | ".join(f"{cpu.get(n, 0):.0f} %" for n in names)
            + f" | {sum(cpu.get(n, 0) for n in names):.0f} % | {r.get('others_percent', 0):.0f} % |"
        )
    return "\n".join(lines) + "\n"


def plot(on: dict, off: dict, *, cap: int, bound: float, path: Path, title: str, unbounded: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, constrained_layout=True)
    runs = [(off, "queue cap off (door limit on)", "tab:red"), (on, f"queue cap on ({cap})", "tab:blue")]
    if unbounded is not None:  # cap off and WEB_MAX_IN_FLIGHT=0: no back pressure anywhere
        runs.insert(0, (unbounded, "no back pressure", "black"))
    for data, label, color in runs:
        series = data["series"]
        depth = [(r["t"], max(r["max_depth"], 0.8)) for r in series if r["max_depth"] is not None]
        ax1.plot([p[0] for p in depth], [p[1] for p in depth], color=color, label=label)
        for key, style in (("accept_to_done_p99_s", "-"), ("accept_to_done_p50_s", ":")):
            pts = [(r["t"], r[key]) for r in series if r[key] is not None]
            ax2.plot(
                [p[0] for p in pts], [p[1] for p in pts], color=color, linestyle=style, label=f"{label}: {key[15:18]}"
            )
    end = on["summary"]["duration_s"]
    for ax in (ax1, ax2):
        ax.axvline(end, color="grey", linestyle=":", linewidth=0.8)
    ax1.annotate("load stops", (end, 1), textcoords="offset points", xytext=(3, 3), color="grey", fontsize=8)
    for ax, y, text in ((ax1, cap, f"cap = {cap}"), (ax2, bound, f"cap / drain + 1 s = {bound:.1f} s")):
        ax.axhline(y, color="tab:blue", linestyle="--", linewidth=0.8)
        ax.annotate(text, (1, y), textcoords="offset points", xytext=(0, 4), color="tab:blue", fontsize=8)
    ax1.set_ylabel("fan-out queue depth (jobs, max per second)")
    ax1.set_title(title)
    ax1.legend(loc="lower right")
    ax2.set_ylabel("accept → fan-out done (s), by second accepted")
    ax2.set_xlabel("seconds since the load started")
    ax2.legend(loc="lower right", fontsize=8)
    for ax in (ax1, ax2):
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict, out_dir: Path, *, docs: bool, unbounded: dict | None = None) -> None:
    """The plot and the docs block, from a finished run's folder."""
    raw = {r["label"]: json.loads((out_dir / f"{r['label']}.json").read_text()) for r in result["rows"]}
    top = max(r["factor"] for r in result["rows"])
    on_top, off_top = raw.get(f"on-{top:g}x"), raw.get(f"off-{top:g}x")
    bound = result["cap"] / result["drain_for_cap"] + 1.0
    a = result["args"]
    if on_top and off_top:
        path = PLOT if docs else out_dir / "backpressure.png"
        title = (
            f"{top:g}x capacity ({on_top['summary']['offered_per_s']:.0f} posts/s offered for "
            f"{on_top['summary']['duration_s']:g} s), {a.get('web', 1)} daphne + {a['workers']} workers, "
            f"{result['machine']['nproc']} cores"
        )
        plot(on_top, off_top, cap=result["cap"], bound=bound, path=path, title=title, unbounded=unbounded)
        log(f"plot: {path}")
    if docs:
        write_docs("backpressure", docs_text(result, top=top, bound=bound), heading="Back pressure")


def docs_text(result: dict, *, top: float, bound: float) -> str:
    """The generated part of the "Back pressure" section: set-up, table, and a reading of it."""
    m, a, info = result["machine"], result["args"], result["capacity_info"]
    rows = {r["label"]: r for r in result["rows"]}
    cap, drain, capacity = result["cap"], result["drain_for_cap"], result["capacity"]
    on, off = rows.get(f"on-{top:g}x"), rows.get(f"off-{top:g}x")
    web = a.get("web", 1)
    lines = [
        f"Measured {m['date']} with `.venv/bin/python bench/backpressure.py` ({result['elapsed_s'] / 60:.0f} min), "
        f"commit {m['git']}: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, Python {m['python']}, "
        f"Redis {m['redis']}, SQLite {m['sqlite']}, Linux {m['kernel']}.",
        "",
        f"**Set-up.** {web} daphne process{'es on one port' if web > 1 else ''}, {a['workers']} fan-out workers, the "
        f"cron and a private redis-server, on 127.0.0.1, with SQLite (WAL) as the database and `TWEET_RATE_LIMIT=0`. "
        f"{a['authors']} authors, each followed by {a['follows_per_author']} of {a['readers']} readers, every home "
        f"timeline materialized: each fan-out writes {a['follows_per_author']} timelines. Every run starts from a fresh "
        "copy of the database, a new Redis and new processes. The load generator (`bench/loadgen.py`) is an open "
        "model: post i is sent at t0 + i/rate whether or not earlier posts were answered, latency is counted from that "
        "scheduled time, at most 256 posts are in flight (a post due beyond that is not sent and counts as *no "
        "answer*, as do posts unanswered after 10 s). It posts round-robin as the authors, and after each run waits "
        "for the queue to drain and checks every accepted tweet in the database and in every follower's timeline. "
        f"**Client and server share the {m['nproc']} cores**: the CPU table below says what each process took, and "
        "how much went to other processes on the machine.",
        "",
    ]
    if "given" in info:
        lines.append(f"**Capacity** {capacity:.0f} posts/s, given on the command line.")
    elif info.get("web_bound"):
        lines.append(
            f"**Capacity.** 8 closed-loop posters (each posts again as soon as answered) for {a['capacity_duration']:g} s "
            f"with the cap off: the web tier accepted {info['accepted_per_s']:.0f} posts/s and the workers kept up "
            f"(the queue never held more than {info['probe_max_depth']} jobs), so daphne is the bottleneck and the "
            f"capacity is its rate, **{capacity:.0f} posts/s**; the drain rate is at least that."
        )
    else:
        lines.append(
            f"**Capacity.** 8 closed-loop posters for {a['capacity_duration']:g} s with the cap off: the web tier "
            f"accepted {info['accepted_per_s']:.0f} posts/s, faster than the workers drained, so the queue grew and the "
            f"workers were never idle; they finished {info['drain_under_load_per_s']:.0f} fan-outs/s "
            f"({info['drain_after_load_per_s'] or 0:.0f}/s once the posts stopped and daphne left them the CPU). "
            f"Capacity = the smaller, **{capacity:.0f} posts/s**."
        )
    lines += [
        "",
        f"**Cap.** {cap} ({result['cap_reason']}). Little's law, L = lambda x W: a job admitted into a full queue waits "
        f"L / mu = {cap} / {drain:.0f} = {cap / drain:.1f} s, so with the cap on the aim for accepted tweets is "
        f"accept→done within {bound:.1f} s (that wait plus 1 s), and 503 answers within "
        f"{SHED_P99_TARGET_MS:.0f} ms at p99. (The default `FANOUT_QUEUE_CAP=100` would allow "
        f"{100 / drain:.1f} s here.)",
        "",
        "Columns: 202/s and 503/s are answers the client got (503 = shed, `overloaded`); *no answer* = "
        "timeouts, posts not sent because 256 were in flight, and other statuses (a 503 `unavailable` when Redis "
        "failed); *accepted/s* = tweets the server made, whether or not the client saw the 202; p99 POST "
        "latencies from the scheduled send time; accept→done = `Fanout.finished_at - Tweet.created_at` over every "
        "accepted tweet; max depth = `LLEN rq:queue:fanout` sampled every 200 ms during the load; drained/s = "
        "fan-outs finished during the load; lost = accepted tweets not delivered to every materialized timeline.",
        "",
        markdown_table(result["rows"]),
        "CPU during the load (100 % = one core; *other processes* = the rest of the machine's busy time):",
        "",
        cpu_table(result["rows"]),
    ]

    def brief(r: dict) -> str:
        busy = (
            f", with other processes taking {r['others_percent']:.0f} % of a core" if r["others_percent"] >= 20 else ""
        )
        return (
            f"{r['label']}: POST p99 {fmt(r['accepted_p99_ms'], 0)} ms, accept→done p99 "
            f"{fmt(r['accept_to_done_p99_s'], 2)} s, max depth {r['max_depth']}{busy}"
        )

    reading = []
    if lows := [r for r in result["rows"] if r["factor"] < 1]:
        reading.append("Below capacity nothing is shed and the cap makes no difference: " + "; ".join(map(brief, lows)))
    if ones := [r for r in result["rows"] if r["factor"] == 1]:
        reading.append(
            "At capacity (utilization about 1, where any burst builds a backlog that drains only slowly) the two runs "
            "can differ a lot from one run to the next: " + "; ".join(map(brief, ones)) + ". Once daphne falls "
            "behind, it runs more requests at once, each slower, so a backlog feeds itself; the cap stops that on the "
            "fan-out side"
        )
    if on:
        met_delay = on["accept_to_done_p99_s"] is not None and on["accept_to_done_p99_s"] <= bound
        met_shed = on["shed_p99_ms"] is not None and on["shed_p99_ms"] <= SHED_P99_TARGET_MS
        unavailable = on["other"].get("503_unavailable", 0)
        text = (
            f"Cap on, {top:g}x: the fan-out queue stayed within the cap (max {on['max_depth']}, "
            f"{on['max_depth_plus_reserved']} with reservations) and {on['lost']} accepted tweets were lost. "
            f"Accepted tweets were delivered within {fmt(on['accept_to_done_p99_s'], 2)} s at p99 (max "
            f"{fmt(on['accept_to_done_max_s'], 1)} s) against the {bound:.1f} s aim: **{'met' if met_delay else 'not met'}**"
        )
        if on["drain_per_s"] < 0.9 * drain:
            text += (
                f"; the workers drained {on['drain_per_s']:.0f}/s, not the {drain:.0f}/s the cap was sized for, because "
                f"daphne took {web_percent(on):.0f} % of a core, so a full queue meant "
                f"{cap / max(on['drain_per_s'], 0.1):.1f} s of wait"
            )
        text += (
            f". The 503s took {fmt(on['shed_p99_ms'], 0)} ms at p99 against {SHED_P99_TARGET_MS:.0f} ms: "
            f"**{'met' if met_shed else 'not met'}**"
        )
        if on["client_overflow"] or on["other"]:
            text += (
                f"; of {on['offered_per_s']:.0f} posts/s offered, {on['accepted_per_s']:.0f}/s were answered 202 and "
                f"{on['shed_per_s']:.0f}/s 503, and the rest got no answer within 10 s or were never sent"
            )
        reading.append(text + (f"; {unavailable} got a 503 `unavailable` (Redis errors)" if unavailable else ""))
    if off:
        c = off["check"]
        text = (
            f"Cap off, {top:g}x: every post that reached the view was accepted ({off['accepted_by_server_per_s']:.0f}/s) "
            f"while the workers drained {off['drain_per_s']:.0f}/s, so the queue grew to {off['max_depth']:,} jobs, "
            f"and the time to delivery with it, to {fmt(off['accept_to_done_max_s'], 0)} s for the last tweets (p99 "
            f"{fmt(off['accept_to_done_p99_s'], 0)} s). "
        )
        if not off["lost"]:
            text += f"{off['lost']} accepted tweets were lost"
        else:
            failures = {
                "not_done": "never delivered",
                "missing_from_timelines": "missing from some materialized timeline",
                "missing_in_db": "missing from the database",
                "delivered_short": "with delivered < recipients",
            }
            text += f"**{off['lost']} accepted tweets failed the check**: " + ", ".join(
                f"{c[k]} {what}" for k, what in failures.items() if c.get(k)
            )
        unavailable = off["other"].get("503_unavailable", 0)
        reading.append(text + (f"; {unavailable} posts got a 503 `unavailable` (Redis errors)" if unavailable else ""))
    for r in result["rows"]:
        if r.get("died"):
            not_done = r["check"].get("not_done", 0)
            reading.append(
                f"In {r['label']}, server processes exited during the run: {', '.join(r['died'])}"
                + (f"; {not_done} accepted tweets were still not delivered after the load" if not_done else "")
            )
    lines += ["**Reading.**", ""] + [f"- {r}." for r in reading]
    lines += ["", f"![queue depth and accept→done time over time at {top:g}x, cap on vs off](backpressure.png)"]
    return "\n".join(lines) + "\n"


# -- the experiment -----------------------------------------------------------------------------------


def measure_capacity(template: Template, args, out_dir: Path) -> tuple[float, float, dict, str]:
    """Capacity (posts/s), the drain rate to size the cap with, how they were found, Redis's version."""
    log(f"\n== capacity: 8 closed-loop posters for {args.capacity_duration:g} s, cap off")
    wait_for_quiet(max_wait=args.quiet_wait)
    with posting_world(template, logs=out_dir / "capacity-logs", cap=0, web=args.web, workers=args.workers) as world:
        data, cpu = run_loadgen(
            world, out=out_dir / "capacity.json", duration=args.capacity_duration, concurrency=8, drain_timeout=240
        )
        redis_version = world.redis_version
    s = data["summary"]
    accept = s["accepted_per_s"]
    # If the workers kept up (less than a second of backlog at most), the web tier is the
    # bottleneck: the capacity is its accept rate, and the drain rate is at least that.
    # Otherwise the queue grew, the workers were never idle, and their rate is the capacity.
    web_bound = (s["max_depth"] or 0) < accept
    drain = None if web_bound else drain_rate_under_load(data["series"], args.capacity_duration)
    if drain is None:
        web_bound, drain = True, accept
    tail = [r["fanout_done"] for r in data["series"][int(args.capacity_duration) + 1 :] if r["fanout_done"]]
    info = {
        "web_bound": web_bound,
        "probe_max_depth": s["max_depth"],
        "accepted_per_s": accept,
        "drain_under_load_per_s": drain,
        "drain_after_load_per_s": (sum(tail[:-1]) / len(tail[:-1])) if len(tail) > 2 else None,
        "accepted_p50_ms": s["accepted_latency_ms"]["p50"],
        "lost": s["check"]["lost"],
        "cpu_percent": {k: round(100 * v / args.capacity_duration, 1) for k, v in cpu.items() if not k.startswith("_")},
    }
    capacity = min(drain, accept)
    log(
        f"capacity: web accepted {accept:.1f}/s and the workers kept up (max depth {s['max_depth']}): web-bound"
        if web_bound
        else f"capacity: web accepted {accept:.1f}/s; workers drained {drain:.1f}/s while it did "
        f"({info['drain_after_load_per_s'] or 0:.1f}/s once the posts stopped)"
    )
    log(f"capacity: {capacity:.1f}/s")
    return capacity, drain, info, redis_version


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per run")
    p.add_argument("--factors", default="0.5,1,3", help="offered load as multiples of the capacity")
    p.add_argument(
        "--cap", default="auto", help="FANOUT_QUEUE_CAP for the cap-on runs, or 'auto' (drain x --target-wait)"
    )
    p.add_argument("--target-wait", type=float, default=2.0, help="acceptable queue wait (s) for --cap auto")
    p.add_argument("--capacity", type=float, default=0.0, help="skip the measurement and use this many posts/s")
    p.add_argument("--capacity-duration", type=float, default=20.0)
    p.add_argument("--authors", type=int, default=200)
    p.add_argument("--readers", type=int, default=1000)
    p.add_argument("--follows-per-author", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--web", type=int, default=os.cpu_count() or 1, help="web processes on one port (default: cores)")
    p.add_argument(
        "--drain-timeout", type=float, default=240.0, help="after each run, wait this long at most for delivery"
    )
    p.add_argument("--only", default="", help="comma-separated run labels to do (e.g. on-3x,off-3x)")
    p.add_argument("--quick", action="store_true", help="15 s runs and a 10 s capacity probe; --no-docs implied")
    p.add_argument("--no-docs", action="store_true", help="leave docs/ alone")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="before each run, wait this long at most for quiet")
    p.add_argument("--keep", action="store_true", help="keep each run's temporary directory (database, Redis)")
    p.add_argument("--docs-from", type=Path, metavar="DIR", help="no runs: the plot and docs again from a finished run")
    p.add_argument(
        "--unbounded",
        type=Path,
        metavar="JSON",
        help="with --docs-from: also draw this run (cap off, run with WEB_MAX_IN_FLIGHT=0) as 'no back pressure'",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.capacity_duration, args.no_docs = 15.0, 10.0, True
    if not 5 <= args.duration <= 300:
        p.error("--duration must be between 5 and 300 seconds")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.docs_from:
        unbounded = json.loads(args.unbounded.read_text()) if args.unbounded else None
        write_outputs(
            json.loads((args.docs_from / "summary.json").read_text()), args.docs_from, docs=True, unbounded=unbounded
        )
        return 0
    stop_on_sigterm()
    started = time.monotonic()
    out_dir = OUT_DIR / f"backpressure-{stamp()}"
    out_dir.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix="backpressure-"))
    try:
        template = posting_template(tmp, args)
        redis_version = None
        if args.capacity > 0:
            capacity = drain = args.capacity
            capacity_info = {"given": capacity}
        else:
            capacity, drain, capacity_info, redis_version = measure_capacity(template, args, out_dir)
        if args.cap == "auto":
            cap = max(10, int(round(drain * args.target_wait)))
            at_least = "at least " if capacity_info.get("web_bound") else ""
            cap_reason = f"drain {at_least}{drain:.1f}/s x {args.target_wait:g} s acceptable wait"
        else:
            cap = int(args.cap)
            cap_reason = f"given; {cap} / {drain:.1f}/s = {cap / drain:.1f} s of wait"
        log(f"cap: {cap} ({cap_reason})")

        factors = [float(f) for f in args.factors.split(",")]
        plan = [(f"on-{f:g}x", cap, f) for f in factors] + [(f"off-{f:g}x", 0, f) for f in factors]
        plan = [p for p in plan if not args.only or p[0] in args.only.split(",")]
        rows = []
        for label, run_cap, factor in plan:
            rate = capacity * factor
            log(f"\n== {label}: {rate:.1f} posts/s for {args.duration:g} s, FANOUT_QUEUE_CAP={run_cap}")
            wait_for_quiet(max_wait=args.quiet_wait)
            logs = out_dir / f"{label}-logs"
            with posting_world(
                template, logs=logs, cap=run_cap, web=args.web, workers=args.workers, keep=args.keep
            ) as world:
                data, cpu = run_loadgen(
                    world,
                    out=out_dir / f"{label}.json",
                    duration=args.duration,
                    rate=rate,
                    drain_timeout=args.drain_timeout,
                )
                died = world.died()
                redis_version = redis_version or world.redis_version
            if died:
                log(f"    server processes that died during the run: {', '.join(died)} (see {logs})")
            rows.append(row_for(label, run_cap, factor, rate, data, cpu) | {"died": died})

        result = {
            "machine": machine_info(redis_version),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "capacity": capacity,
            "capacity_info": capacity_info,
            "cap": cap,
            "cap_reason": cap_reason,
            "drain_for_cap": drain,
            "rows": rows,
            "elapsed_s": time.monotonic() - started,
        }
        (out_dir / "summary.json").write_text(json.dumps(result, indent=1))
        log("\n" + markdown_table(rows))
        log(cpu_table(rows))
        write_outputs(result, out_dir, docs=not args.no_docs)
        log(f"results: {out_dir}  ({(time.monotonic() - started) / 60:.1f} min)")
        return 0 if all(r["lost"] == 0 for r in rows) else 2
    except KeyboardInterrupt:
        log("interrupted; everything stopped")
        return 130
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
