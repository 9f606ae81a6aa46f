#!/usr/bin/env python3
"""Report of bench/run.sh and bench/quick.sh: print the table(s), write JSON
(and Markdown) results. Python stdlib only.

    python3 bench/quick_report.py RUNS.tsv META.tsv RESULTS.json \\
        [--run-dir DIR] [--markdown RESULTS.md] [--index-budget 64]

RUNS.tsv has one line per timed op (tab-separated; the last two columns are
optional, quick.sh does not write them):
    tool op wall_s user_s sys_s max_rss_kib repo_bytes status stdout_path dataset extra_json
status is ok, failed or n/a (Baton commands not in this build). For baton,
the last line of a backup's stdout is its `backup --json` summary, kept in
the results. META.tsv has key<TAB>value lines (date, size, cache, machine,
versions...). --run-dir is where run.sh left its measurements: dataset.json
(gen_dataset.py --stats), primitives.json (baton debug primitives),
index-N.json (baton debug index-memory), datasets.tsv (scale mode).

The floor of a full backup (printed with Baton's distance to it):

    floor = max(T_read, (C_read + B / P) / n)

T_read: seconds to read every file of the dataset once, one reader, cache
dropped first when possible (find | xargs cat); C_read: the CPU seconds that
read took (mostly the kernel's: on a VM, I/O costs CPU); B: bytes of the
dataset excluding holes; P: single-core pipeline throughput of Baton's
primitives on generated data, half text-like and half random, i.e.
B' / (t_chunk + t_id + t_zstd + t_seal) for B' bytes (a core that cuts,
hashes, compresses and seals every byte); n: CPUs. It assumes reading
overlaps computing perfectly, every core is busy all the time and nothing
else (walking the tree, metadata, packing, writing the repository) costs
anything, so a real tool can get close to it but not below (unless the
dataset compresses or deduplicates unlike the generated sample). Target:
Baton's full backup within 1.25x the floor.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

MiB = 1024 * 1024
GiB = 1024 * MiB
OPS = ["full", "nochange", "incremental", "restore", "check", "prune"]
OP_LABEL = {
    "full": "full backup",
    "nochange": "no-change backup",
    "incremental": "incremental backup",
    "restore": "restore (verified)",
    "check": "check, read all data",
    "prune": "forget --keep-last 1 + prune",
}
METRICS = [  # key, header, formatter
    ("wall_s", "wall s", lambda v: f"{v:.2f}"),
    ("cpu_s", "CPU s", lambda v: f"{v:.2f}"),
    ("max_rss_kib", "peak RSS MiB", lambda v: f"{v / 1024:.1f}"),
    ("repo_bytes", "repo MiB", lambda v: f"{v / MiB:.1f}"),
]
FLOOR_TARGET = 1.25
NOISY_CORES = 0.25  # other processes' average CPU use that marks a timing as noisy


def num(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def load_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def last_json_line(path: str):
    """The JSON object on the last non-empty line of `path`, or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def load_meta(path: str) -> dict:
    meta: dict = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("\t")
            meta[key] = int(value) if value.isdigit() else value
    return meta


def load_runs(path: str) -> list[dict]:
    runs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = (line.rstrip("\n").split("\t") + [""] * 11)[:11]
            tool, op, wall, user, sys_, rss, repo, status, stdout, dataset, extra = cols
            u, s = num(user), num(sys_)
            run = {
                "tool": tool,
                "op": op,
                "dataset": dataset or "main",
                "status": status,
                "wall_s": num(wall),
                "user_s": u,
                "sys_s": s,
                "cpu_s": round(u + s, 2) if u is not None and s is not None else None,
                "max_rss_kib": num(rss),
                "repo_bytes": num(repo),
            }
            try:
                run.update(json.loads(extra) if extra else {})
            except ValueError:
                pass
            if status != "ok":  # n/a or failed: its numbers mean nothing
                for key, _, _ in METRICS:
                    run[key] = None
            if tool == "baton" and stdout and op in ("full", "nochange", "incremental"):
                run["baton_json"] = last_json_line(stdout)
            runs.append(run)
    return runs


