#!/usr/bin/env python3
"""Summarises a dhat heap profile (dhat-heap.json, written by `tap-controller --features dhat-heap`).

    scripts/dhat-top.py target/scale/dhat-heap.json [--top 15] [--by end|gmax|total]

Prints the totals at the global peak (t-gmax) and at exit (t-end), then the allocation sites holding the
most bytes, grouped by the first frame outside the allocator, std/core/alloc and collection internals,
with the frames that lead there. Bytes still live at exit, after every pipeline is gone, are what the
process retained.
"""
import argparse
import collections
import json
import re

SKIP = re.compile(
    r"^(\[root\]|dhat::|alloc::|core::|std::|hashbrown::|<alloc::|<core::|<std::|<hashbrown::|"
    r"__rust|<dhat::|rust_begin|bytes::bytes_mut|<bytes::|bytes::|<&|<T as|smallvec::|<smallvec::|"
    r"indexmap::map::core|<indexmap::|serde_json::value::de|<serde_json::value::de)"
)


def frame_name(f):
    # "0x5633…: tap_controller::k8s::reconcile::reconcile::{{closure}} (src/k8s/reconcile/mod.rs:63:5)"
    name = f.split(": ", 1)[1] if ": " in f else f
    return re.sub(r"::h[0-9a-f]{16}", "", name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--by", choices=["end", "gmax", "total"], default="end")
    ap.add_argument("--frames", type=int, default=6)
    a = ap.parse_args()
    d = json.load(open(a.profile))
    ftbl = d["ftbl"]
    pps = d["pps"]
    key = {"end": "eb", "gmax": "gb", "total": "tb"}[a.by]
    blocks = {"end": "ebk", "gmax": "gbk", "total": "tbk"}[a.by]
    mib = 1024 * 1024
    print(f"{a.profile}: {d.get('cmd', '')}")
    print(
        f"  at t-gmax ({d.get('tg', 0) / 1e6:.1f} s): {sum(p['gb'] for p in pps) / mib:.2f} MiB in "
        f"{sum(p['gbk'] for p in pps):,} blocks"
    )
    print(
        f"  at t-end  ({d.get('te', 0) / 1e6:.1f} s): {sum(p['eb'] for p in pps) / mib:.2f} MiB in "
        f"{sum(p['ebk'] for p in pps):,} blocks"
    )
    print(
        f"  allocated over the run: {sum(p['tb'] for p in pps) / mib:.1f} MiB in {sum(p['tbk'] for p in pps):,} blocks"
    )
    groups = collections.defaultdict(lambda: [0, 0, None])
    for p in pps:
        if not p[key]:
            continue
        names = [frame_name(ftbl[i]) for i in p["fs"]]
        interesting = [n for n in names if not SKIP.match(n)]
        site = interesting[0] if interesting else (names[0] if names else "?")
        g = groups[site]
        g[0] += p[key]
        g[1] += p[blocks]
        if g[2] is None or p[key] > g[2][0]:
            g[2] = (p[key], interesting[: a.frames])
    print(f"\n  top sites by bytes at {a.by}:")
    for site, (b, k, (_, frames)) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"  {b / mib:8.2f} MiB {k:9,} blocks  {site}")
        for f in frames[1:]:
            print(f"  {'':29}  ← {f}")


if __name__ == "__main__":
    main()
