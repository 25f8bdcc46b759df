#!/usr/bin/env python
"""Fan-out writes on one Redis and on a three-master Redis Cluster, each beside its raw ceiling.

    .venv/bin/python bench/timeline_store.py                       # about 2 minutes
    .venv/bin/python bench/timeline_store.py --timelines 20000 --tweets 2 --no-docs

For each store (a private redis-server; a private cluster of three masters, fanout.redis_server,
all on this machine) --timelines home timelines are materialized (the sentinel alone), then:

- **raw ceiling**: --tweets rounds of one plain ZADD per timeline, pipelined 1,000 at a time
  (on the cluster, redis-py's cluster pipeline splits each thousand by master): the most the
  store takes from one client, with no existence check and no trim;
- **fan-out**: the same writes as the app makes them, ``fanout.timelines.add`` over batches of
  FANOUT_BATCH_SIZE followers (the add script: write only into materialized timelines, trim to
  TIMELINE_CAP; on the cluster one script per hash slot, all of a batch in one pipeline);

each as timeline writes per second, and the CPU the servers and this client spent per 1,000
writes. Then the memory: Redis's ``MEMORY USAGE`` of one full timeline (TIMELINE_CAP ids) and the
servers' ``used_memory`` for all the timelines, each holding --tweets ids by then. One client
process drives each store, as one fan-out worker does; the client and the servers share the cores.

Output: bench/out/timeline-store-<time>.json and the "Timeline store" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import OUT_DIR, CpuClock, app_env, log, machine_info, stamp, start_redis, write_docs  # noqa: E402

CHUNK = 1000


def setup_django(tmp: Path, redis_url: str) -> None:
    env = app_env(db=tmp / "db.sqlite3", redis_url=redis_url, secret_key="bench-" * 10, var_dir=tmp / "var")
    os.environ.update({k: v for k, v in env.items() if k not in os.environ or k.startswith(("DJANGO", "REDIS"))})
    import django

    django.setup()


def materialize(client, keys: list[str]) -> None:
    from fanout import timelines

    for i in range(0, len(keys), CHUNK):
        with client.pipeline(transaction=False) as pipe:
            for key in keys[i : i + CHUNK]:
                pipe.zadd(key, {timelines.SENTINEL: 0})
            pipe.execute()


def measure(name: str, client, pids: dict[str, int], args) -> dict:
    from django.conf import settings

    from fanout import timelines

    user_ids = list(range(1, args.timelines + 1))
    keys = [timelines.key(u) for u in user_ids]
    client.flushall(**({"target_nodes": "primaries"} if hasattr(client, "get_primaries") else {}))
    materialize(client, keys)
    batch = settings.FANOUT_BATCH_SIZE
    result = {"store": name, "timelines": args.timelines, "batch": batch}

    def timed(run) -> tuple[float, dict]:
        clock = CpuClock(pids, me="client")
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
        used = clock.read()
        writes = args.tweets * args.timelines
        cpu = {
            "servers": sum(v for k, v in used.items() if k.startswith("redis")) / writes * 1e9,
            "client": used["client"] / writes * 1e9,
        }
        return writes / seconds, cpu

    def raw() -> None:
        for tweet in range(1, args.tweets + 1):
            for i in range(0, len(keys), CHUNK):
                with client.pipeline(transaction=False) as pipe:
                    for key in keys[i : i + CHUNK]:
                        pipe.zadd(key, {str(tweet): tweet})
                    pipe.execute()

    def fanout() -> None:
        for tweet in range(1_000_001, 1_000_001 + args.tweets):
            for i in range(0, len(user_ids), batch):
                timelines.add(tweet_id=tweet, user_ids=user_ids[i : i + batch], redis=client)

    result["raw_per_s"], result["raw_cpu_us_per_1000"] = timed(raw)
    client.flushall(**({"target_nodes": "primaries"} if hasattr(client, "get_primaries") else {}))
    materialize(client, keys)
    result["fanout_per_s"], result["fanout_cpu_us_per_1000"] = timed(fanout)
    result["ratio"] = result["fanout_per_s"] / result["raw_per_s"]
    # A big account's post: fanned out on write into every timeline, or merged on read (one write).
    t0 = time.perf_counter()
    for i in range(0, len(user_ids), batch):
        timelines.add(tweet_id=2_000_000, user_ids=user_ids[i : i + batch], redis=client)
    result["big_post_on_write_s"] = time.perf_counter() - t0
    client.zadd(timelines.author_key(1), {timelines.SENTINEL: 0})
    t0 = time.perf_counter()
    timelines.add_to_author(author_id=1, tweet_id=2_000_001, redis=client)
    result["big_post_on_read_s"] = time.perf_counter() - t0
    result["reads"] = {str(k): read_latency(client, k, settings.TIMELINE_CAP) for k in (0, 10, 100)}
    full = timelines.key(0)
    client.delete(full)
    client.zadd(full, {timelines.SENTINEL: 0})
    for start in range(1, settings.TIMELINE_CAP + 1, CHUNK):
        client.zadd(full, {str(i): i for i in range(start, min(start + CHUNK, settings.TIMELINE_CAP + 1))})
    result["full_timeline_bytes"] = client.memory_usage(full)
    result["timeline_cap"] = settings.TIMELINE_CAP
    client.delete(full)
    info = client.info("memory")
    used = (
        sum(v["used_memory"] for v in info.values())
        if isinstance(next(iter(info.values())), dict)
        else info["used_memory"]
    )
    result["used_memory_bytes"] = used
    log(
        f"{name}: raw {result['raw_per_s']:,.0f} writes/s, fan-out {result['fanout_per_s']:,.0f} writes/s"
        f" ({result['ratio']:.2f}x); full timeline {result['full_timeline_bytes']} B; used_memory {used / 2**20:.0f} MiB"
    )
    return result


def read_latency(client, big_accounts: int, cap: int, reads: int = 300) -> dict:
    """A home page of 20 as the app reads it (fanout.timelines.queue_page, timeline.selectors):
    one pipeline for the home timeline and each followed big account's, then the merge. Every
    timeline full; milliseconds, in this process (no HTTP)."""
    from fanout import timelines

    authors = range(1000, 1000 + big_accounts)
    for n, author_id in enumerate(authors):
        ids = range(10_000_000 + n * cap, 10_000_000 + (n + 1) * cap)
        client.zadd(timelines.author_key(author_id), {timelines.SENTINEL: 0, **{str(i): i for i in ids}})
    samples = []
    for _ in range(reads):
        t0 = time.perf_counter()
        with client.pipeline(transaction=False) as pipe:
            timelines.queue_page(pipe, 1, limit=21)
            for author_id in authors:
                timelines.queue_author_page(pipe, author_id, limit=21)
            results = pipe.execute()
        pages = [timelines.page_from(*results[i : i + 3]) for i in range(0, len(results), 3)]
        sorted({i for page_ids, _ in pages for i in page_ids}, reverse=True)[:21]
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {"p50_ms": samples[len(samples) // 2], "p99_ms": samples[int(len(samples) * 0.99)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timelines", type=int, default=100_000)
    parser.add_argument("--tweets", type=int, default=5, help="tweets written into every timeline, per measurement")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="timeline-store-"))
    single = cluster = None
    try:
        single = start_redis(tmp / "single")
        setup_django(tmp, single.url)
        import redis

        from fanout.redis_server import RedisClusterServer

        cluster = RedisClusterServer(tmp / "cluster").start()
        results = [
            measure("one Redis", redis.Redis.from_url(single.url), {"redis": single.process.pid}, args),
            measure(
                "Redis Cluster, 3 masters",
                redis.RedisCluster.from_url(cluster.url),
                {f"redis{i}": node.process.pid for i, node in enumerate(cluster.nodes)},
                args,
            ),
        ]
        version = redis.Redis.from_url(single.url).info("server")["redis_version"]
    finally:
        for server in (single, cluster):
            if server is not None:
                server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    machine = machine_info(version)
    out = OUT_DIR / f"timeline-store-{stamp()}.json"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=2))
    if not args.no_docs:
        write_docs("timeline_store", docs_text(results, machine, args), heading="Timeline store")
    log(f"results in {out}")
    return 0


def docs_text(results: list[dict], machine: dict, args) -> str:
    lines = [
        f"Measured {machine['date']} on {machine['nproc']} cores ({machine['cpu_model']}), Redis {machine['redis']},"
        f" commit {machine['git']}: {args.timelines:,} materialized timelines, {args.tweets} tweets written into each"
        f" per measurement, one client process; the client and the servers share the cores.",
        "",
        "| store | raw ceiling (writes/s) | fan-out (writes/s) | fan-out / raw | servers CPU µs per 1,000 writes"
        " (raw / fan-out) | client CPU µs per 1,000 writes (raw / fan-out) | one full timeline (MEMORY USAGE) |"
        f" used_memory, {args.timelines:,} timelines of {args.tweets + 1} ids |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['store']} | {r['raw_per_s']:,.0f} | {r['fanout_per_s']:,.0f} | {r['ratio']:.2f}x"
            f" | {r['raw_cpu_us_per_1000']['servers']:,.0f} / {r['fanout_cpu_us_per_1000']['servers']:,.0f}"
            f" | {r['raw_cpu_us_per_1000']['client']:,.0f} / {r['fanout_cpu_us_per_1000']['client']:,.0f}"
            f" | {r['full_timeline_bytes']:,} B ({r['full_timeline_bytes'] / (8 * r['timeline_cap']):.1f}x the raw ids)"
            f" | {r['used_memory_bytes'] / 2**20:,.0f} MiB |"
        )
    lines += [
        "",
        f"A big account's post (followed by all {args.timelines:,}): fanned out on write, or merged on read"
        " (one write into its own timeline); and a home page of 20 read as the app reads it (one pipeline for the"
        " home timeline and each followed big account's timeline, then the merge; every timeline full; in-process,"
        " no HTTP), following 0, 10 and 100 big accounts:",
        "",
        "| store | post on write | post merged on read | read, 0 big accounts (p50 / p99) | 10 | 100 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        reads = " | ".join(
            f"{r['reads'][k]['p50_ms']:.2f} / {r['reads'][k]['p99_ms']:.2f} ms" for k in ("0", "10", "100")
        )
        lines.append(
            f"| {r['store']} | {r['big_post_on_write_s'] * 1000:,.0f} ms | {r['big_post_on_read_s'] * 1000:.2f} ms"
            f" | {reads} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