def best_peer_ratios(runs: list[dict]) -> dict:
    """{(dataset, op): {metric: {"ratio", "peer", "peer_value"}}}: Baton's value
    over the best (lowest) value among the other tools that succeeded."""
    out: dict = {}
    for r in runs:
        if r["tool"] != "baton" or r["status"] != "ok":
            continue
        peers = [p for p in runs if p["tool"] != "baton" and p["status"] == "ok"
                 and p["op"] == r["op"] and p["dataset"] == r["dataset"]]
        ratios = {}
        for key, _, _ in METRICS:
            vals = [(p[key], p["tool"]) for p in peers if p.get(key) is not None]
            if r.get(key) is None or not vals:
                continue
            best, peer = min(vals)
            if best > 0:
                ratios[key] = {"ratio": round(r[key] / best, 3), "peer": peer, "peer_value": best}
        out[(r["dataset"], r["op"])] = ratios
    return out


def noisy(r: dict) -> bool:
    return (r.get("other_cores") or 0) > NOISY_CORES or (r.get("steal_cores") or 0) > 0.1


# ---------------------------------------------------------------------------
# the ops table
# ---------------------------------------------------------------------------

def ops_table(runs: list[dict], ratios: dict, tools: list[str], dataset: str, md: bool) -> list[str]:
    """One row per (op, tool), and a "Baton / best peer" row per op."""
    sel = [r for r in runs if r["dataset"] == dataset and r["op"] in OPS]
    ops = [op for op in OPS if any(r["op"] == op for r in sel)]
    order = {t: i for i, t in enumerate(tools)}
    lines: list[str] = []
    heads = ["operation", "tool"] + [h for _, h, _ in METRICS]
    if md:
        lines.append("| " + " | ".join(heads) + " |")
        lines.append("|---|---|" + "---:|" * len(METRICS))
    else:
        lines.append(f"{heads[0]:<29} {heads[1]:<20}" + "".join(f"{h:>14}" for h in heads[2:]))
        lines.append("-" * (50 + 14 * len(METRICS)))
    for op in ops:
        rows = sorted((r for r in sel if r["op"] == op), key=lambda r: order.get(r["tool"], 99))
        for i, r in enumerate(rows):
            if r["status"] == "ok":
                cells = [fmt(r[k]) if r.get(k) is not None else "-" for k, _, fmt in METRICS]
                if noisy(r):
                    cells[0] += "*"
                if r.get("verified") is False:
                    cells[0] += " (DIFFERS)"
            else:
                cells = ["n/a" if r["status"] == "n/a" else "FAILED"] + [""] * (len(METRICS) - 1)
            label = OP_LABEL.get(op, op) if i == 0 else ""
            lines.append(row(md, label, r["tool"], cells))
        if "baton" in tools and len(tools) > 1:
            rat = ratios.get((dataset, op))
            if rat is None:
                cells = ["-"] * len(METRICS)
            else:
                cells = [f"{rat[k]['ratio']:.2f}x {rat[k]['peer']}" if k in rat else "-" for k, _, _ in METRICS]
            lines.append(row(md, "", "baton / best peer", cells, bold=md))
    return lines


def row(md: bool, op: str, tool: str, cells: list[str], bold: bool = False) -> str:
    if md:
        if bold:
            tool, cells = f"*{tool}*", [f"*{c}*" if c not in ("", "-") else c for c in cells]
        return "| " + " | ".join([op, tool] + cells) + " |"
    return f"{op:<29} {tool:<20}" + "".join(f"{c:>14}" for c in cells)


# ---------------------------------------------------------------------------
# machine limits and the floor
# ---------------------------------------------------------------------------

