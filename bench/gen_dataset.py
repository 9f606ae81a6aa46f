#!/usr/bin/env python3
"""Deterministic benchmark dataset generator for Baton (stdlib only).

Generate a tree:

    python3 bench/gen_dataset.py --seed 1 --size 2G OUTDIR

The same --seed and --size always give a byte-identical tree (file contents,
names and mtimes), given the same Python minor version (random.Random's
algorithms are only stable within one).  Composition, as shares of --size:

    src/       ~40%  small source-like text files (1-20 KiB, uniform), in a
                     nested directory tree; about 38k files per GiB
    medium/    ~20%  a few hundred files (about 150 per GiB), 64 KiB-8 MiB:
                     logs/ (log-like text), blobs/ (random bytes, as if
                     already compressed), db/ (8 KiB pages with mostly
                     repeated structure)
    large/     ~25%  incompressible files of 64-256 MiB (scaled down in
                     proportion below --size 1G)
    versions/  ~10%  groups of three large files, each version derived from
                     the previous one by overwriting, inserting and deleting
                     regions, so they share most of their blocks
    disk/      ~10%  (apparent) a sparse disk image, only ~20% allocated

With zstd -3, one file at a time: source text ~2.3x, logs ~4x, db pages
~9x; blobs, large files, versions and disk-image extents are random bytes.

Mutate an existing tree (for incremental backups):

    python3 bench/gen_dataset.py --seed 2 --mutate 1 OUTDIR

touches about PCT% of the files of each kind: edits a few bytes in place in
large files (size unchanged), inserts bytes in the middle of medium files,
appends to some small files, deletes some small files and adds new ones.
The result depends only on the existing tree, --seed and PCT; every file
and directory it touches gets the same fixed mtime (2024-01-02), so a
mutated copy is identical for every tool that backs it up.

Only small files (the many-small-files dataset of `bench/run.sh --scale`):

    python3 bench/gen_dataset.py --seed 1 --small-only 500000 OUTDIR

N source-like files of 256 B-8 KiB (~4.1 KiB on average: 500k files are
~2 GiB), ~30 per directory in a nested tree.

Counts and sizes of an existing tree, as one JSON line (bytes_data leaves
out the holes of sparse files):

    python3 bench/gen_dataset.py --stats OUTDIR

Every mode ends by printing one line (a summary, or the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import struct
import sys
import time

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

BLOCK = 8 * MiB  # write random data in blocks of this size
BASE_MTIME = 1_704_067_200  # 2024-01-01T00:00:00Z: fixed mtimes => reproducible metadata
MUTATE_MTIME = BASE_MTIME + 86400  # mtime of everything --mutate touches (later than any original)
REFERENCE_SIZE = 1 * GiB  # from this --size up, "large" files are 64-256 MiB


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """'2G', '50M', '1.5GiB', '4096' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 500M, 2G)")
    mult = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def sub_rng(seed: int, name: str) -> random.Random:
    """An independent, deterministic stream per component (str seeds hash with SHA-512)."""
    return random.Random(f"baton-bench:{seed}:{name}")


def split_budget(rng: random.Random, total: int, count: int, lo: int, hi: int) -> list[int]:
    """`count` sizes, log-uniformly spread in [lo, hi], rescaled to add up to `total`."""
    raw = [lo * (hi / lo) ** rng.random() for _ in range(count)]
    scale = total / sum(raw)
    sizes = [max(1, int(r * scale)) for r in raw]
    sizes[-1] += total - sum(sizes)
    return sizes


def write_random(f, rng: random.Random, n: int) -> None:
    """Write n pseudo-random (incompressible) bytes in big blocks."""
    while n > 0:
        k = min(n, BLOCK)
        f.write(rng.randbytes(k))
        n -= k


class Stats:
    def __init__(self) -> None:
        self.files = 0
        self.apparent = 0

    def add(self, path: str) -> None:
        self.files += 1
        self.apparent += os.path.getsize(path)


# --------------------------------------------------------------------------
# text: a Zipf-weighted vocabulary of made-up words, built into lines
# --------------------------------------------------------------------------

