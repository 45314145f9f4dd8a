#!/usr/bin/env python3
"""Turns `hbit bench kernels --json` output (stdin) into the Markdown tables of reports/kernels.md."""
import json
import sys

lines = [json.loads(l) for l in sys.stdin if l.strip().startswith("{")]
recs = [r for r in lines if "kernel" in r]
sums = [r for r in lines if "summary" in r]
by = {(r["kernel"], r["batch"], r["rows"], r["cols"], r["threads"]): r for r in recs}

for bw in (r for r in recs if r["kernel"] == "memory_read"):
    print(f"Memory read bandwidth, {bw['threads']} threads: **{bw['gbps']:.1f} GB/s**\n")

print("| shape [out×in] | batch | threads | INT8 GOPS | INT4 GOPS | f32 GFLOPS | INT4/INT8 | INT8/f32 | INT4/f32 | INT8 GB/s | INT4 GB/s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in recs:
    if r["kernel"] != "ternary_int8":
        continue
    k = (r["batch"], r["rows"], r["cols"], r["threads"])
    i4 = by.get(("ternary_int4",) + k)
    d = by.get(("dense_f32",) + k)
    if i4 is None:
        continue
    f32 = f"{d['gops']:.1f}" if d else "–"
    r8 = f"{d['seconds'] / r['seconds']:.2f}" if d else "–"
    r4 = f"{d['seconds'] / i4['seconds']:.2f}" if d else "–"
    print(
        f"| {r['rows']}×{r['cols']} | {r['batch']} | {r['threads']} | {r['gops']:.1f} | {i4['gops']:.1f} | {f32} | "
        f"{r['seconds'] / i4['seconds']:.2f} | {r8} | {r4} | {r['gbps']:.1f} | {i4['gbps']:.1f} |"
    )

print("\n| Hadamard n | threads | µs per token | G add/s |")
print("|---:|---:|---:|---:|")
for r in recs:
    if r["kernel"] == "hadamard":
        print(f"| {r['cols']} | {r['threads']} | {r['seconds'] * 1e6:.2f} | {r['gops']:.1f} |")

print("\n| target | threads | measured | target | met | worst case |")
print("|---|---:|---:|---:|---|---|")
for s in sums:
    print(f"| `{s['summary']}` | {s['threads']} | {s['value']:.3f} | {s['target']:.2f} | {'yes' if s['pass'] else '**no**'} | {s['detail']} |")