def limits(meta: dict, run_dir: str | None, runs: list[dict], budget: float) -> dict:
    out: dict = {}
    ds = load_json(os.path.join(run_dir, "dataset.json")) if run_dir else None
    prim = load_json(os.path.join(run_dir, "primitives.json")) if run_dir else None
    if ds:
        out["dataset"] = ds
    if prim:
        out["primitives"] = prim
    read_s = num(meta.get("read_s_dataset"))
    read_cpu = num(meta.get("read_cpu_s_dataset")) or 0.0
    if read_s and ds:
        out["read"] = {
            "seconds": read_s,
            "cpu_s": read_cpu,
            "bytes": ds["bytes_apparent"],
            "mib_s": round(ds["bytes_apparent"] / MiB / read_s, 1),
            "cache": meta.get("cache"),
            "how": "find DIR -type f -print0 | xargs -0 cat >/dev/null, one reader",
        }
    cpus = int(meta.get("host_cpus") or os.cpu_count() or 1)
    def floor_of(t_read: float, c_read: float) -> tuple[float, float]:
        """(CPU-bound time, floor) = ((C_read + B / P) / n, max(T_read, that))."""
        cpu = (c_read + ds["bytes_data"] / MiB / prim["pipeline_mib_s"]) / cpus
        return cpu, max(t_read, cpu)

    if prim and ds and read_s:
        p = prim["pipeline_mib_s"]
        cpu_s, floor = floor_of(read_s, read_cpu)
        out["floor"] = {
            "formula": "max(T_read, (C_read + B / P) / n)",
            "T_read_s": read_s,
            "C_read_s": read_cpu,
            "B_bytes": ds["bytes_data"],
            "P_mib_s_per_core": p,
            "n_cpus": cpus,
            "cpu_s": round(cpu_s, 2),
            "floor_s": round(floor, 2),
            "bound_by": "read" if read_s >= cpu_s else "cpu",
            "target": FLOOR_TARGET,
        }
        for r in runs:
            if r["op"] == "full" and r["status"] == "ok" and r["dataset"] == "main":
                out["floor"][f"{r['tool']}_full_s"] = r["wall_s"]
                out["floor"][f"{r['tool']}_x_floor"] = round(r["wall_s"] / floor, 2)
        # A stricter floor: the disk read by 8 readers at once (as Baton's
        # read-ahead does), usually faster than one reader.
        par_s = num(meta.get("read_s_dataset_par"))
        par_cpu = num(meta.get("read_cpu_s_dataset_par")) or read_cpu
        if par_s:
            cpu_par, strict = floor_of(par_s, par_cpu)
            out["floor_parallel"] = {
                "formula": "max(T_read8, (C_read8 + B / P) / n)",
                "T_read_s": par_s,
                "C_read_s": par_cpu,
                "cpu_s": round(cpu_par, 2),
                "floor_s": round(strict, 2),
                "bound_by": "read" if par_s >= cpu_par else "cpu",
            }
            for r in runs:
                if r["op"] == "full" and r["status"] == "ok" and r["dataset"] == "main":
                    out["floor_parallel"][f"{r['tool']}_x_floor"] = round(r["wall_s"] / strict, 2)
    idx = []
    for path in sorted(glob.glob(os.path.join(run_dir, "index-*.json")) if run_dir else []):
        j = load_json(path)
        if j:
            j["budget_bytes_per_chunk"] = budget
            j["within_budget"] = j["peak_bytes_per_chunk"] <= budget
            idx.append(j)
    idx.sort(key=lambda j: j["chunks"])
    if idx:
        out["index_memory"] = idx
    return out


