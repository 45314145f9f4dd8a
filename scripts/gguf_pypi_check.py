#!/usr/bin/env python3
"""hbit's GGUF reader and writer against llama.cpp's own Python package (`gguf` on PyPI).

1. gguf-py writes one file with a tensor of every type hbit reads (F32, F16, BF16, Q6_K, TQ1_0,
   TQ2_0); `hbit gguf inspect --tensor NAME --values N --json` must decode each to exactly the
   values `gguf.quants.dequantize` gives for the same bytes.
2. hbit exports a small BitNet b1.58 model as GGUF (TQ2_0, TQ1_0, F16); gguf-py's GGUFReader
   must open each, find the metadata hbit wrote, and dequantize every tensor to exactly what
   hbit decodes. (I2_S is bitnet.cpp's type 36, which upstream gguf-py does not know: its
   reader refuses such files, so bitnet.cpp itself checks those; see reports/interop.md.)

Usage: scripts/gguf_pypi_check.py path/to/hbit WORKDIR
"""

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

HBIT = sys.argv[1]
WORK = Path(sys.argv[2])
WORK.mkdir(parents=True, exist_ok=True)
failures = []


def hbit(*args):
    out = subprocess.run([HBIT, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"hbit {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def hbit_values(path, name, count):
    out = hbit("gguf", "inspect", str(path), "--tensor", name, "--values", str(count), "--json")
    return np.array(json.loads(out)["tensor"]["values"], dtype=np.float64)


def check(what, got, want, quiet=False):
    want = np.asarray(want, dtype=np.float32).astype(np.float64).ravel()
    if len(got) != len(want) or not np.array_equal(got, want):
        diff = int(np.sum(got != want)) if len(got) == len(want) else "length"
        failures.append(f"{what}: {diff} values differ")
        print(f"FAIL {what}: {diff} of {len(want)} values differ")
        return False
    if not quiet:
        print(f"ok   {what}: {len(got)} values equal")
    return True


def q6_k_encode(x):
    """Q6_K blocks of rows `x` (width a multiple of 256): gguf-py reads Q6_K but cannot write
    it. Per 16 values a signed 8-bit scale, per 256 an f16 super-scale, 6-bit codes split into
    low nibbles (ql) and high bit pairs (qh), laid out as ggml's dequantize_row_q6_K reads them."""
    groups = x.reshape(-1, 16, 16).astype(np.float32)  # [block, group of 16, value]
    n = groups.shape[0]
    group_scale = np.abs(groups).max(-1) / 31.0
    d = (group_scale.max(-1) / 127.0).astype(np.float16)
    d32 = d.astype(np.float32)[:, None]
    scales = np.where(d32 > 0, np.round(group_scale / np.where(d32 > 0, d32, 1)), 0)
    scales = np.clip(scales, -128, 127).astype(np.int8)
    step = (d32 * scales.astype(np.float32))[..., None]
    q = np.where(step != 0, np.round(groups / np.where(step != 0, step, 1)), 0)
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # [half, quarter, l]
    low, high = q & 0xF, q >> 4
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    out = np.concatenate(
        [ql.reshape(n, 128), qh.reshape(n, 64), scales.view(np.uint8), d.reshape(n, 1).view(np.uint8)],
        axis=1,
    )
    return out.reshape(x.shape[0], -1)


# 1. gguf-py writes, hbit reads.
rng = np.random.default_rng(0)
rows, cols = 4, 512
dense = rng.standard_normal((rows, cols)).astype(np.float32)
ternary = rng.integers(-1, 2, (rows, cols)).astype(np.float32) * np.float32(0.0371)
tensors = {
    "f32": (dense, None),
    "f16": (dense.astype(np.float16), None),
    "bf16": (quantize(dense, T.BF16), T.BF16),
    "q6_k": (q6_k_encode(dense), T.Q6_K),
    "tq1_0": (quantize(ternary, T.TQ1_0), T.TQ1_0),
    "tq2_0": (quantize(ternary, T.TQ2_0), T.TQ2_0),
}
written = WORK / "types.gguf"
w = gguf.GGUFWriter(str(written), arch="bitnet")
w.add_uint32("bitnet.block_count", 0)
w.add_array("test.floats", [0.5, -1.25])
w.add_string("test.text", "hbit ✓")
for name, (data, raw) in tensors.items():
    if raw is None:
        w.add_tensor(name, data)
    else:
        w.add_tensor(name, data, raw_dtype=raw)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
q6 = dequantize(tensors["q6_k"][0], T.Q6_K)
assert np.max(np.abs(q6 - dense)) < 0.1, "the Q6_K encoder above is broken"
info = json.loads(hbit("gguf", "inspect", str(written), "--json"))
meta = info["metadata"]
if meta.get("test.text") != "hbit ✓" or meta.get("test.floats", {}).get("first") != [0.5, -1.25]:
    failures.append(f"metadata read back wrong: {meta}")
for name, (data, raw) in tensors.items():
    want = data.astype(np.float32) if raw is None else dequantize(data, raw)
    check(f"gguf-py {name} -> hbit", hbit_values(written, name, rows * cols), want)

# 2. hbit writes, gguf-py reads: a tiny b1.58 model (width 256, as the TQ types need) with a
# tokenizer trained here.
text = WORK / "text.txt"
text.write_text(("The quick brown fox jumps over the lazy dog. " * 50 + "\n") * 4)
ckpt = WORK / "b158"
hbit("tokenizer", "train", "--data", str(text), "--vocab-size", "320", "--out", str(WORK / "tok.json"))
hbit("init", "--preset", "tiny", "--variant", "bitnet_b158", "--vocab-size", "320", "--seed", "4",
     "--out", str(ckpt), "--force")
(ckpt / "tokenizer.json").write_text((WORK / "tok.json").read_text())
for quant in ["tq2_0", "tq1_0", "f16"]:
    out = WORK / f"b158-{quant}.gguf"
    hbit("export", "--format", "gguf", "--quant", quant, "--model", str(ckpt), "--out", str(out))
    reader = gguf.GGUFReader(str(out))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    arch = fields.get("general.architecture")
    if arch != "bitnet" or fields.get("bitnet.block_count") != 6 or len(fields["tokenizer.ggml.tokens"]) != 320:
        failures.append(f"{out.name}: metadata as gguf-py reads it: {arch}, "
                        f"{fields.get('bitnet.block_count')} blocks")
    equal, values_seen, kinds = 0, 0, set()
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type)
        what = f"hbit {quant} {t.name} ({t.tensor_type.name}) -> gguf-py"
        equal += check(what, hbit_values(out, t.name, values.size), values, quiet=True)
        values_seen += values.size
        kinds.add(t.tensor_type.name)
    print(f"ok   hbit {quant} export -> gguf-py: {equal} of {len(reader.tensors)} tensors "
          f"({values_seen} values, types {sorted(kinds)}) equal")

if failures:
    print(f"{len(failures)} failures")
    sys.exit(1)
print("gguf-py and hbit agree on every tensor")
