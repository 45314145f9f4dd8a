#!/usr/bin/env python3
"""Training an hbit export on PyTorch's own distributed launcher, and back into hbit.

Run under `torchrun --nproc-per-node 2` (gloo, CPU). Each rank loads the latent-weight HF
export of an hbit checkpoint (`hbit export --format hf --model CKPT`) with
`AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)`, wraps it in
DistributedDataParallel and trains on its own shard of the text: `--a8-steps` steps at 8-bit
activations, then `--a4-steps` at 4-bit activations with the same AdamW state (the paper's
a8 -> a4 continue-training). Checks:

* the loss falls (mean of the last steps below the mean of the first);
* both ranks end with identical weights (every parameter compared with rank 0's, bit for bit);
* rank 0 saves the model (`save_pretrained`) and hbit loads the saved directory: the logits of
  `hbit logits --engine` equal PyTorch's within 1e-2 relative error, top-1 on >= 99% of positions.

Usage: torchrun --nproc-per-node 2 scripts/torch_ddp_check.py HBIT EXPORT_DIR TEXT_DIR OUT_DIR
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tokenizers import Tokenizer
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM


def text_tokens(tokenizer, text_dir, limit_chars):
    files = sorted(p for p in Path(text_dir).rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
    if not files:
        raise SystemExit(f"{text_dir}: no .txt files")
    text = "\n\n".join(p.read_text(errors="replace") for p in files)[:limit_chars]
    return torch.tensor(tokenizer.encode(text).ids, dtype=torch.long)


def set_activation_bits(model, bits):
    """The a8 -> a4 switch: projections that quantize at the model's width change width; the
    ones fixed at 8 bits (b1.58, a4.8's top-K inputs) keep theirs."""
    q = dict(model.config.hbit_quantization)
    for module in model.modules():
        if hasattr(module, "bits") and q["variant"] != "bitnet_b158" and not getattr(module, "topk", None):
            module.bits = bits
    q["activation_bits"] = bits
    model.config.hbit_quantization = q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hbit")
    ap.add_argument("export")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("--a8-steps", type=int, default=24)
    ap.add_argument("--a4-steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(args.export, trust_remote_code=True, dtype=torch.float32)
    if model.config.hbit_quantization.get("weights") != "latent":
        raise SystemExit(f"{args.export}: packed weights do not train; export a training checkpoint")
    model.train()
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    tokens = text_tokens(Tokenizer.from_file(str(Path(args.export) / "tokenizer.json")), args.text, 400_000)
    window = args.seq_len + 1
    windows = tokens[: len(tokens) // window * window].view(-1, window)
    mine = windows[rank::world]  # each rank its own shard
    gen = torch.Generator().manual_seed(rank)
    losses = []
    for step in range(args.a8_steps + args.a4_steps):
        if step == args.a8_steps:
            set_activation_bits(model, 4)
        batch = mine[torch.randint(len(mine), (args.batch_size,), generator=gen)]
        loss = ddp(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
        if rank == 0:
            print(f"step {step + 1} a{8 if step < args.a8_steps else 4} loss {losses[-1]:.4f}", flush=True)

    # Identical weights on every rank: rank 0's parameters broadcast and compared bit for bit.
    differing = 0
    for name, p in sorted(model.named_parameters()):
        theirs = p.detach().clone()
        dist.broadcast(theirs, 0)
        differing += int(not torch.equal(theirs, p.detach()))
    counts = torch.tensor([differing])
    dist.all_reduce(counts)
    ok = True
    if rank == 0:
        k = max(1, min(5, len(losses) // 4))
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        falls = last < first
        same = int(counts) == 0
        print(f"{'ok  ' if falls else 'FAIL'} loss falls: first {k} steps {first:.4f}, last {k} {last:.4f}")
        print(f"{'ok  ' if same else 'FAIL'} ranks identical: {int(counts)} parameters differ across {world} ranks")
        ok = falls and same
        model.eval()
        model.save_pretrained(args.out)
        (Path(args.out) / "tokenizer.json").write_text((Path(args.export) / "tokenizer.json").read_text())
        ids = windows[0, : args.seq_len].tolist()
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0].to(torch.float64)
        run = subprocess.run(
            [args.hbit, "logits", "--engine", "--model", args.out, "--tokens", ",".join(map(str, ids)), "--json"],
            capture_output=True, text=True,
        )
        if run.returncode != 0:
            print(f"FAIL hbit could not load the trained model:\n{run.stderr}")
            ok = False
        else:
            ours = torch.tensor(json.loads(run.stdout)["logits"], dtype=torch.float64)
            rel = float((ours - theirs).norm() / theirs.norm())
            top1 = float((ours.argmax(-1) == theirs.argmax(-1)).double().mean())
            good = rel <= 1e-2 and top1 >= 0.99
            ok &= good
            print(f"{'ok  ' if good else 'FAIL'} hbit on the trained a4 model: relative error {rel:.2e}, "
                  f"top-1 agreement {top1:.1%} over {len(ids)} positions")
    flag = torch.tensor([int(ok)])
    dist.broadcast(flag, 0)
    dist.destroy_process_group()
    sys.exit(0 if int(flag) else 1)


if __name__ == "__main__":
    main()
