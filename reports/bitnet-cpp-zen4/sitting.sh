#!/bin/bash
# One sitting: bitnet.cpp (I2_S, f16 and Q6_K embedding) and hbit alternated, 4 rounds.
set -u
B=/work/bitnet/build/bin/llama-bench
H=/work/main/target/release/hbit
OUT=/work/peer/sitting-$(date +%H%M)
mkdir -p $OUT
for round in 1 2 3 4; do
  for m in b700m-i2s b700m-i2s-q6k; do
    $B -m /work/peer/$m.gguf -t 2 -p 128 -n 64 -o jsonl > $OUT/bitnetcpp-$m-r$round.jsonl 2>/dev/null
  done
  $H bench e2e --shapes b700m --act-bits 8,4 --head-bits 4,8 --batch 1 --threads 2 --kv-bits 16 \
     --prefill-tokens 128 --decode-tokens 64 --rounds 3 --json > $OUT/hbit-b700m-r$round.jsonl 2>$OUT/hbit-b700m-r$round.err
  for m in b2b-i2s b2b-i2s-q6k; do
    $B -m /work/peer/$m.gguf -t 2 -p 64 -n 32 -o jsonl > $OUT/bitnetcpp-$m-r$round.jsonl 2>/dev/null
  done
  $H bench e2e --shapes b2b --act-bits 8,4 --head-bits 4,8 --batch 1 --threads 2 --kv-bits 16 \
     --prefill-tokens 64 --decode-tokens 32 --rounds 3 --json > $OUT/hbit-b2b-r$round.jsonl 2>$OUT/hbit-b2b-r$round.err
  echo "round $round done $(date +%T)"
done
echo $OUT
