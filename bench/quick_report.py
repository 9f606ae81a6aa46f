#!/usr/bin/env python3
"""Print quick.sh's results table and write them as JSON (stdlib only).

    python3 bench/quick_report.py RUNS.tsv META.tsv RESULTS.json

RUNS.tsv has one line per timed run:
    tool  op  wall_s  user_s  sys_s  max_rss_kib  repo_bytes  status  stdout_path
META.tsv has key<TAB>value lines about the run (date, size, cache, versions...).
For baton, the last line of a run's stdout is its `backup --json` summary,
which is kept in the JSON results.
"""

from __future__ import annotations

import json
import sys

MiB = 1024 * 1024
OPS = ["full", "nochange"]


def num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def last_json_line(path: str):
    """The JSON object on the last non-empty line of `path`, or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def main() -> int:
    runs_path, meta_path, out_path = sys.argv[1:4]
    meta: dict = {}
    with open(meta_path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("\t")
            meta[key] = int(value) if value.isdigit() else value

    runs = []
    with open(runs_path, encoding="utf-8") as f:
        for line in f:
            tool, op, wall, user, sys_, rss, repo, status, stdout = (line.rstrip("\n").split("\t") + [""] * 9)[:9]
            run = {
                "tool": tool,
                "op": op,
                "status": status,
                "wall_s": num(wall),
                "user_s": num(user),
                "sys_s": num(sys_),
                "cpu_s": round(num(user) + num(sys_), 2) if num(user) is not None and num(sys_) is not None else None,
                "max_rss_kib": num(rss),
                "repo_bytes": num(repo),
            }
            if tool == "baton" and stdout:
                run["baton_json"] = last_json_line(stdout)
            runs.append(run)

    # baton's wall time relative to restic's, per operation
    restic_wall = {r["op"]: r["wall_s"] for r in runs if r["tool"] == "restic" and r["status"] == "ok"}
    for r in runs:
        if r["tool"] == "baton" and r["status"] == "ok" and restic_wall.get(r["op"]):
            r["wall_vs_restic"] = round(r["wall_s"] / restic_wall[r["op"]], 3)

    # ---- table ----
    print()
    print(
        f"dataset: {meta.get('data_files')} files, {meta.get('data_bytes_apparent', 0) / MiB:.0f} MiB "
        f"(size {meta.get('size')}, seed {meta.get('seed')}); "
        f"{'cold cache (dropped before each run)' if meta.get('cache') == 'cold' else 'warm cache'}"
    )
    header = f"{'operation':<10} {'tool':<7} {'wall s':>8} {'cpu s':>8} {'peak RSS MiB':>13} {'repo MiB':>9} {'wall vs restic':>15}"
    print(header)
    print("-" * len(header))
    order = {t: i for i, t in enumerate(str(meta.get("tools", "")).split())}
    for r in sorted(runs, key=lambda r: (OPS.index(r["op"]) if r["op"] in OPS else -1, order.get(r["tool"], 99))):
        if r["status"] != "ok":
            print(f"{r['op']:<10} {r['tool']:<7} {'FAILED':>8}")
            continue
        ratio = f"{r['wall_vs_restic']:.2f}x" if "wall_vs_restic" in r else ("1.00x" if r["tool"] == "restic" else "-")
        print(
            f"{r['op']:<10} {r['tool']:<7} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} "
            f"{r['max_rss_kib'] / 1024:>13.1f} {r['repo_bytes'] / MiB:>9.1f} {ratio:>15}"
        )
    print()
    for key in sorted(k for k in meta if k.startswith("version_")):
        print(f"{key[8:]}: {meta[key]}")

    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=2)
        f.write("\n")
    print(f"results: {out_path}")
    return 1 if any(r["status"] != "ok" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
