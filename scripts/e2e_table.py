#!/usr/bin/env python3
"""Markdown tables from `hbit bench e2e --json` lines (stdin): one row per shape, activation
width and thread count; decode columns per batch and KV width; resident memory against the
packed file plus the KV cache."""
import json
import sys
from collections import defaultdict

rows = [json.loads(l) for l in sys.stdin if l.strip().startswith("{")]
if not rows:
    sys.exit("no JSON lines on stdin")
kvs = sorted({r["kv_bits"] for r in rows}, key=lambda k: ["f32", "f16", "int8", "int4", "int3"].index(k))
batches = sorted({r["batch"] for r in rows})
groups = defaultdict(list)
for r in rows:
    groups[(r["shape"], r["act_bits"], r["threads"], r.get("head", "f16"))].append(r)

head = ["shape", "act", "threads", "LM head", "prefill t/s"]
head += [f"decode b{b} {k} t/s" for b in batches for k in kvs]
head += ["file MB", "max RSS / (file + KV)"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for (shape, act, threads, lm_head), rs in groups.items():
    pre = max(r["prefill_tok_s"] for r in rs)
    cells = [shape, f"a{act}", str(threads), lm_head, f"{pre:.1f}"]
    for b in batches:
        for k in kvs:
            m = [r for r in rs if r["batch"] == b and r["kv_bits"] == k]
            cells.append(f"{m[0]['decode_tok_s']:.1f}" if m else "–")
    file_mb = rs[0]["file_bytes"] / 1e6
    ratio = max(r["rss_bytes"] / (r["file_bytes"] + r["kv_bytes"]) for r in rs)
    cells += [f"{file_mb:.1f}", f"{ratio:.3f}"]
    print("| " + " | ".join(cells) + " |")

# INT4 vs INT8 batch-16 decode, same shape / threads / KV.
pairs = []
for r in rows:
    if r["act_bits"] == 4 and r["batch"] >= 16:
        m = [q for q in rows if q["act_bits"] == 8 and q["shape"] == r["shape"] and q["threads"] == r["threads"]
             and q["batch"] == r["batch"] and q["kv_bits"] == r["kv_bits"]
             and q.get("head", "f16") == r.get("head", "f16")]
        if m:
            pairs.append((r, r["decode_tok_s"] / m[0]["decode_tok_s"]))
if pairs:
    print()
    print("| shape | threads | batch | KV | LM head | INT4 / INT8 decode |")
    print("|---|---|---|---|---|---|")
    for r, ratio in pairs:
        print(f"| {r['shape']} | {r['threads']} | {r['batch']} | {r['kv_bits']} | {r.get('head', 'f16')} | {ratio:.2f} |")
