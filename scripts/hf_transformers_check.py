#!/usr/bin/env python3
"""hbit's HF exports against transformers + torch (PyPI): logits equal within tolerance.

For each export directory (written by `hbit export --format hf`): transformers loads it with
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` (its own BitNetForCausalLM
for BitNet b1.58 a8, hbit's modeling_hbit_bitnet.py for the others), and both engines score the
same token ids: three passages of the model's tokenizer, 64 positions each. Passes when every
passage's relative error ||hbit - torch|| / ||torch|| <= 1e-2 and the argmax agrees on >= 99%
of the 192 positions (a disagreement is printed with the gap between hbit's two best logits). Then transformers saves the model (`save_pretrained`) and hbit must read that
directory back to the same logits as the export it came from.

With --random-weights (untrained models, whose nearly flat logits make the argmax a coin
toss among near ties) only the relative error decides; top-1 agreement is printed.

Usage: scripts/hf_transformers_check.py [--random-weights] path/to/hbit EXPORT_DIR [EXPORT_DIR ...]
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

PASSAGES = [
    "The history of the city begins in the Roman period, when a small fort was built on the north "
    "bank of the river to guard the crossing. Over the following centuries the settlement grew into "
    "a market town, and by the thirteenth century it had a charter, two churches and a bridge of stone. "
    "The railway reached it in 1846, and the population doubled within twenty years.",
    "It was a bright cold day in April, and the clocks were striking thirteen. She walked slowly down "
    "the lane towards the sea, thinking of the letter she had not yet answered and of the man who had "
    "written it, years ago, in another country. The wind came in from the west, carrying the smell "
    "of salt and tar, and somewhere behind her a dog began to bark.",
    "Water boils at one hundred degrees Celsius at sea level. At higher altitudes the air pressure is "
    "lower, so water boils at a lower temperature, and food takes longer to cook. Mountaineers have "
    "known this for a long time. Pressure cookers raise the boiling point instead: with the lid "
    "sealed, steam builds up, and the water inside can reach one hundred and twenty degrees.",
]
POSITIONS = 64
MAX_RELATIVE_ERROR = 1e-2
MIN_TOP1_AGREEMENT = 0.99


def hbit_logits(hbit, model, ids):
    out = subprocess.run(
        [hbit, "logits", "--engine", "--model", str(model), "--tokens", ",".join(map(str, ids)), "--json"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"hbit logits on {model} failed:\n{out.stderr}")
    return torch.tensor(json.loads(out.stdout)["logits"], dtype=torch.float64)


def passages(export):
    tok = Tokenizer.from_file(str(export / "tokenizer.json"))
    config = json.loads((export / "config.json").read_text())
    bos = config.get("bos_token_id")
    out = []
    for text in PASSAGES:
        ids = tok.encode(text).ids
        ids = ([bos] if bos is not None else []) + ids
        if len(ids) < POSITIONS:
            raise SystemExit(f"{export}: passage of {len(ids)} tokens, need {POSITIONS}")
        out.append(ids[:POSITIONS])
    return out


def check(hbit, export, random_weights=False):
    export = Path(export)
    kind = json.loads((export / "config.json").read_text())
    label = kind.get("hbit_quantization", {}).get("variant", "bitnet_b158") + " a" + str(
        kind.get("hbit_quantization", {}).get("activation_bits", 8)
    )
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True, dtype=torch.float32)
    model.eval()
    ok, agree, total = True, 0, 0
    for i, ids in enumerate(passages(export)):
        with torch.no_grad():
            theirs = model(torch.tensor([ids])).logits[0].to(torch.float64)
        ours = hbit_logits(hbit, export, ids)
        rel = float((ours - theirs).norm() / theirs.norm())
        same_top1 = ours.argmax(-1) == theirs.argmax(-1)
        agree, total = agree + int(same_top1.sum()), total + len(ids)
        good = rel <= MAX_RELATIVE_ERROR
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {export.name} ({label}, {type(model).__name__}) passage {i}: "
              f"relative error {rel:.2e}, top-1 agreement {int(same_top1.sum())}/{len(ids)}")
        for pos in (~same_top1).nonzero().flatten().tolist():
            best = ours[pos].topk(2).values
            print(f"     position {pos}: top-1 differs; hbit's two best logits are {float(best[0] - best[1]):.2e} apart")
    top1 = agree / total
    good = random_weights or top1 >= MIN_TOP1_AGREEMENT
    ok &= good
    print(f"{'ok  ' if good else 'FAIL'} {export.name}: top-1 agreement {agree}/{total} = {top1:.1%}")
    with tempfile.TemporaryDirectory() as saved:
        model.save_pretrained(saved)
        ids = passages(export)[0]
        again = hbit_logits(hbit, saved, ids)
        same = torch.equal(again, hbit_logits(hbit, export, ids))
        ok &= same
        print(f"{'ok  ' if same else 'FAIL'} {export.name}: hbit reads transformers' save_pretrained "
              f"back to {'the same' if same else 'different'} logits")
    return ok


def main():
    args = [a for a in sys.argv[1:] if a != "--random-weights"]
    random_weights = len(args) < len(sys.argv) - 1
    hbit, exports = args[0], args[1:]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    results = [check(hbit, e, random_weights) for e in exports]
    if not all(results):
        sys.exit(1)


if __name__ == "__main__":
    main()