KEYWORDS = [
    "fn", "let", "mut", "pub", "struct", "impl", "return", "if", "else", "for",
    "while", "match", "use", "mod", "self", "def", "class", "import", "from",
    "const", "static", "void", "int", "char", "true", "false", "None", "null",
]
TYPES = ["u8", "u32", "u64", "usize", "i64", "bool", "String", "Vec<u8>", "Option<T>", "&str"]
EXTS = [".rs", ".rs", ".py", ".c", ".h", ".go", ".js", ".md", ".toml", ".txt"]


def make_vocab(rng: random.Random, n: int = 3000) -> tuple[list[str], list[float]]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    lweights = [26 - i for i in range(26)]
    words = set(KEYWORDS)
    while len(words) < n:
        k = rng.randint(2, 11)
        words.add("".join(rng.choices(letters, weights=lweights, k=k)))
    vocab = sorted(words)
    rng.shuffle(vocab)
    # Zipf-like word frequencies, as cumulative weights (choices() is O(k log n) with
    # cum_weights, but O(n) per call with plain weights).
    cum, acc = [], 0.0
    for i in range(len(vocab)):
        acc += 1.0 / (i + 1) ** 0.9
        cum.append(acc)
    return vocab, cum


def make_code_lines(rng: random.Random, vocab, cumw, n: int) -> list[str]:
    """A pool of source-like lines; files are built by sampling it."""

    def w(k: int = 1) -> list[str]:
        return rng.choices(vocab, cum_weights=cumw, k=k)

    templates = [
        lambda: f"    let {w()[0]} = {w()[0]}.{w()[0]}({w()[0]}, {rng.randint(0, 4096)});",
        lambda: f"    let mut {w()[0]}_{w()[0]}: {rng.choice(TYPES)} = {w()[0]}::{w()[0]}();",
        lambda: f"pub fn {'_'.join(w(2))}({w()[0]}: {rng.choice(TYPES)}) -> {rng.choice(TYPES)} {{",
        lambda: f"        if {w()[0]} > {rng.randint(0, 99)} {{ return {w()[0]}; }}",
        lambda: "    // " + " ".join(w(rng.randint(3, 12))),
        lambda: "/// " + " ".join(w(rng.randint(4, 14))) + ".",
        lambda: f"    {w()[0]}.{w()[0]}(&{w()[0]}[{rng.randint(0, 63)}..]);",
        lambda: f"use crate::{w()[0]}::{{{', '.join(w(rng.randint(1, 4)))}}};",
        lambda: f"        {w()[0]} => {w()[0]}({rng.randint(0, 0xFFFF):#06x}),",
        lambda: f'    println!("{" ".join(w(rng.randint(2, 6)))} {{}}", {w()[0]});',
        lambda: "    }",
        lambda: "}",
        lambda: "",
    ]
    tweights = [10, 6, 4, 5, 6, 4, 5, 2, 3, 3, 6, 3, 5]
    return [rng.choices(templates, weights=tweights)[0]() for _ in range(n)]


LICENSE_HEADER = (
    "// Copyright (c) The Example Project Authors. All rights reserved.\n"
    "// SPDX-License-Identifier: Apache-2.0\n\n"
)


def text_blob(rng: random.Random, lines: list[str], size: int, header: str = LICENSE_HEADER) -> bytes:
    """About `size` bytes of text made of random lines from the pool, cut to exactly `size`."""
    n = size // 30 + 8  # lines average ~35 bytes; take a few too many
    data = (header + "\n".join(rng.choices(lines, k=n)) + "\n").encode()
    while len(data) < size:  # rare: pool lines came out short
        data += ("\n".join(rng.choices(lines, k=n)) + "\n").encode()
    return data[:size]


# --------------------------------------------------------------------------
# generate: one function per component
# --------------------------------------------------------------------------

