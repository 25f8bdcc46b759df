#!/usr/bin/env python
"""Posting capacity per formation: the highest rate whose accept-to-done p99 stays under 2 s.

    .venv/bin/python bench/capacity.py          # 4 formations on SQLite and on PostgreSQL, about 25 minutes
    .venv/bin/python bench/capacity.py --formations 2x2 --rates 60 90 --duration 10 --no-docs

The world is bench/backpressure.py's (200 authors, each followed by 200 of 1,000 readers, every
home timeline in Redis, a fresh copy of the database per run), with the queue cap off and no
rate limit. For each formation (web processes x workers, web processes sharing one port as
`make run` runs them) the open-model load generator posts at each rate in turn for --duration
seconds; a rate is sustained if every accepted tweet is delivered and the accept-to-done p99 is
under 2 s. The CPU each process type spent per accepted post, at the highest sustained rate,
says where the next post's cost goes: the model in docs/capacity.md is built from these.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.backpressure import posting_template, posting_world, row_for  # noqa: E402
from bench.harness import OUT_DIR, log, machine_info, run_loadgen, stamp, write_docs  # noqa: E402

P99_LIMIT_S = 2.0
KEPT_UP = 0.95  # a rate is sustained only if the server accepted at least this share of it


def sustained(row: dict, rate: float) -> bool:
    """Every accepted tweet delivered, accept->done p99 under the limit, and the posts taken in as
    fast as they were sent (a web tier that falls behind accepts less, and its backlog is not
    in accept->done)."""
    return (
        row["lost"] == 0
        and (row["accept_to_done_p99_s"] or 99) < P99_LIMIT_S
        and row["accepted_by_server_per_s"] >= KEPT_UP * rate
    )


def cpu_per_post(row: dict) -> dict[str, float]:
    """CPU milliseconds per accepted post, by process type."""
    accepted = row["accepted_by_server_per_s"] or 1
    kinds: dict[str, float] = {}
    for name, percent in row["cpu_percent"].items():
        kind = "web" if name.startswith(("web", "daphne")) else "workers" if name.startswith("worker") else name
        kinds[kind] = kinds.get(kind, 0.0) + 10 * percent / accepted  # % of a core / posts per s -> ms
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formations", nargs="+", default=["1x1", "1x2", "2x1", "2x2"], help="WEBxWORKERS")
    parser.add_argument("--rates", type=float, nargs="+", default=[40, 60, 80, 100, 120, 140])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--authors", type=int, default=200)
    parser.add_argument("--readers", type=int, default=1000)
    parser.add_argument("--follows-per-author", type=int, default=200)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--docs-from", type=Path, metavar="DIR", help="no runs: the docs again from a finished run")
    args = parser.parse_args()
    if args.docs_from:
        return docs_again(args)
    out = OUT_DIR / f"capacity-{stamp()}"
    out.mkdir(parents=True)
    results = []
    for database in args.databases:
        tmp = Path(tempfile.mkdtemp(prefix=f"capacity-{database}-"))
        template = None
        try:
            template = posting_template(tmp, args, database)
            for formation in args.formations:
                results += measure(template, formation, database, args, out)
        finally:
            if template is not None:
                template.close()
            shutil.rmtree(tmp, ignore_errors=True)
    machine = machine_info(None)
    (out / "results.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2, default=str))
    if not args.no_docs:
        write_docs(
            "capacity", docs_text([r for r in results if "capacity" in r], machine, args), heading="Posting capacity"
        )
    log(f"results in {out}")
    return 0


def measure(template, formation: str, database: str, args, out: Path) -> list[dict]:
    """Each rate in turn until one is not sustained: the rows, then the formation's capacity."""
    web, workers = (int(n) for n in formation.split("x"))
    best, results = None, []
    for rate in args.rates:
        name = f"{database}-{formation}-{rate:g}"
        with posting_world(template, logs=out / f"{name}-logs", cap=0, web=web, workers=workers) as world:
            data, cpu = run_loadgen(
                world, out=out / f"{name}.json", duration=args.duration, rate=rate, drain_timeout=60
            )
        row = row_for(name, 0, 1.0, rate, data, cpu)
        kept_up = sustained(row, rate)
        results.append({"database": database, "formation": formation, "rate": rate, "sustained": kept_up, "row": row})
        log(
            f"{database} {formation} at {rate:g}/s: accepted {row['accepted_by_server_per_s']:.1f}/s, "
            f"accept->done p99 {row['accept_to_done_p99_s']} s, lost {row['lost']}: "
            f"{'sustained' if kept_up else 'NOT sustained'}"
        )
        if not kept_up:
            break
        best = row
    capacity = {"capacity": best["rate"], "cpu_ms_per_post": cpu_per_post(best)} if best else {"capacity": None}
    return results + [{"database": database, "formation": formation, "cpu_ms_per_post": None, **capacity}]


def docs_again(args) -> int:
    """The table again from a finished run's rows, judged by ``sustained`` as it is now."""
    saved = json.loads((args.docs_from / "results.json").read_text())
    rows = [r for r in saved["results"] if "row" in r]
    formations = []
    for key in dict.fromkeys((r["database"], r["formation"]) for r in rows):
        best = None
        for r in (r for r in rows if (r["database"], r["formation"]) == key):
            if not sustained(r["row"], r["rate"]):
                break
            best = r
        capacity = {"capacity": best["rate"], "cpu_ms_per_post": cpu_per_post(best["row"])} if best else {}
        formations.append({"database": key[0], "formation": key[1], "capacity": None, **capacity})
    args.rates = sorted({r["rate"] for r in rows})
    write_docs("capacity", docs_text(formations, saved["machine"], args), heading="Posting capacity")
    return 0


def postgres_version() -> str:
    from fanout.postgres_server import find_bin_dir

    try:
        out = subprocess.run([str(find_bin_dir() / "postgres"), "--version"], capture_output=True, text=True)
        return "PostgreSQL " + out.stdout.split()[2]  # "postgres (PostgreSQL) 15.18 (Debian ...)"
    except (OSError, SystemExit, IndexError):
        return "PostgreSQL (not found)"


def docs_text(formations: list[dict], machine: dict, args) -> str:
    kinds = ["web", "workers", "redis", "postgres", "cron", "loadgen"]
    lines = [
        f"Measured {machine['date']} on {machine['nproc']} cores ({machine['cpu_model']}), SQLite"
        f" {machine['sqlite']}, {postgres_version()}, commit {machine['git']}; {args.duration:g} s per rate,"
        f" rates {', '.join(f'{r:g}' for r in args.rates)} posts/s; the load generator shares the cores."
        " PostgreSQL's CPU counts the server and every backend.",
        "",
        "| database | web processes x workers | capacity (posts/s: accept→done p99 < 2 s, 95% of the rate accepted) | "
        + " | ".join(f"{k} CPU ms/post" for k in kinds)
        + " |",
        "|---|---|---|" + "---|" * len(kinds),
    ]
    for f in formations:
        cpu = f.get("cpu_ms_per_post") or {}
        cells = " | ".join(f"{cpu[k]:.1f}" if k in cpu else "–" for k in kinds)
        capacity = f"{f['capacity']:g}" if f["capacity"] else f"< {args.rates[0]:g}"
        lines.append(f"| {f['database']} | {f['formation']} | {capacity} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
