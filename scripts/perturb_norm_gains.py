#!/usr/bin/env python3
"""Sets every RMSNorm gain of an hbit checkpoint to 1 + 0.1 N(0, 1) (seeded), in place.

A freshly initialised model has all gains at 1, and then values that come out of integer
kernels exactly equal (e.g. a single token's attention output, a sum of integer products)
stay exactly equal, so a4.8's top-K and the quantizers' rounding meet exact ties that two
correct implementations break differently by float noise. Trained models have no such ties;
this gives an untrained one the same property for implementation-against-implementation
checks (as scripts/golden_reference.py does).

Usage: scripts/perturb_norm_gains.py CHECKPOINT_DIR [SEED]
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

path = Path(sys.argv[1]) / "model.safetensors"
gen = torch.Generator().manual_seed(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
tensors = load_file(str(path))
for name, t in tensors.items():
    if name.endswith("norm.weight"):
        tensors[name] = (1 + 0.1 * torch.randn(t.shape, generator=gen)).to(t.dtype)
save_file(tensors, str(path))
