#!/usr/bin/env python3
"""Writes an f32 GGUF of architecture `bitnet` with random weights in one of hbit's benchmark
shapes (`hbit bench e2e` / `bench serve --shape`), for bitnet.cpp's llama-quantize (I2_S) and
llama-server: the same hyperparameters as hbit's dummy model of that shape, a placeholder
SentencePiece-style vocabulary of the shape's size, ones for the norms, N(0, 0.02^2) weights.

It imports gguf-py from the bitnet.cpp checkout the user names, so the file is written by that
checkout's own writer.

Usage: bitnetcpp_dummy_gguf.py --gguf-py BITNET/3rdparty/llama.cpp/gguf-py --shape b700m|b2b [--dtype f16] --out F
"""

import argparse
import sys

import numpy as np

# (hidden, FFN, layers, heads, KV heads, vocab, context, architecture), as `bench_shape` in
# crates/hbit-model/src/config.rs. The ≈2B shape is BitNet b1.58 2B4T's: the fork loads it as
# `bitnet-25` (squared-ReLU GLU, GQA), the others as `bitnet`.
SHAPES = {
    "b125m": (768, 3072, 12, 12, 12, 32002, 2048, "bitnet"),
    "b700m": (1536, 4096, 24, 16, 16, 32002, 2048, "bitnet"),
    "b2b": (2560, 6912, 30, 20, 5, 128256, 4096, "bitnet-25"),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf-py", required=True, help="the checkout's gguf-py directory")
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--dtype",
        choices=["f32", "f16"],
        default="f32",
        help="tensor type (f16 halves the ≈2B file to 4.8 GB; llama-quantize keeps an f16 "
        "token embedding unless told --token-embedding-type)",
    )
    args = ap.parse_args()
    sys.path.insert(0, args.gguf_py)
    import gguf  # noqa: E402  (the checkout's own writer)

    h, ffn, layers, heads, kv, vocab, ctx, arch = SHAPES[args.shape]
    dtype = np.float16 if args.dtype == "f16" else np.float32
    rng = np.random.default_rng(args.seed)
    w = gguf.GGUFWriter(args.out, arch)
    w.add_context_length(ctx)
    w.add_embedding_length(h)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(h // heads)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1 if dtype == np.float16 else 0)  # all f16 (1) or all f32 (0)
    # Placeholder vocabulary: <unk> <s> </s>, the 256 byte tokens, then plain words.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"t{i}" for i in range(vocab - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (vocab - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731  (norms stay f32, as converters write them)
    w.add_tensor("token_embd.weight", normal(vocab, h))
    w.add_tensor("output_norm.weight", ones(h))
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(h))
        w.add_tensor(p + "attn_sub_norm.weight", ones(h))
        w.add_tensor(p + "ffn_norm.weight", ones(h))
        w.add_tensor(p + "ffn_sub_norm.weight", ones(ffn))
        w.add_tensor(p + "attn_q.weight", normal(h, h))
        w.add_tensor(p + "attn_k.weight", normal(h * kv // heads, h))
        w.add_tensor(p + "attn_v.weight", normal(h * kv // heads, h))
        w.add_tensor(p + "attn_output.weight", normal(h, h))
        w.add_tensor(p + "ffn_gate.weight", normal(ffn, h))
        w.add_tensor(p + "ffn_up.weight", normal(ffn, h))
        w.add_tensor(p + "ffn_down.weight", normal(h, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out} ({args.shape}, {arch}, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
