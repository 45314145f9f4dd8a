#!/usr/bin/env python3
"""Summarizes one sitting of scripts/vs-bitnetcpp.sh into <out>.json and <out>.md.

Per engine configuration and shape: every round's prefill and decode tokens/s, their medians,
the weight bytes one decode step reads and, from the DRAM read bandwidth `hbit cpu` measured
before and after the sitting, the fraction of it that decode reaches. Ratios compare hbit a4
and a8 (4-bit head, the default) with bitnet.cpp's fastest configuration of the sitting.

Bytes per decoded token: hbit reports its packed ternary matrices plus the head the logits use
(`decode_weight_bytes` of `hbit bench e2e --json`); for bitnet.cpp they are read from the GGUF
header: every tensor's bytes, the token embedding counted only where it is
also the head (no `output.weight`), since the lookup otherwise reads one row of it.
"""

import argparse
import glob
import json
import os
import statistics
import sys


# Byte sizes of GGUF metadata value types (8 = string, 9 = array are variable).
SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_tensor_bytes(path):
    """{name: bytes} of every tensor of a GGUF file: the gaps between consecutive data offsets
    (the last one runs to the end of the file), so no table of type sizes is needed, and the
    fork's I2_S scale after the packed bytes is counted. The fork's own gguf-py reader fails on
    numpy 2, hence this header walk."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        def read(fmt):
            n = struct.calcsize("<" + fmt)
            b = f.read(n)
            if len(b) != n:
                sys.exit(f"{path}: truncated GGUF header")
            return struct.unpack("<" + fmt, b)

        def skip_value(t):
            if t == 8:
                (n,) = read("Q")
                f.seek(n, 1)
            elif t == 9:
                et, count = read("IQ")
                if et in SCALAR_BYTES:
                    f.seek(SCALAR_BYTES[et] * count, 1)
                else:
                    for _ in range(count):
                        skip_value(et)
            elif t in SCALAR_BYTES:
                f.seek(SCALAR_BYTES[t], 1)
            else:
                sys.exit(f"{path}: unknown metadata value type {t}")

        magic, version = read("4sI")
        if magic != b"GGUF" or version < 2:
            sys.exit(f"{path}: not a GGUF v2+ file")
        n_tensors, n_kv = read("QQ")
        alignment = 32
        for _ in range(n_kv):
            (klen,) = read("Q")
            key = f.read(klen).decode()
            (t,) = read("I")
            if key == "general.alignment" and t == 4:
                (alignment,) = read("I")
            else:
                skip_value(t)
        infos = []
        for _ in range(n_tensors):
            (nlen,) = read("Q")
            name = f.read(nlen).decode()
            (dims,) = read("I")
            f.seek(8 * dims, 1)
            _, offset = read("IQ")
            infos.append((offset, name))
        data_start = -(-f.tell() // alignment) * alignment
    infos.sort()
    ends = [o for o, _ in infos[1:]] + [size - data_start]
    return {name: end - offset for (offset, name), end in zip(infos, ends)}


def gguf_decode_bytes(path):
    tensors = gguf_tensor_bytes(path)
    total = sum(tensors.values())
    if "output.weight" in tensors:
        total -= tensors.get("token_embd.weight", 0)
    return total, os.path.getsize(path)


def rounds(pattern):
    """Files of a sitting in round order (r2 before r10)."""
    def number(path):
        return int(path.rsplit("-r", 1)[1].split(".")[0])

    return sorted(glob.glob(pattern), key=number)


def spread(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "each": xs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--shapes", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--hbit-commit", required=True)
    ap.add_argument("--bitnet-commit", required=True)
    ap.add_argument("--out", required=True, help="path without extension")
    a = ap.parse_args()

    cpu = json.load(open(os.path.join(a.raw, "cpu.json")))
    after = json.load(open(os.path.join(a.raw, "cpu-after.json")))
    bandwidths = [c["dram_read_gb_per_s"] for c in (cpu, after) if c.get("dram_read_gb_per_s")]
    bandwidth = max(bandwidths) if bandwidths else None

    rows = {}

    def add(shape, engine, config, prefill, decode, decode_bytes, file_bytes):
        key = (shape, engine, config)
        r = rows.setdefault(
            key,
            {
                "shape": shape,
                "engine": engine,
                "config": config,
                "prefill": [],
                "decode": [],
                "decode_weight_bytes": decode_bytes,
                "file_bytes": file_bytes,
            },
        )
        r["prefill"].append(prefill)
        r["decode"].append(decode)

    shapes = a.shapes.split()
    for shape in shapes:
        for emb in ("f16", "q6k"):
            gguf = os.path.join(a.work, f"{shape}-i2s-{emb}.gguf")
            decode_bytes, file_bytes = gguf_decode_bytes(gguf)
            config = f"I2_S, {'Q6_K' if emb == 'q6k' else 'f16'} embedding"
            for f in rounds(os.path.join(a.raw, f"bitnetcpp-{shape}-i2s-{emb}-r*.jsonl")):
                pp = tg = None
                for line in open(f):
                    r = json.loads(line)
                    if r["n_gen"] == 0:
                        pp = r["avg_ts"]
                    else:
                        tg = r["avg_ts"]
                if pp is None or tg is None:
                    sys.exit(f"{f}: llama-bench wrote no prompt or no generation result")
                add(shape, "bitnet.cpp", config, pp, tg, decode_bytes, file_bytes)
        for f in rounds(os.path.join(a.raw, f"hbit-{shape}-r*.jsonl")):
            for line in open(f):
                r = json.loads(line)
                if r.get("shape") != shape:
                    continue
                layout = f" {r['int4_layout']}" if r.get("int4_layout") else ""
                config = f"a{r['act_bits']}{layout}, {r['head']} head"
                add(
                    shape,
                    "hbit",
                    config,
                    r["prefill_tok_s_median"],
                    r["decode_tok_s_median"],
                    r["decode_weight_bytes"],
                    r["file_bytes"],
                )
    if not rows:
        sys.exit(f"{a.raw}: no results")

    table = []
    for r in rows.values():
        r["prefill"] = spread(r["prefill"])
        r["decode"] = spread(r["decode"])
        gbps = r["decode_weight_bytes"] * r["decode"]["median"] / 1e9
        r["decode_read_gb_per_s"] = gbps
        r["decode_fraction_of_dram"] = gbps / bandwidth if bandwidth else None
        table.append(r)
    table.sort(key=lambda r: (shapes.index(r["shape"]), r["engine"], r["config"]))

    ratios = {}
    for shape in shapes:
        peer = [r for r in table if r["shape"] == shape and r["engine"] == "bitnet.cpp"]
        ours = {r["config"]: r for r in table if r["shape"] == shape and r["engine"] == "hbit"}
        if not peer:
            continue
        best_decode = max(peer, key=lambda r: r["decode"]["median"])
        best_prefill = max(peer, key=lambda r: r["prefill"]["median"])
        for name, r in ours.items():
            if not name.endswith("q4 head"):
                continue
            ratios[f"{shape} hbit {name}"] = {
                "decode_vs_best": r["decode"]["median"] / best_decode["decode"]["median"],
                "best_decode_peer": best_decode["config"],
                "prefill_vs_best": r["prefill"]["median"] / best_prefill["prefill"]["median"],
                "best_prefill_peer": best_prefill["config"],
            }

    report = {
        "cpu": {
            k: cpu.get(k)
            for k in ("model_name", "vendor", "family", "model", "signature", "logical_cores")
        },
        "dram_read_gb_per_s": bandwidths,
        "threads": a.threads,
        "rounds": len(table[0]["decode"]["each"]),
        "hbit_commit": a.hbit_commit,
        "bitnet_cpp_commit": a.bitnet_commit,
        "rows": table,
        "ratios": ratios,
    }
    tmp = a.out + ".json.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, a.out + ".json")

    c = report["cpu"]
    bw = " / ".join(f"{b:.1f}" for b in bandwidths) or "not measured"
    lines = [
        f"# hbit vs bitnet.cpp on {c['model_name']} (family {c['family']} model {c['model']})",
        "",
        f"Signature `{c['signature']}`; DRAM read bandwidth before / after the sitting: {bw} GB/s "
        f"(`hbit cpu`). {a.threads} threads, batch 1, {report['rounds']} alternated rounds "
        "(medians over the rounds, min–max; each round's figure is llama-bench's mean of its 5 "
        f"repetitions, and `hbit bench e2e`'s median of 3). hbit `{a.hbit_commit}`, bitnet.cpp `{a.bitnet_commit}`. "
        "Written by `scripts/vs-bitnetcpp.sh`; dummy models of each shape (random weights, same "
        "hyperparameters in both engines). Decode GB/s = weight bytes per decoded token × "
        "decode tokens/s; the fraction is of the larger bandwidth reading.",
        "",
        "| shape | engine | configuration | prefill tok/s | decode tok/s | bytes/token | decode GB/s | of DRAM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        fmt = lambda s: f"{s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f})"
        frac = r["decode_fraction_of_dram"]
        lines.append(
            f"| {r['shape']} | {r['engine']} | {r['config']} | {fmt(r['prefill'])} | "
            f"{fmt(r['decode'])} | {r['decode_weight_bytes'] / 1e9:.3f} GB | "
            f"{r['decode_read_gb_per_s']:.1f} | {'-' if frac is None else f'{100 * frac:.0f}%'} |"
        )
    lines += ["", "| hbit configuration | decode vs bitnet.cpp's best | prefill vs its best |", "|---|---|---|"]
    for name, q in ratios.items():
        lines.append(
            f"| {name} | {q['decode_vs_best']:.2f}× ({q['best_decode_peer']}) | "
            f"{q['prefill_vs_best']:.2f}× ({q['best_prefill_peer']}) |"
        )
    tmp = a.out + ".md.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, a.out + ".md")


if __name__ == "__main__":
    main()