def gen_small(out: str, seed: int, budget: int, vocab, cumw, stats: Stats, count: int = 0) -> None:
    """Source-like files of 1-20 KiB up to `budget` bytes; or, with `count`,
    exactly `count` files of 256 B-8 KiB (the many-small-files dataset)."""
    rng = sub_rng(seed, "small" if not count else "small-only")
    lines = make_code_lines(rng, vocab, cumw, 60_000)
    sizes: list[int] = []
    if count:
        sizes = [rng.randint(256, 8 * KiB) for _ in range(count)]
    else:
        total = 0
        while total < budget:
            sizes.append(rng.randint(1 * KiB, 20 * KiB))
            total += sizes[-1]
        sizes[-1] = max(1 * KiB, sizes[-1] - (total - budget))

    # A nested tree: up to 8 top-level directories, then each new directory
    # hangs under a uniformly chosen existing one (max depth 7); files are
    # spread uniformly over the directories, ~30 per directory.
    root = os.path.join(out, "src")
    dirs = [(root, 0)]
    ndirs = max(1, len(sizes) // 30)
    used: set[str] = set()
    while len(dirs) < ndirs:
        parent, depth = dirs[0] if len(dirs) <= 8 else rng.choice(dirs)
        if depth >= 7:
            continue
        path = os.path.join(parent, rng.choices(vocab, cum_weights=cumw)[0])
        if path not in used:
            used.add(path)
            dirs.append((path, depth + 1))
    for d, _ in dirs:
        os.makedirs(d, exist_ok=True)

    for size in sizes:
        d = dirs[rng.randrange(len(dirs))][0]
        while True:
            stem = "_".join(rng.choices(vocab, cum_weights=cumw, k=2))
            path = os.path.join(d, stem + rng.choice(EXTS))
            if path not in used:
                used.add(path)
                break
        with open(path, "wb") as f:
            f.write(text_blob(rng, lines, size))
        stats.add(path)


LOG_LEVELS = ["INFO"] * 12 + ["DEBUG"] * 6 + ["WARN"] * 2 + ["ERROR"]


def log_blob(rng: random.Random, vocab, cumw, size: int, t0: float) -> bytes:
    """Log-like lines: increasing timestamps, a handful of message templates."""
    msgs = [" ".join(rng.choices(vocab, cum_weights=cumw, k=rng.randint(3, 9))) for _ in range(4000)]
    comps = [rng.choice(vocab) for _ in range(12)]
    parts: list[str] = []
    n = 0
    t = t0
    while n < size:
        t += rng.expovariate(20.0)
        secs = int(t)
        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(secs))}.{int((t - secs) * 1000):03d}Z "
            f"{rng.choice(LOG_LEVELS):5} [{rng.choice(comps)}-{rng.randint(0, 7)}] "
            f"{rng.choice(msgs)} id={rng.getrandbits(32):08x} took={rng.randint(0, 2500)}ms\n"
        )
        parts.append(line)
        n += len(line)
    return "".join(parts).encode()[:size]


