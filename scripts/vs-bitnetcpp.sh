#!/usr/bin/env bash
# hbit against bitnet.cpp on this CPU, side by side, as anyone can rerun it.
#
#   scripts/vs-bitnetcpp.sh BITNET_SRC
#
# BITNET_SRC is a bitnet.cpp checkout outside this repository (e.g. a copy of
# microsoft/BitNet or its ygqdan/BitNet-linux mirror, with 3rdparty/llama.cpp in place). The
# script
#   1. builds bitnet.cpp there with clang (llama-bench, llama-quantize; I2_S, TL2 off), adding a
#      stand-in for common/cmake/build-info-gen-cpp.cmake where the checkout lacks it;
#   2. writes f16 GGUFs of hbit's dummy benchmark shapes with that checkout's own gguf-py
#      (scripts/bitnetcpp_dummy_gguf.py) and quantizes each to I2_S twice: with the f16 token
#      embedding and with Q6_K (bitnet.cpp's --quant-embd);
#   3. runs both engines alternately, ROUNDS rounds at THREADS threads, batch 1: llama-bench
#      -p P -n N for each GGUF, then `hbit bench e2e` (a8 and a4, 4- and 8-bit heads);
#   4. writes reports/vs-bitnetcpp/<cpu>.json (every round, medians, bytes per token, DRAM
#      bandwidth) and reports/vs-bitnetcpp/<cpu>.md (the table).
#
# Environment: THREADS (default: all cores), ROUNDS (4), SHAPES ("b700m b2b"), WORK (scratch
# directory for the build of the GGUFs and raw results; default BITNET_SRC/build/hbit-vs; the
# ≈2B files take ≈ 9 GB), BITNET_COMMIT (the checkout's commit, where it is not a git
# repository), PYTHON (python3). Needs clang, cmake and python3 with venv; pip fetches numpy,
# sentencepiece and pyyaml into WORK/venv. Nothing else may run meanwhile: it is a benchmark.
set -euo pipefail

die() {
  echo "vs-bitnetcpp: $*" >&2
  exit 1
}

[ $# -eq 1 ] || die "usage: scripts/vs-bitnetcpp.sh BITNET_SRC (a bitnet.cpp checkout)"
[ -d "$1" ] || die "$1: no such directory"
SRC="$(cd "$1" && pwd)"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
case "$SRC/" in
  "$REPO/"*) die "$SRC is inside this repository; check bitnet.cpp out beside it instead" ;;
esac
[ -f "$SRC/CMakeLists.txt" ] && [ -d "$SRC/3rdparty/llama.cpp/gguf-py" ] ||
  die "$SRC does not look like a bitnet.cpp checkout (CMakeLists.txt, 3rdparty/llama.cpp/gguf-py)"
for tool in clang clang++ cmake; do
  command -v "$tool" >/dev/null 2>&1 || die "needs $tool (Debian: apt-get install clang cmake)"
done
PYTHON="${PYTHON:-python3}"
THREADS="${THREADS:-$(nproc)}"
ROUNDS="${ROUNDS:-4}"
SHAPES="${SHAPES:-b700m b2b}"
WORK="${WORK:-$SRC/build/hbit-vs}"
# The checkout's commit only where it is a repository's top level (not a copy inside another).
if [ -z "${BITNET_COMMIT:-}" ]; then
  BITNET_COMMIT=unknown
  if [ "$(git -C "$SRC" rev-parse --show-toplevel 2>/dev/null)" = "$SRC" ]; then
    BITNET_COMMIT="$(git -C "$SRC" describe --always --dirty)"
  fi
fi
mkdir -p "$WORK"

echo "== hbit (release build)"
(cd "$REPO" && cargo build --release -q)
HBIT="$REPO/target/release/hbit"
HBIT_COMMIT="$(git -C "$REPO" describe --always --dirty)"

echo "== bitnet.cpp at $SRC ($BITNET_COMMIT)"
STANDIN="$SRC/3rdparty/llama.cpp/common/cmake/build-info-gen-cpp.cmake"
if [ ! -f "$STANDIN" ]; then
  echo "   adding a stand-in for the missing $STANDIN"
  mkdir -p "$(dirname "$STANDIN")"
  cat > "$STANDIN" <<EOF
