#!/usr/bin/env python
"""Recovery: how long a fan-out waits when its worker is killed, or when Redis forgets it.

    .venv/bin/python bench/recovery.py           # 10k and 100k followers, 5 kills each; 100 fan-outs lost; ~5 min
    .venv/bin/python bench/recovery.py --quick   # 10k followers, 2 kills; 20 fan-outs lost; docs left alone

The outbox row owns each fan-out (fanout/models.py): a worker holds a lease on it, renewed with
every batch, and the relay (run every second by ``manage.py fanout_cron``) queues again any row
whose lease lapsed, or that is queued but missing from the queue past a grace period. This
measures the two clocks that design sets, with the app's defaults (lease, batch size, relay
period, two workers, SQLite), on real processes (bench/harness.py): one daphne, two
``manage.py fanout_worker``, ``manage.py fanout_cron``, a private Redis, a database with an
author per size whose followers' home timelines are all materialized.

1. A worker SIGKILLed in the middle of a fan-out. The author posts over HTTP (session cookie and
   CSRF pair); the script polls the Fanout row (SQLite, read-only) until it is ``running`` with
   ``delivered`` > 0, finds the worker running it in RQ's registry (``rq:workers``: the busy one
   with one of our pids) and SIGKILLs it. A fan-out that was done before the kill landed is not
   counted, and tried again. Measured from the kill: the lease lapsing, the relay queueing the
   row again (``enqueued_at``), the other worker taking it over (``started_at``) and finishing it
   (``finished_at``); then every follower's timeline must hold the tweet once, and delivered ==
   recipients == followers. The killed worker is started again before the next try.
2. Redis restarted without its data while fan-outs wait: the workers are stopped, M tweets of 200
   followers each are posted (each 202, its job queued), Redis is stopped, its data deleted and a
   new one started on the same port at once, the followers' timelines are materialized again (as
   if they had their pages open), and the workers start. Measured from the restart: the relay
   queueing each row again, and every row ``done``; every timeline must hold every tweet.

Output: bench/out/recovery-<time>.json (servers' logs beside it) and the generated block of the
"Recovery" section of docs/benchmarks.md (``--no-docs`` leaves it alone).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import (  # noqa: E402
    BASE_DIR,
    OUT_DIR,
    CpuClock,
    Template,
    World,
    log,
    machine_info,
    others_share,
    stamp,
    stop_on_sigterm,
    wait_for_quiet,
    wait_until,
    write_docs,
)

WAITING_FOLLOWERS = 200


def app_settings(world: World) -> dict:
    """The recovery clocks as the app runs them (its defaults unless the environment says otherwise)."""
    code = (
        "import json; from django.conf import settings as s; from fanout import relay; print(json.dumps({"
        "'lease_s': s.FANOUT_LEASE_SECONDS, 'batch': s.FANOUT_BATCH_SIZE, 'relay_every_s': relay.RELAY_EVERY,"
        " 'grace_s': relay.GRACE.total_seconds()}))"
    )
    cmd = [sys.executable, "manage.py", "shell", "-c", code]
    done = subprocess.run(cmd, cwd=BASE_DIR, env=world.env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])  # after Django's line about its automatic imports


def busy_worker(world: World) -> str | None:
    """Our worker process that RQ says is busy (a killed one stays registered a while: live pids only)."""
    alive = {p.pid: name for name, p in world.processes.items() if name.startswith("worker") and p.poll() is None}
    for key in world.redis.smembers("rq:workers"):
        worker = world.redis.hgetall(key)
        if worker.get(b"state") == b"busy" and int(worker.get(b"pid", 0)) in alive:
            return alive[int(worker[b"pid"])]
    return None


def registered_workers(world: World) -> int:
    pids = {int(world.redis.hget(key, "pid") or 0) for key in world.redis.smembers("rq:workers")}
    return sum(1 for name, p in world.processes.items() if name.startswith("worker") and p.pid in pids)


def timelines_hold(world: World, tweet_ids: list[int], user_ids: list[int]) -> bool:
    """Every user's home timeline holds each tweet exactly once."""
    from fanout import timelines

    step = max(1, 5000 // len(tweet_ids))
    for i in range(0, len(user_ids), step):
        with world.redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids[i : i + step]:
                for tweet_id in tweet_ids:
                    pipe.zcount(timelines.key(user_id), tweet_id, tweet_id)
            if any(count != 1 for count in pipe.execute()):
                return False
    return True


def kill_mid_fanout(world: World, author: dict, follower_ids: list[int], attempt: int) -> dict | None:
    """One try: None if the fan-out was done before the kill landed."""
    status, _, answer = world.post(author["session"], f"kill {attempt}")
    if status != 202:
        raise RuntimeError(f"POST /api/tweets answered {status}: {answer}")
    tweet_id = answer["tweet"]["id"]
    under_way = lambda: (r := world.fanout(tweet_id))["state"] in ("running", "done") and r["delivered"] > 0  # noqa: E731
    wait_until(under_way, timeout=30, every=0.001)
    name = busy_worker(world)
    if name is None or world.fanout(tweet_id)["state"] == "done":
        wait_until(lambda: world.fanout(tweet_id)["state"] == "done", timeout=60)
        return None
    clock = CpuClock(world.pids())
    world.processes[name].kill()
    killed = time.time()
    world.processes[name].wait()
    at_kill = world.fanout(tweet_id)  # frozen now, until the relay queues it again
    if at_kill["state"] == "done":
        return None
    done = wait_until(lambda: (r := world.fanout(tweet_id))["state"] == "done" and r, timeout=120)
    other_load = others_share(clock.read(world.pids()))
    world.start_worker(name)  # back to two workers for the next try
    intact = done["delivered"] == done["recipients"] == len(follower_ids)
    intact = intact and timelines_hold(world, [tweet_id], follower_ids)
    result = {
        "followers": len(follower_ids),
        "tweet_id": tweet_id,
        "killed_at_delivered": at_kill["delivered"],
        "recipients": at_kill["recipients"],
        "lease_left_s": at_kill["lease_expires_at"] - killed,
        "requeued_s": done["enqueued_at"] - killed,
        "taken_over_s": done["started_at"] - killed,
        "done_s": done["finished_at"] - killed,
        "attempts": done["attempts"],
        "intact": intact,
        "other_load": other_load,
    }
    log(
        f"  {len(follower_ids):,} followers: killed {name} at {at_kill['delivered']:,}/{at_kill['recipients']:,} "
        f"(lease left {result['lease_left_s']:.1f} s); re-queued after {result['requeued_s']:.1f} s, taken over after "
        f"{result['taken_over_s']:.1f} s, done after {result['done_s']:.1f} s; intact: {intact}"
    )
    wait_until(lambda: registered_workers(world) == 2, timeout=60, every=0.1)
    return result


def data_loss(world: World, author: dict, follower_ids: list[int], waiting: int) -> dict:
    world.stop(*[name for name in world.processes if name.startswith("worker")])
    tweet_ids = []
    for i in range(waiting):
        status, _, answer = world.post(author["session"], f"waiting {i}")
        if status != 202:
            raise RuntimeError(f"POST /api/tweets answered {status}: {answer}")
        tweet_ids.append(answer["tweet"]["id"])
    last_enqueued = max(world.fanout(t)["enqueued_at"] for t in tweet_ids)
    clock = CpuClock(world.pids())
    world.restart_redis(lose_data=True)
    restarted = time.time()
    world.materialize([author["id"], *follower_ids])
    world.start_workers(2)
    wait_until(lambda: all(world.fanout(t)["state"] == "done" for t in tweet_ids), timeout=300, every=0.05)
    rows = [world.fanout(t) for t in tweet_ids]
    intact = all(r["delivered"] == r["recipients"] == len(follower_ids) for r in rows)
    result = {
        "waiting": waiting,
        "followers": len(follower_ids),
        "last_post_to_restart_s": restarted - last_enqueued,
        "first_requeued_s": min(r["enqueued_at"] for r in rows) - restarted,
        "last_requeued_s": max(r["enqueued_at"] for r in rows) - restarted,
        "first_done_s": min(r["finished_at"] for r in rows) - restarted,
        "done_s": max(r["finished_at"] for r in rows) - restarted,
        "intact": intact and timelines_hold(world, tweet_ids, follower_ids),
        "other_load": others_share(clock.read(world.pids())),
    }
    log(
        f"  {waiting} fan-outs lost with Redis's data, {result['last_post_to_restart_s']:.1f} s after the last post: "
        f"re-queued {result['first_requeued_s']:.1f}-{result['last_requeued_s']:.1f} s after the restart, all done "
        f"after {result['done_s']:.1f} s; intact: {result['intact']}"
    )
    return result


def docs_text(result: dict) -> str:
    m, s, loss = result["machine"], result["settings"], result["data_loss"]

    def span(values: list[float]) -> str:
        low, high = f"{min(values):.1f}", f"{max(values):.1f}"
        return f"{low} s" if low == high else f"{low}–{high} s"

    lines = [
        f"Measured {m['date']} on {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, Redis {m['redis']},"
        f" SQLite {m['sqlite']}, commit {m['git']}, with `.venv/bin/python bench/recovery.py"
        f"{' ' + ' '.join(result['argv']) if result['argv'] else ''}`; the app's settings: lease"
        f" {s['lease_s']} s, relay every {s['relay_every_s']} s, grace for queued rows {s['grace_s']:g} s, batches of"
        f" {s['batch']:,}, two workers. *Other load*: what the rest of the machine used meanwhile, as a share of"
        " both cores.",
        "",
        "| followers | kills (tries) | killed at (delivered of recipients) | lease left at the kill | kill → re-queued |"
        " kill → taken over | kill → done, median | max | other load | timelines and counts intact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sorted({k["followers"] for k in result["kills"]}):
        runs = [k for k in result["kills"] if k["followers"] == n]
        done = [k["done_s"] for k in runs]
        lines.append(
            f"| {n:,} | {len(runs)} ({result['tries'][str(n)]}) | "
            + ", ".join(f"{k['killed_at_delivered']:,}" for k in runs)
            + f" of {runs[0]['recipients']:,} | {span([k['lease_left_s'] for k in runs])} |"
            f" {span([k['requeued_s'] for k in runs])} | {span([k['taken_over_s'] for k in runs])} |"
            f" **{statistics.median(done):.1f} s** | {max(done):.1f} s |"
            f" {statistics.mean(k['other_load'] for k in runs):.0%} | {'yes' if all(k['intact'] for k in runs) else '**NO**'} |"
        )
    lines += [
        "",
        f"Redis restarted without its data {loss['last_post_to_restart_s']:.1f} s after the last of"
        f" {loss['waiting']} fan-outs ({loss['followers']} followers each) was queued: the relay queued them again"
        f" {loss['first_requeued_s']:.1f}–{loss['last_requeued_s']:.1f} s after the restart, the first was done after"
        f" {loss['first_done_s']:.1f} s and **every one `done` {loss['done_s']:.1f} s after the restart**"
        f" (other load {loss['other_load']:.0%}); every timeline holds every tweet once:"
        f" {'yes' if loss['intact'] else '**NO**'}.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--followers", type=int, nargs="+", default=[10_000, 100_000], help="sizes to kill at")
    parser.add_argument("--kills", type=int, default=5, help="measured kills per size")
    parser.add_argument("--waiting", type=int, default=100, help="fan-outs waiting when Redis loses its data")
    parser.add_argument(
        "--quiet-wait", type=float, default=30, help="before each part, wait this long at most for quiet"
    )
    parser.add_argument("--quick", action="store_true", help="10k followers, 2 kills, 20 waiting; --no-docs implied")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.followers, args.kills, args.waiting, args.no_docs = [10_000], 2, 20, True
    stop_on_sigterm()
    out = OUT_DIR / f"recovery-{stamp()}.json"
    tmp = Path(tempfile.mkdtemp(prefix="recovery-"))
    try:
        t0 = time.monotonic()
        sizes = [*args.followers, WAITING_FOLLOWERS]
        template = Template.build(tmp, authors=sizes, readers=max(sizes))
        readers = [r["id"] for r in template.people["readers"]]
        log(
            f"world: authors with {', '.join(f'{n:,}' for n in sizes)} followers, built in {time.monotonic() - t0:.0f} s"
        )
        # Admission is not what is measured here: no queue cap (M fan-outs wait at once). Every
        # author is fanned out on write: past FANOUT_ON_READ_THRESHOLD (default 5,000 followers) a
        # tweet is one write into its author's timeline, and there is no long fan-out to kill.
        env = {"FANOUT_QUEUE_CAP": "0", "FANOUT_ON_READ_THRESHOLD": "0"}
        with World(template, logs=out.with_name(f"{out.stem}-logs"), env=env) as world:
            world.start_web()
            world.start_workers(2)
            world.start_cron()
            wait_until(lambda: registered_workers(world) == 2, timeout=60, every=0.1)
            kills, tries = [], {}
            for author in template.people["authors"][:-1]:
                n = author["followers"]
                log(f"== a worker killed mid-fan-out, {n:,} followers")
                wait_for_quiet(max_wait=args.quiet_wait)
                runs, tries[str(n)] = [], 0
                while len(runs) < args.kills and tries[str(n)] < args.kills * 5:
                    tries[str(n)] += 1
                    if run := kill_mid_fanout(world, author, readers[:n], tries[str(n)]):
                        runs.append(run)
                kills += runs
            log(f"== Redis loses its data with {args.waiting} fan-outs waiting")
            wait_for_quiet(max_wait=args.quiet_wait)
            loss = data_loss(world, template.people["authors"][-1], readers[:WAITING_FOLLOWERS], args.waiting)
            result = {
                "argv": sys.argv[1:],
                "machine": machine_info(world.redis_version),
                "settings": app_settings(world),
            }
        result |= {"kills": kills, "tries": tries, "data_loss": loss}
    except KeyboardInterrupt:
        log("interrupted; everything stopped")
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out.write_text(json.dumps(result, indent=1))
    log(f"results in {out.relative_to(BASE_DIR)}")
    if not args.no_docs:
        write_docs("recovery", docs_text(result), heading="Recovery")
    ok = (
        all(k["intact"] for k in kills)
        and loss["intact"]
        and all(len([k for k in kills if k["followers"] == n]) == args.kills for n in args.followers)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
