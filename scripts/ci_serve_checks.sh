#!/usr/bin/env bash
# The server against real peers, on loopback only, bounded in time:
#  1. the `openai` Python client (PyPI) drives `hbit serve`: completions and chat, whole and
#     streamed (scripts/openai_client_check.py);
#  2. nginx from the distribution, configured by docs/nginx/hbit-replicas.conf, balances two
#     `hbit serve` replicas, and both answer through it.
# Usage: scripts/ci_serve_checks.sh [path/to/hbit]
set -euo pipefail
cd "$(dirname "$0")/.."
HBIT="${1:-./target/release/hbit}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! python3 -c "import openai" 2>/dev/null; then
  python3 -m pip install -q openai
fi
if ! command -v nginx >/dev/null 2>&1; then
  if ! (apt-get install -y -q nginx-light >/dev/null 2>&1 || apt-get install -y -q nginx >/dev/null 2>&1); then
    apt-get update -q >/dev/null
    apt-get install -y -q nginx >/dev/null
  fi
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

wait_healthy() {
  for _ in $(seq 1 300); do
    if curl -fs "http://127.0.0.1:$1/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "server on port $1 did not become healthy" >&2
  return 1
}

"$HBIT" serve --port 18081 --threads 1 --metrics --quiet 2>"$WORK/a.log" & PIDS+=($!)
"$HBIT" serve --port 18082 --threads 1 --metrics --quiet 2>"$WORK/b.log" & PIDS+=($!)
wait_healthy 18081
wait_healthy 18082

echo "-- openai client against hbit serve"
timeout 300 python3 scripts/openai_client_check.py http://127.0.0.1:18081/v1

echo "-- nginx in front of two replicas"
mkdir -p "$WORK/nginx"
"$NGINX" -p "$WORK/nginx" -c "$PWD/docs/nginx/hbit-replicas.conf" & PIDS+=($!)
for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:18080/health >/dev/null 2>&1 && break
  sleep 0.1
done
for i in $(seq 1 8); do
  curl -fs --max-time 60 http://127.0.0.1:18080/v1/completions \
    -d "{\"prompt\": \"Request $i\", \"max_tokens\": 8, \"temperature\": 0}" >/dev/null
done
# A streamed answer passes through nginx chunk by chunk and ends with [DONE].
curl -fsN --max-time 60 http://127.0.0.1:18080/v1/completions \
  -d '{"prompt": "Once", "max_tokens": 8, "stream": true}' | tail -n 2 | grep -q '^data: \[DONE\]'
for port in 18081 18082; do
  served=$(curl -fs "http://127.0.0.1:$port/metrics" \
    | awk '/^hbit_sequences_total\{outcome="completed"\}/ {print $2}')
  echo "replica :$port completed $served requests"
  if [ "${served:-0}" -lt 1 ]; then
    echo "replica on port $port answered nothing through nginx" >&2
    exit 1
  fi
done
echo "serve checks passed"