def db_blob(rng: random.Random, vocab, size: int) -> bytes:
    """8 KiB pages of a made-up database: a shared template of 64-byte rows with
    a page header and a few randomised fields per page."""
    page = 8 * KiB
    tmpl = bytearray()
    cols = [rng.choice(vocab).encode()[:12].ljust(12, b"\0") for _ in range(4)]
    while len(tmpl) < page:
        tmpl += (b"".join(cols) + struct.pack("<IIQ", 0, 0, 0)).ljust(64, b"\0")
    tmpl = tmpl[:page]
    out = bytearray()
    pageno = 0
    while len(out) < size:
        p = bytearray(tmpl)
        struct.pack_into("<IIQ", p, 0, 0xDBDB0001, pageno, rng.getrandbits(64))  # header
        for _ in range(rng.randint(32, 96)):  # some live rows with real values
            off = 64 * rng.randrange(1, page // 64)
            p[off + 48 : off + 64] = rng.randbytes(16)
        out += p
        pageno += 1
    return bytes(out[:size])


def gen_medium(out: str, seed: int, budget: int, total: int, vocab, cumw, stats: Stats) -> None:
    rng = sub_rng(seed, "medium")
    count = max(6, round(150 * total / GiB))
    sizes = split_budget(rng, budget, count, 64 * KiB, 8 * MiB)
    kinds = ["log", "blob", "db"]
    for d in ("logs", "blobs", "db"):
        os.makedirs(os.path.join(out, "medium", d), exist_ok=True)
    for i, size in enumerate(sizes):
        kind = kinds[i % 3]
        if kind == "log":
            path = os.path.join(out, "medium", "logs", f"{rng.choice(vocab)}-{i:04d}.log")
            data = log_blob(rng, vocab, cumw, size, BASE_MTIME - 86400 * rng.randint(1, 400))
        elif kind == "blob":
            ext = rng.choice([".gz", ".jpg", ".zst", ".png", ".mp4"])
            path = os.path.join(out, "medium", "blobs", f"{rng.choice(vocab)}-{i:04d}{ext}")
            data = None
        else:
            path = os.path.join(out, "medium", "db", f"{rng.choice(vocab)}-{i:04d}.db")
            data = db_blob(rng, vocab, size)
        with open(path, "wb") as f:
            if data is None:
                write_random(f, rng, size)
            else:
                f.write(data)
        stats.add(path)


def large_range(total: int) -> tuple[int, int]:
    """64-256 MiB, scaled down proportionally for datasets under 1 GiB."""
    f = min(1.0, total / REFERENCE_SIZE)
    return max(256 * KiB, int(64 * MiB * f)), max(1 * MiB, int(256 * MiB * f))


def gen_large(out: str, seed: int, budget: int, total: int, stats: Stats) -> None:
    rng = sub_rng(seed, "large")
    lo, hi = large_range(total)
    sizes: list[int] = []
    while sum(sizes) < budget:
        sizes.append(rng.randint(lo, hi))
    excess = sum(sizes) - budget
    if sizes[-1] - excess < lo and len(sizes) > 1:  # fold a short tail into its neighbour
        tail = sizes.pop()
        sizes[-1] += tail - excess
    else:
        sizes[-1] -= excess
    os.makedirs(os.path.join(out, "large"), exist_ok=True)
    for i, size in enumerate(sizes):
        path = os.path.join(out, "large", f"archive-{i:03d}.bin")
        with open(path, "wb") as f:
            write_random(f, rng, size)
        stats.add(path)


def derive_version(rng: random.Random, base: bytes) -> bytes:
    """A new version of `base`: ~1 edit per 4 MiB (at least 6), each overwriting
    4 KiB-1 MiB, inserting 1 B-64 KiB or deleting 1 B-64 KiB (all capped at a
    small fraction of the file, so versions keep sharing ~90% or more of their
    data).  Insertions and deletions shift everything after them, as
    content-defined chunking expects."""
    n = max(6, len(base) // (4 * MiB))
    max_over = max(4 * KiB, min(1 * MiB, len(base) // 32))
    max_ins = max(1, min(64 * KiB, len(base) // 64))
    offsets = sorted(rng.randrange(len(base)) for _ in range(n))
    pieces: list[bytes] = []
    pos = 0
    for off in offsets:
        if off < pos:
            continue
        pieces.append(base[pos:off])
        kind = rng.choice(("overwrite", "insert", "delete"))
        if kind == "overwrite":
            k = min(rng.randint(4 * KiB, max_over), len(base) - off)
            pieces.append(rng.randbytes(k))
            pos = off + k
        elif kind == "insert":
            pieces.append(rng.randbytes(rng.randint(1, max_ins)))
            pos = off
        else:
            pos = min(len(base), off + rng.randint(1, max_ins))
    pieces.append(base[pos:])
    return b"".join(pieces)


def gen_versions(out: str, seed: int, budget: int, stats: Stats) -> None:
    rng = sub_rng(seed, "versions")
    nver = 3
    ngroups = max(1, round(budget / (nver * 64 * MiB)))
    per_file = max(64 * KiB, budget // (nver * ngroups))
    for g in range(ngroups):
        d = os.path.join(out, "versions", f"vm-{g:02d}")
        os.makedirs(d, exist_ok=True)
        data = rng.randbytes(per_file)
        for v in range(1, nver + 1):
            if v > 1:
                data = derive_version(rng, data)
            path = os.path.join(d, f"disk-v{v}.qcow2")
            with open(path, "wb") as f:
                f.write(data)
            stats.add(path)


def gen_sparse(out: str, seed: int, apparent: int, stats: Stats) -> int:
    """A sparse image: extents of data (64 KiB-2 MiB) separated by holes (0-8 MiB)
    so ~20% is allocated; written with seek.  Returns the bytes written."""
    rng = sub_rng(seed, "sparse")
    align = 64 * KiB
    apparent = max(align * 16, apparent // align * align)
    scale = min(1.0, apparent / (200 * MiB))  # smaller extents/holes for small images
    ext_lo, ext_hi = max(align, int(64 * KiB * scale)), max(align, int(2 * MiB * scale))
    gap_hi = 4 * (ext_lo + ext_hi)  # mean gap = 4 x mean extent => ~20% data
    os.makedirs(os.path.join(out, "disk"), exist_ok=True)
    path = os.path.join(out, "disk", "disk.img")
    written = 0
    with open(path, "wb") as f:
        f.truncate(apparent)
        # a "partition table / superblock" at the start
        head = min(apparent, 1 * MiB if apparent >= 64 * MiB else align)
        f.write(db_blob(rng, ["superblock", "inode", "bitmap", "journal"], head))
        written += head
        pos = head
        while True:
            pos += rng.randint(0, gap_hi) // align * align
            ext = rng.randint(ext_lo, ext_hi) // align * align
            if pos + ext > apparent:
                break
            f.seek(pos)
            write_random(f, rng, ext)
            written += ext
            pos += ext
    stats.add(path)
    return written


def set_mtimes(out: str, seed: int) -> None:
    """Fixed, deterministic mtimes (files first, then directories bottom-up)."""
    rng = sub_rng(seed, "mtime")
    for dirpath, dirnames, filenames in sorted(os.walk(out, topdown=False)):
        for name in sorted(filenames):
            t = BASE_MTIME - rng.randint(0, 365 * 86400)
            os.utime(os.path.join(dirpath, name), (t, t))
        os.utime(dirpath, (BASE_MTIME, BASE_MTIME))


def start(out: str, seed: int):
    """Creates the empty output directory; returns the start time, fresh
    statistics and the seed's vocabulary."""
    if os.path.exists(out) and os.listdir(out):
        sys.exit(f"gen_dataset: {out} exists and is not empty (remove it first)")
    os.makedirs(out, exist_ok=True)
    vocab, cumw = make_vocab(sub_rng(seed, "vocab"))
    return time.time(), Stats(), vocab, cumw


def generate_small_only(out: str, seed: int, count: int) -> None:
    """Only small source-like files: `count` of them, 256 B-8 KiB each, ~30
    per directory in a nested tree (500k files: ~2 GiB, ~17k directories)."""
    t0, stats, vocab, cumw = start(out, seed)
    gen_small(out, seed, 0, vocab, cumw, stats, count=count)
    set_mtimes(out, seed)
    print(
        f"generated {out}: seed={seed} small-only={count} files={stats.files} "
        f"bytes={stats.apparent} in {time.time() - t0:.1f}s"
    )


def generate(out: str, seed: int, total: int) -> None:
    t0, stats, vocab, cumw = start(out, seed)
    gen_small(out, seed, int(total * 0.40), vocab, cumw, stats)
    gen_medium(out, seed, int(total * 0.20), total, vocab, cumw, stats)
    gen_large(out, seed, int(total * 0.25), total, stats)
    gen_versions(out, seed, int(total * 0.10), stats)
    sparse_written = gen_sparse(out, seed, int(total * 0.10), stats)
    set_mtimes(out, seed)
    data_bytes = stats.apparent - os.path.getsize(os.path.join(out, "disk", "disk.img")) + sparse_written
    print(
        f"generated {out}: seed={seed} size={total} files={stats.files} "
        f"bytes={stats.apparent} (apparent; {data_bytes} excluding holes) "
        f"in {time.time() - t0:.1f}s"
    )


# --------------------------------------------------------------------------
# mutate
# --------------------------------------------------------------------------

def mutate(out: str, seed: int, pct: float) -> None:
    if not os.path.isdir(out):
        sys.exit(f"gen_dataset: {out} is not a directory")
    rng = sub_rng(seed, f"mutate:{pct}")
    # Classify by where generate() put a file; elsewhere by size.
    small: list[str] = []
    medium: list[str] = []
    large: list[str] = []
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            top = os.path.relpath(p, out).split(os.sep)[0]
            if top in ("large", "versions", "disk"):
                large.append(p)
            elif top == "medium":
                medium.append(p)
            elif top == "src":
                small.append(p)
            else:
                size = os.path.getsize(p)
                (small if size <= 64 * KiB else medium if size <= 16 * MiB else large).append(p)

    def how_many(items: list) -> int:
        """~pct% of the items, at least one (if there are any)."""
        return min(len(items), max(1, round(len(items) * pct / 100))) if items else 0

    # Large files: overwrite a few bytes at a few offsets, in place (size unchanged).
    edited = rng.sample(large, how_many(large))
    for p in edited:
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            for _ in range(rng.randint(1, 4)):
                off = rng.randrange(max(1, size - 64))
                f.seek(off)
                f.write(rng.randbytes(min(size - off, rng.randint(1, 64))))

    # Medium files: insert 1 B-16 KiB somewhere in the middle half.
    inserted = rng.sample(medium, how_many(medium))
    for p in inserted:
        with open(p, "rb") as f:
            data = f.read()
        mid = len(data) // 4 + rng.randrange(max(1, len(data) // 2))
        ins = rng.randbytes(rng.randint(1, 16 * KiB))
        with open(p, "wb") as f:
            f.write(data[:mid] + ins + data[mid:])

    # Small files: ~pct% in all, a third each appended to, deleted, and added.
    third = max(1, round(how_many(small) / 3))
    chosen = rng.sample(small, min(len(small), 2 * third))
    appended, deleted = chosen[:third], chosen[third:]
    for p in appended:
        with open(p, "ab") as f:
            f.write(f"// edited (seed {seed}) {rng.getrandbits(64):016x}\n".encode())
    for p in deleted:
        os.remove(p)
    vocab, cumw = make_vocab(sub_rng(seed, "vocab"))
    lines = make_code_lines(rng, vocab, cumw, 5_000)
    dirs = sorted({os.path.dirname(p) for p in small}) or [os.path.join(out, "src")]
    added = 0
    new_paths: list[str] = []
    for i in range(third):
        d = rng.choice(dirs)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, f"new-s{seed}-{i:05d}{rng.choice(EXTS)}")
        with open(path, "wb") as f:
            f.write(text_blob(rng, lines, rng.randint(1 * KiB, 20 * KiB)))
        new_paths.append(path)
        added += 1

    # Deterministic times: every tool sees byte- and mtime-identical data
    # whenever the mutation is applied (only ctime and inode numbers differ).
    touched_dirs = {os.path.dirname(p) for p in appended + deleted}
    for p in edited + inserted + appended + new_paths:
        os.utime(p, (MUTATE_MTIME, MUTATE_MTIME))
    touched_dirs.update(os.path.dirname(p) for p in new_paths)
    for d in sorted(touched_dirs):
        os.utime(d, (MUTATE_MTIME, MUTATE_MTIME))

    files = 0
    nbytes = 0
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            files += 1
            nbytes += os.path.getsize(os.path.join(dirpath, name))
    print(
        f"mutated {out}: seed={seed} pct={pct} edited_large={len(edited)} "
        f"inserted_medium={len(inserted)} appended_small={len(appended)} "
        f"deleted_small={len(deleted)} added_small={added}; now files={files} bytes={nbytes}"
    )


# --------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------

def data_bytes(path: str, st: os.stat_result) -> int:
    """Bytes of `path` that are not holes (SEEK_DATA/SEEK_HOLE for sparse files)."""
    if st.st_blocks * 512 >= st.st_size:
        return st.st_size
    n = 0
    with open(path, "rb") as f:
        fd, pos = f.fileno(), 0
        while pos < st.st_size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            n += end - start
            pos = end
    return n


def stats(out: str) -> dict:
    """Counts and byte totals of a tree, as JSON for bench/run.sh."""
    files = dirs = apparent = data = allocated = 0
    for dirpath, dirnames, filenames in os.walk(out):
        dirs += 1
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            files += 1
            apparent += st.st_size
            allocated += st.st_blocks * 512
            data += data_bytes(p, st)
    return {
        "files": files,
        "dirs": dirs,
        "bytes_apparent": apparent,
        "bytes_data": data,  # excluding holes of sparse files
        "bytes_allocated": allocated,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", type=parse_size, default=parse_size("1G"), help="e.g. 50M, 2G (default 1G)")
    ap.add_argument("--mutate", type=float, metavar="PCT", help="mutate ~PCT%% of an existing tree's files")
    ap.add_argument("--small-only", type=int, metavar="N", help="only N small files (256 B-8 KiB each)")
    ap.add_argument("--stats", action="store_true", help="print counts and sizes of an existing tree as JSON")
    args = ap.parse_args()
    if args.stats:
        print(json.dumps(stats(args.outdir)))
    elif args.mutate is not None:
        mutate(args.outdir, args.seed, args.mutate)
    elif args.small_only is not None:
        generate_small_only(args.outdir, args.seed, args.small_only)
    else:
        generate(args.outdir, args.seed, args.size)


if __name__ == "__main__":
    main()