file(WRITE "\${CMAKE_CURRENT_SOURCE_DIR}/common/build-info.cpp" "int LLAMA_BUILD_NUMBER = 0;\\nchar const *LLAMA_COMMIT = \\"$BITNET_COMMIT\\";\\nchar const *LLAMA_COMPILER = \\"clang\\";\\nchar const *LLAMA_BUILD_TARGET = \\"$(uname -m)\\";\\n")
EOF
fi
BIN="$SRC/build/bin"
# Configured every time with these options (an earlier build, e.g. by setup_env.py, may have
# others); the build itself is incremental.
extra=()
[ "$(uname -m)" = x86_64 ] && extra+=(-DBITNET_X86_TL2=OFF)
cmake -S "$SRC" -B "$SRC/build" "${extra[@]}" -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release >"$WORK/cmake.log" 2>&1 ||
  die "cmake configure failed: see $WORK/cmake.log"
cmake --build "$SRC/build" -j "$(nproc)" --target llama-bench llama-quantize \
  >"$WORK/build.log" 2>&1 || die "bitnet.cpp build failed: see $WORK/build.log"

echo "== GGUFs of the dummy shapes (f16, then I2_S with f16 and with Q6_K embedding)"
if ! "$WORK/venv/bin/python" -c 'import numpy, sentencepiece, yaml' 2>/dev/null; then
  "$PYTHON" -m venv "$WORK/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$WORK/venv/bin/pip" install -q numpy sentencepiece pyyaml || die "pip install failed"
fi
PY="$WORK/venv/bin/python"
GGUF_PY="$SRC/3rdparty/llama.cpp/gguf-py"
for shape in $SHAPES; do
  f16="$WORK/$shape-f16.gguf"
  if [ ! -f "$f16" ]; then
    "$PY" "$REPO/scripts/bitnetcpp_dummy_gguf.py" --gguf-py "$GGUF_PY" --shape "$shape" \
      --dtype f16 --out "$f16.tmp" || die "writing $f16 failed"
    mv "$f16.tmp" "$f16"
  fi
  for emb in f16 q6k; do
    out="$WORK/$shape-i2s-$emb.gguf"
    [ -f "$out" ] && continue
    args=()
    [ "$emb" = q6k ] && args+=(--token-embedding-type Q6_K)
    "$BIN/llama-quantize" "${args[@]}" "$f16" "$out.tmp" I2_S "$THREADS" \
      >"$WORK/quantize-$shape-$emb.log" 2>&1 ||
      die "llama-quantize failed: see $WORK/quantize-$shape-$emb.log"
    mv "$out.tmp" "$out"
  done
done

RAW="$WORK/sitting-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RAW"
echo "== this CPU"
"$HBIT" cpu --json >"$RAW/cpu.json"
CPU_KEY="$("$PY" -c 'import json,sys; c=json.load(open(sys.argv[1])); print(("%s-f%s-m%s" % (c["vendor"], c["family"], c["model"])).lower())' "$RAW/cpu.json")"
echo "   $CPU_KEY"

echo "== $ROUNDS alternated rounds, $THREADS threads (raw results in $RAW)"
for round in $(seq 1 "$ROUNDS"); do
  for shape in $SHAPES; do
    # The earlier sittings' sizes: 128 + 64 tokens at ≈700M and below, 64 + 32 at ≈2B.
    if [ "$shape" = b2b ]; then p=64 n=32; else p=128 n=64; fi
    for emb in f16 q6k; do
      out="$RAW/bitnetcpp-$shape-i2s-$emb-r$round"
      "$BIN/llama-bench" -m "$WORK/$shape-i2s-$emb.gguf" -t "$THREADS" -p "$p" -n "$n" -o jsonl \
        >"$out.jsonl" 2>"$out.err" || die "llama-bench failed: see $out.err"
    done
    out="$RAW/hbit-$shape-r$round"
    "$HBIT" bench e2e --shapes "$shape" --act-bits 8,4 --head-bits 4,8 --batch 1 \
      --threads "$THREADS" --kv-bits 16 --prefill-tokens "$p" --decode-tokens "$n" --rounds 3 \
      --cache-dir "$WORK/hbit-dummy" --json >"$out.jsonl" 2>"$out.err" ||
      die "hbit bench e2e failed: see $out.err"
  done
  echo "   round $round done $(date +%T)"
done
"$HBIT" cpu --json >"$RAW/cpu-after.json"

mkdir -p "$REPO/reports/vs-bitnetcpp"
"$PY" "$REPO/scripts/vs_bitnetcpp_summary.py" --raw "$RAW" --work "$WORK" \
  --shapes "$SHAPES" --threads "$THREADS" --hbit-commit "$HBIT_COMMIT" \
  --bitnet-commit "$BITNET_COMMIT" --out "$REPO/reports/vs-bitnetcpp/$CPU_KEY"
echo "== wrote reports/vs-bitnetcpp/$CPU_KEY.json and .md"