def limits_lines(lim: dict, meta: dict, tools: list[str]) -> list[str]:
    lines: list[str] = []
    prim = lim.get("primitives")
    if prim:
        m = prim["samples"]["mix"]
        lines.append(
            f"Baton's primitives, one core, MiB/s of input ({prim['mib']} MiB, half text-like, half random; "
            f"best of {prim['repeat']}): chunking {m['chunking_mib_s']:.0f}, keyed BLAKE3 {m['blake3_keyed_mib_s']:.0f}, "
            f"zstd -{prim['zstd_level']} {m['zstd_mib_s']:.0f} (text {prim['samples']['text']['zstd_mib_s']:.0f}, "
            f"random {prim['samples']['random']['zstd_mib_s']:.0f}), XChaCha20-Poly1305 {m['seal_mib_s']:.0f} "
            f"=> pipeline {m['pipeline_mib_s']:.1f} MiB/s per core"
        )
    rd = lim.get("read")
    if rd:
        lines.append(
            f"Sequential read of the dataset ({rd['cache']} cache, one reader): {rd['bytes'] / GiB:.2f} GiB "
            f"in {rd['seconds']:.1f} s = {rd['mib_s']:.0f} MiB/s, using {rd['cpu_s']:.1f} CPU s"
        )
    fl = lim.get("floor")
    if fl:
        lines.append(
            f"Floor of a full backup = max(T_read {fl['T_read_s']:.1f} s, (C_read {fl['C_read_s']:.1f} s + "
            f"B {fl['B_bytes'] / GiB:.2f} GiB / P {fl['P_mib_s_per_core']:.1f} MiB/s) / {fl['n_cpus']} CPUs "
            f"= {fl['cpu_s']:.1f} s) = {fl['floor_s']:.1f} s ({fl['bound_by']}-bound)"
        )
        parts = []
        for t in tools:
            if f"{t}_x_floor" in fl:
                parts.append(f"{t} {fl[f'{t}_full_s']:.1f} s = {fl[f'{t}_x_floor']:.2f}x")
        if parts:
            verdict = ""
            if "baton_x_floor" in fl:
                verdict = " (Baton within target)" if fl["baton_x_floor"] <= FLOOR_TARGET else " (Baton over target)"
            lines.append(f"Full backup vs the floor (target: Baton <= {FLOOR_TARGET}x): " + ", ".join(parts) + verdict)
    fp = lim.get("floor_parallel")
    if fp:
        parts = [f"{t} {fp[f'{t}_x_floor']:.2f}x" for t in tools if f"{t}_x_floor" in fp]
        lines.append(
            f"Stricter floor, reading with 8 readers (T_read8 {fp['T_read_s']:.1f} s, C_read8 "
            f"{fp['C_read_s']:.1f} s): max(T_read8, (C_read8 + B / P) / n = {fp['cpu_s']:.1f} s) = "
            f"{fp['floor_s']:.1f} s ({fp['bound_by']}-bound); full backup vs it: " + ", ".join(parts)
        )
    for j in lim.get("index_memory", []):
        lines.append(
            f"Index of {j['chunks']:,} synthetic chunks: {j['index_rss_bytes'] / MiB:.0f} MiB resident = "
            f"{j['bytes_per_chunk']:.0f} B/chunk, peak {j['index_peak_bytes'] / MiB:.0f} MiB = "
            f"{j['peak_bytes_per_chunk']:.0f} B/chunk (budget {j['budget_bytes_per_chunk']:.0f} B/chunk: "
            f"{'within' if j['within_budget'] else 'OVER'}); look-up {j['lookup_hit_ns']:.0f} ns present, "
            f"{j['lookup_miss_ns']:.0f} ns absent"
        )
    return lines


# ---------------------------------------------------------------------------
# scale mode
# ---------------------------------------------------------------------------

def load_datasets(run_dir: str | None) -> dict:
    """datasets.tsv of scale mode: {name: {"x": "bytes"|"files", **stats}}."""
    out: dict = {}
    path = os.path.join(run_dir, "datasets.tsv") if run_dir else ""
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            _, name, x, stats = line.rstrip("\n").split("\t", 3)
            out[name] = dict(json.loads(stats), x=x)
    return out


def exponent(x1: float, y1: float, x2: float, y2: float) -> float | None:
    if min(x1, x2, y1, y2) <= 0 or x1 == x2:
        return None
    return round(math.log(y2 / y1) / math.log(x2 / x1), 2)


