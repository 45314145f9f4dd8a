#!/usr/bin/env python3
"""Check hbit's GGUF decoding against bitnet.cpp's own output, with an independent reader.

bitnet.cpp's `llama-quantize ... I2_S` turns an F32 GGUF into an I2_S one: each ternary
weight becomes sign(w) * max|w| of its tensor (|w| < 1e-6 becomes 0). This script reads the
F32 tensor with its own standard-library GGUF reader, asks `hbit gguf inspect --json` for the
same tensor of the quantized file, and checks that hbit's values are exactly that rule (I2_S)
or within the block quantizer's error (Q6_K: 1.5% of the row's max|w|).

usage: gguf_compare.py HBIT F32.gguf QUANTIZED.gguf TENSOR [TENSOR ...]
"""
import json
import struct
import subprocess
import sys

SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_f32_tensor(path, name, count):
    """The first `count` values of F32 tensor `name`, and its max |w| over the whole tensor."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode()
        pos += n
        return s

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(SCALAR[t])

    assert data[:4] == b"GGUF", path
    pos = 4
    _version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    alignment = 32
    for _ in range(n_kv):
        key, t = string(), take("I")
        v = value(t)
        if key == "general.alignment":
            alignment = v
    infos = {}
    for _ in range(n_tensors):
        tname = string()
        dims = [take("Q") for _ in range(take("I"))]
        ttype, offset = take("I"), take("Q")
        infos[tname] = (dims, ttype, offset)
    start = (pos + alignment - 1) // alignment * alignment
    dims, ttype, offset = infos[name]
    assert ttype == 0, f"{name} in {path} is not F32 (type {ttype})"
    n = 1
    for d in dims:
        n *= d
    values = struct.unpack_from(f"<{n}f", data, start + offset)
    return list(values[:count]), max(abs(v) for v in values), dims


def main():
    hbit, f32_file, quantized, tensors = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    count = 4096
    failures = 0
    for name in tensors:
        out = subprocess.run(
            [hbit, "gguf", "inspect", quantized, "--tensor", name, "--values", str(count), "--json"],
            check=True, capture_output=True, text=True,
        ).stdout
        t = json.loads(out)["tensor"]
        ref, absmax, dims = read_f32_tensor(f32_file, name, count)
        got = t["values"]
        if t["type"] == "I2_S":
            want = [0.0 if abs(w) < 1e-6 else (absmax if w > 0 else -absmax) for w in ref]
            bad = sum(1 for g, w in zip(got, want) if struct.pack("<f", g) != struct.pack("<f", w))
            ok = bad == 0 and struct.pack("<f", t["scale"]) == struct.pack("<f", absmax)
            detail = f"{bad} of {len(got)} values differ; scale {t['scale']} vs max|w| {absmax}"
        else:
            row = dims[0]
            bad = 0
            for r in range(len(got) // row):
                rmax = max(abs(w) for w in ref[r * row:(r + 1) * row])
                bad += sum(1 for g, w in zip(got[r * row:(r + 1) * row], ref[r * row:(r + 1) * row])
                           if abs(g - w) > 0.015 * rmax)
            ok = bad == 0
            detail = f"{bad} of {len(got)} values beyond 1.5% of their row's max|w|"
        print(f"{'ok  ' if ok else 'FAIL'} {name} ({t['type']}, {t['shape']}): {detail}")
        failures += not ok
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
