#!/usr/bin/env python
"""Deletes: how long after DELETE /api/tweets/<id> is answered has the tweet left every open
page and every follower's timeline?

    .venv/bin/python bench/delete_latency.py --followers 1000 10000 --sockets 1000 --tweets 5

For each follower count a world from scratch (bench/harness.py): one author and N followers,
every home timeline materialized, a private Redis, one daphne and two fan-out workers. Up to
``--sockets`` followers keep a websocket open. Each tweet is posted, fanned out (its outbox row
done), then deleted as a browser does (session, CSRF pair). Measured from the moment the DELETE
is sent (the click): its answer, when each open socket got ``tweet.deleted``, and when the
removal job finished (its Retraction row done; Redis is then checked: no follower's timeline
may still hold the tweet). Clocks: the frames with ``time.perf_counter`` in this process; the
job's end on the wall clock.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import resource
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import (  # noqa: E402
    CSRF_TOKEN,
    HOST,
    OUT_DIR,
    Template,
    World,
    log,
    machine_info,
    percentile,
    stamp,
    stop_on_sigterm,
    timestamp,
    write_docs,
)

TARGET_S = 1.0


def delete(url: str, session: str, tweet_id: int) -> int:
    request = urllib.request.Request(
        f"{url}/api/tweets/{tweet_id}",
        method="DELETE",
        headers={"X-CSRFToken": CSRF_TOKEN, "Cookie": f"sessionid={session}; csrftoken={CSRF_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


async def measure(world: World, port: int, people: dict, args) -> list[dict]:
    from websockets.asyncio.client import connect

    author, followers = people["authors"][0], people["readers"]
    watching = followers[: args.sockets]
    deleted_at: dict[int, list[float]] = {}
    limit = asyncio.Semaphore(50)

    async def open_one(session: str):
        async with limit:
            return await connect(
                f"ws://{HOST}:{port}/ws/timeline/",
                additional_headers={"Cookie": f"sessionid={session}"},
                origin=f"http://{HOST}:{port}",
                open_timeout=30,
                compression=None,
                ping_interval=None,
            )

    async def read(ws) -> None:
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "tweet.deleted":
                deleted_at.setdefault(message["tweet_id"], []).append(time.perf_counter())

    sockets = await asyncio.gather(*(open_one(f["session"]) for f in watching))
    readers = [asyncio.create_task(read(ws)) for ws in sockets]
    log(f"    {len(sockets)} sockets open")
    await asyncio.sleep(0.5)  # the last presence marks
    records = []
    try:
        for number in range(args.tweets):
            status, _, answer = await asyncio.to_thread(world.post, author["session"], f"to delete {number}")
            assert status == 202, answer
            tweet_id = answer["tweet"]["id"]
            deadline = time.monotonic() + 60
            while world.fanout(tweet_id).get("state") != "done":
                assert time.monotonic() < deadline, f"fan-out of {tweet_id} not done"
                await asyncio.sleep(0.02)
            t_sent, wall_sent = time.perf_counter(), time.time()
            status = await asyncio.to_thread(delete, world.url, author["session"], tweet_id)
            t_answer = time.perf_counter()
            assert status == 204, status
            done = None
            while time.monotonic() < deadline:
                got = len(deleted_at.get(tweet_id, []))
                done = done or retraction_done(world, tweet_id)
                if got >= len(sockets) and done:
                    break
                await asyncio.sleep(0.01)
            frames = sorted((t - t_sent) for t in deleted_at.get(tweet_id, []))
            still = holders(world, tweet_id, [f["id"] for f in followers])
            records.append(
                {
                    "tweet_id": tweet_id,
                    "delete_ms": (t_answer - t_sent) * 1000,
                    "frames": len(frames),
                    "sockets": len(sockets),
                    "frame_p50_s": percentile(frames, 50),
                    "frame_p99_s": percentile(frames, 99),
                    "frame_max_s": frames[-1] if frames else None,
                    "timelines_clean_s": (done - wall_sent) if done else None,
                    "timelines_still_holding": still,
                }
            )
            r = records[-1]
            log(
                f"    tweet {number + 1}/{args.tweets}: DELETE {r['delete_ms']:.0f} ms; frames {r['frames']}/{len(sockets)}"
                f" p99 {r['frame_p99_s'] or 0:.3f} s; timelines clean after {r['timelines_clean_s'] or float('nan'):.3f} s"
                f" ({still} still holding it)"
            )
            await asyncio.sleep(args.gap)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return records


def retraction_done(world: World, tweet_id: int) -> float | None:
    row = world.sql("SELECT done_at FROM fanout_retraction WHERE tweet_id = ?", tweet_id)
    return timestamp(row[0][0]) if row and row[0][0] is not None else None


def holders(world: World, tweet_id: int, user_ids: list[int]) -> int:
    from fanout import timelines

    with world.redis.pipeline(transaction=False) as pipe:
        for user_id in user_ids:
            pipe.zscore(timelines.key(user_id), tweet_id)
        return sum(score is not None for score in pipe.execute())


def summary(followers: int, records: list[dict]) -> dict:
    frames = [r["frame_p99_s"] for r in records if r["frame_p99_s"] is not None]
    clean = [r["timelines_clean_s"] for r in records if r["timelines_clean_s"] is not None]
    return {
        "followers": followers,
        "sockets": records[0]["sockets"] if records else 0,
        "tweets": len(records),
        "delete_ms_p50": percentile([r["delete_ms"] for r in records], 50),
        "frame_p99_worst_s": max(frames) if frames else None,
        "frame_max_s": max((r["frame_max_s"] or 0) for r in records) if records else None,
        "missing_frames": sum(r["sockets"] - r["frames"] for r in records),
        "clean_p50_s": percentile(clean, 50),
        "clean_max_s": max(clean) if len(clean) == len(records) else None,
        "still_holding": sum(r["timelines_still_holding"] for r in records),
    }


def docs_text(source: dict) -> str:
    m = source["machine"]
    rows = "".join(
        f"| {s['followers']:,} | {s['sockets']:,} | {s['tweets']} | {s['delete_ms_p50']:.0f} ms"
        f" | {s['frame_p99_worst_s']:.3f} s | {s['frame_max_s']:.3f} s | {s['missing_frames']}"
        f" | {s['clean_p50_s']:.3f} s | {s['clean_max_s']:.3f} s | {s['still_holding']} |\n"
        for s in source["summaries"]
    )
    worst = max(max(s["frame_max_s"], s["clean_max_s"]) for s in source["summaries"])
    return (
        f"Measured {source['when']} with `.venv/bin/python bench/delete_latency.py {' '.join(source['argv'])}`:"
        f" {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, Redis {m['redis']}, SQLite; one daphne,"
        " two fan-out workers, the client on the same cores. Each tweet is posted, fanned out to every"
        " follower's timeline, then deleted; times from the moment the DELETE was sent.\n\n"
        "| followers | open sockets | tweets | DELETE answered p50 | tweet.deleted p99 (worst tweet) | last frame | frames missing"
        " | all timelines clean p50 | max | timelines still holding it |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + rows + "\n"
        f"Target: gone from every open page and every follower's timeline within {TARGET_S:.0f} s:"
        f" {'**met**' if worst < TARGET_S else '**not met**'} (slowest {worst:.2f} s).\n"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--followers", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--sockets", type=int, default=1000, help="followers with a page open (at most)")
    p.add_argument("--tweets", type=int, default=5)
    p.add_argument("--gap", type=float, default=0.5)
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, args.sockets * 2 + 512), hard), hard))
    stop_on_sigterm()
    when = dt.datetime.now(dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out = OUT_DIR / f"delete_latency-{stamp()}.json"
    scratch = Path(tempfile.mkdtemp(prefix="delete-latency-"))
    summaries, runs, redis_version = [], [], None
    try:
        for n in args.followers:
            template = Template.build(scratch / f"world-{n}", authors=[n], readers=n, reader_sessions=True)
            log(f"== {n} followers")
            with World(template, logs=out.with_name(f"{out.stem}-logs") / str(n)) as world:
                port = world.start_web(1, one_port=False)[0]
                world.start_workers(2)
                time.sleep(1.0)
                records = asyncio.run(measure(world, port, template.people, args))
                redis_version = world.redis_version
                if died := world.died():
                    raise RuntimeError(f"{', '.join(died)} during the run")
            runs.append({"followers": n, "records": records})
            summaries.append(summary(n, records))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    source = {"when": when, "argv": sys.argv[1:], "machine": machine_info(redis_version), "summaries": summaries}
    out.write_text(json.dumps(source | {"runs": runs}, indent=1))
    text = docs_text(source)
    log("\n" + text)
    if not args.no_docs:
        write_docs("delete_latency", text, heading="Deletes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