def scale_report(runs: list[dict], datasets: dict, tools: list[str], md: bool) -> tuple[list[str], list[dict]]:
    lines: list[str] = []
    heads = ["dataset", "files", "GiB", "tool", "op", "wall s", "CPU s", "peak RSS MiB", "repo MiB", "s/GiB", "us/file"]
    if md:
        lines += ["| " + " | ".join(heads) + " |", "|---|---:|---:|---|---|" + "---:|" * 6]
    else:
        lines.append(f"{'dataset':<16}{'files':>9}{'GiB':>7} {'tool':<7} {'op':<9}" + "".join(f"{h:>13}" for h in heads[5:]))
    order = {t: i for i, t in enumerate(tools)}
    for name, ds in datasets.items():
        for r in sorted((r for r in runs if r["dataset"] == name), key=lambda r: (order.get(r["tool"], 99), OPS.index(r["op"]) if r["op"] in OPS else 9)):
            gib = ds["bytes_apparent"] / GiB
            if r["status"] == "ok":
                cells = [fmt(r[k]) for k, _, fmt in METRICS]
                if noisy(r):
                    cells[0] += "*"
                cells += [f"{r['wall_s'] / gib:.2f}", f"{r['wall_s'] * 1e6 / ds['files']:.1f}"]
            else:
                cells = [r["status"].upper()] + [""] * 5
            if md:
                lines.append("| " + " | ".join([name, f"{ds['files']:,}", f"{gib:.2f}", r["tool"], r["op"]] + cells) + " |")
            else:
                lines.append(f"{name:<16}{ds['files']:>9}{gib:>7.2f} {r['tool']:<7} {r['op']:<9}" + "".join(f"{c:>13}" for c in cells))
    # exponents between the smallest and the largest dataset of each kind
    exps: list[dict] = []
    for kind, xkey in (("mixed", "bytes_apparent"), ("small", "files")):
        names = [n for n in datasets if n.startswith(kind + "-")]
        if len(names) < 2:
            continue
        names.sort(key=lambda n: datasets[n][xkey])
        a, b = names[0], names[-1]
        xa, xb = datasets[a][xkey], datasets[b][xkey]
        for t in tools:
            for op in ("full", "nochange"):
                ra = next((r for r in runs if (r["dataset"], r["tool"], r["op"], r["status"]) == (a, t, op, "ok")), None)
                rb = next((r for r in runs if (r["dataset"], r["tool"], r["op"], r["status"]) == (b, t, op, "ok")), None)
                if not ra or not rb:
                    continue
                exps.append({
                    "kind": kind, "x": "bytes" if kind == "mixed" else "files", "from": a, "to": b,
                    "x_ratio": round(xb / xa, 2), "tool": t, "op": op,
                    "b_wall": exponent(xa, ra["wall_s"], xb, rb["wall_s"]),
                    "b_cpu": exponent(xa, ra["cpu_s"], xb, rb["cpu_s"]),
                    "b_rss": exponent(xa, ra["max_rss_kib"], xb, rb["max_rss_kib"]),
                    "b_repo": exponent(xa, ra["repo_bytes"], xb, rb["repo_bytes"]),
                })
    if exps:
        lines.append("")
        lines.append("Exponent b in cost ~ size^b (1 = linear; wall and CPU time, peak RSS, repository size):")
        if md:
            lines += ["", "| datasets | size ratio | tool | op | b wall | b CPU | b RSS | b repo |", "|---|---:|---|---|---:|---:|---:|---:|"]
        for e in exps:
            vals = [("-" if e[k] is None else f"{e[k]:.2f}") for k in ("b_wall", "b_cpu", "b_rss", "b_repo")]
            if md:
                lines.append(f"| {e['from']} -> {e['to']} | {e['x_ratio']}x {e['x']} | {e['tool']} | {e['op']} | " + " | ".join(vals) + " |")
            else:
                lines.append(f"  {e['from'] + ' -> ' + e['to']:<30} x{e['x_ratio']:<6} {e['tool']:<7} {e['op']:<9} "
                             f"wall {vals[0]:>5}  CPU {vals[1]:>5}  RSS {vals[2]:>5}  repo {vals[3]:>5}")
    return lines, exps


# ---------------------------------------------------------------------------

def header_lines(meta: dict, lim: dict, md: bool) -> list[str]:
    cache = meta.get("cache")
    cache_text = "cold cache (page cache dropped before each op)" if cache == "cold" else "warm cache (page cache could not be dropped)"
    parts = [
        str(meta.get("cpu_model") or ""),
        f"{meta['host_cpus']} CPUs" if meta.get("host_cpus") else "",
        f"{int(meta['host_mem_kib']) / 1024 / 1024:.1f} GiB RAM" if meta.get("host_mem_kib") else "",
        f"Linux {meta['kernel']}" if meta.get("kernel") else "",
        str(meta["virt"]) if meta.get("virt") not in (None, "", "none", "unknown") else "",
        str(meta.get("os") or ""),
    ]
    machine = ", ".join(p for p in parts if p) or "unknown machine"
    lines = [f"{str(meta.get('date', '?'))[:16].replace('T', ' ')} on {machine}; {cache_text}"]
    ds = lim.get("dataset")
    if ds:
        lines.append(
            f"dataset: {ds['files']:,} files in {ds['dirs']:,} directories, {ds['bytes_apparent'] / GiB:.2f} GiB "
            f"({ds['bytes_data'] / GiB:.2f} GiB excluding holes); --size {meta.get('size')} --seed {meta.get('seed')}, "
            f"incremental after mutating {meta.get('mutate_pct', 1)}% of the files"
        )
    elif meta.get("data_files"):  # quick.sh
        lines.append(f"dataset: {meta.get('data_files')} files, {int(meta.get('data_bytes_apparent', 0)) / MiB:.0f} MiB "
                     f"(size {meta.get('size')}, seed {meta.get('seed')})")
    versions = [str(meta[k]) for k in sorted(meta) if k.startswith("version_")]
    if versions:
        lines.append("versions: " + "; ".join(versions) + (f" (baton at {meta['baton_commit']})" if meta.get("baton_commit") else ""))
    if md:
        lines = [line + "  " for line in lines]
    return lines


