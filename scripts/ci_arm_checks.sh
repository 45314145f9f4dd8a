#!/usr/bin/env bash
# The AArch64 NEON path, cross-built with Debian's gcc-aarch64-linux-gnu and run under qemu-user:
# the kernel tests (every NEON tile against the scalar definitions, bit for bit) and the engine's
# parity and generation tests, once on a CPU with the dot-product extension (qemu's `max`) and
# once on one without it (Cortex-A72, as in the Raspberry Pi 4), so both INT8 tiles run.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
need=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || need+=(qemu-user)
export DEBIAN_FRONTEND=noninteractive
if [ ${#need[@]} -gt 0 ]; then
  if ! apt-get install -y -q "${need[@]}" >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q "${need[@]}" >/dev/null
  fi
fi
command -v rustup >/dev/null 2>&1 ||
  { echo "ci_arm_checks: needs rustup for the $TARGET standard library" >&2; exit 1; }
if ! rustup target list --installed | grep -qx "$TARGET"; then
  rustup target add "$TARGET"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
for cpu in max cortex-a72; do
  echo "-- qemu-aarch64 -cpu $cpu"
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L /usr/aarch64-linux-gnu" \
    cargo test -q --release --target "$TARGET" -p hbit-kernels -p hbit-engine \
    --lib --test parity --test generate
done