def footnotes(runs: list[dict], meta: dict) -> list[str]:
    notes = []
    for v in ("v1", "v2"):
        prints = {k.rsplit("_", 1)[1]: val for k, val in meta.items() if k.startswith(f"fingerprint_{v}_")}
        if len(set(prints.values())) > 1:
            notes.append(f"UNFAIR: the tools saw different data ({v} fingerprints of names, sizes, mtimes: {prints})")
    n = [r for r in runs if r["status"] == "ok" and noisy(r)]
    if n:
        worst = max(max(r.get("other_cores") or 0, r.get("steal_cores") or 0) for r in n)
        notes.append(f"* noisy: other processes (or the hypervisor) used up to {worst:.2f} cores on average meanwhile")
    for r in runs:
        if r["op"] == "restore" and r["status"] == "ok":
            src, dst = r.get("source_allocated"), r.get("restored_allocated")
            if r.get("verified") is False:
                notes.append(f"{r['tool']}: the restored tree DIFFERS from the source (see the run's logs)")
            if src and dst and dst > src * 1.05:
                notes.append(f"{r['tool']} restore: {dst / MiB:.0f} MiB allocated on disk vs {src / MiB:.0f} MiB for the "
                             f"source (holes of the sparse disk image written as data)")
    if any(r["status"] == "n/a" for r in runs):
        notes.append("n/a: the command is not in this Baton build yet (it exited with a usage error)")
    return notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs")
    ap.add_argument("meta")
    ap.add_argument("results")
    ap.add_argument("--run-dir")
    ap.add_argument("--markdown", metavar="FILE")
    ap.add_argument("--index-budget", type=float, default=64.0, metavar="BYTES",
                    help="memory budget of the index per chunk, peak (default 64: 10M chunks in 640 MB)")
    args = ap.parse_args()

    meta = load_meta(args.meta)
    runs = load_runs(args.runs)
    tools = str(meta.get("tools", "")).split() or sorted({r["tool"] for r in runs})
    ratios = best_peer_ratios(runs)
    lim = limits(meta, args.run_dir, runs, args.index_budget)
    scale = meta.get("mode") == "scale"

    text: list[str] = [""] + header_lines(meta, lim, md=False) + [""]
    mdl: list[str] = header_lines(meta, lim, md=True) + [""]
    result: dict = {"meta": meta, "runs": runs, "limits": lim}
    if scale:
        datasets = load_datasets(args.run_dir)
        t, exps = scale_report(runs, datasets, tools, md=False)
        m, _ = scale_report(runs, datasets, tools, md=True)
        text += t
        mdl += m
        result["datasets"] = datasets
        result["exponents"] = exps
    else:
        text += ops_table(runs, ratios, tools, "main", md=False)
        mdl += ops_table(runs, ratios, tools, "main", md=True)
        result["ratios_to_best_peer"] = {op: v for (ds, op), v in ratios.items() if ds == "main"}
    notes = footnotes(runs, meta)
    if notes:
        text += [""] + notes
        mdl += [""] + [n + "  " for n in notes]
    ll = limits_lines(lim, meta, tools)
    if ll:
        text += [""] + ll
        mdl += [""] + [f"- {line}" for line in ll]

    print("\n".join(text))
    with open(args.results, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"\nresults: {args.results}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n".join(mdl) + "\n")
        print(f"markdown: {args.markdown}")
    return 1 if any(r["status"] == "failed" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
