#!/usr/bin/env bash
# make load-smoke: every ikeload scenario, briefly, against one concentratord
# on loopback (no root, no state store). Prints each run's summary; reports
# go to $OUT (default /tmp/ikeload-smoke). Stops by itself in about 2 minutes.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/bin}
OUT=${OUT:-/tmp/ikeload-smoke}
N=${N:-500}
HOLD=${HOLD:-15s}
mkdir -p "$OUT"
dir=$(mktemp -d /tmp/ikeload-smoke.XXXXXX)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
IKE=${IKE_PORT:-17500} NATT=${NATT_PORT:-17501}
{
  printf 'node: {id: smoke}\nlog: {level: warn, format: text}\nike:\n  listen: [127.0.0.1]\n'
  printf '  port: %d\n  natt_port: %d\n  dpd_delay: 10s\nidentity: {id: conc.example}\nauth:\n  psks:\n' "$IKE" "$NATT"
  awk -v n="$N" 'BEGIN { for (i = 1; i <= n; i++) printf "    - {id: gw%d@iot.example, secret: psk-0123456789ab-%d}\n", i, i }'
  printf 'children:\n  local_ts: [10.30.0.0/24]\n  pool: 10.99.0.0/16\nstatestore: {mode: none}\n'
  # no metrics or admin listener on the host's loopback
  printf 'metrics: {listen: "off"}\nadmin: {listen: ""}\n'
} >"$dir/node.yaml"
"$BIN/concentratord" --config "$dir/node.yaml" >"$dir/node.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  ss -Hlun "sport = :$IKE" | grep -q . && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
ss -Hlun "sport = :$IKE" | grep -q . || { cat "$dir/node.log"; echo "node did not start" >&2; exit 1; }
echo "== concentratord pid $pid on 127.0.0.1:$IKE/$NATT, $N gateways"
for sc in ramp burst steady churn nat-rebind mobike rekey-storm; do
  echo "== $sc"
  "$BIN/ikeload" --server 127.0.0.1 --server-port "$IKE" --server-natt-port "$NATT" --remote-id conc.example \
    --psk 'psk-0123456789ab-{n}' --vip --remote-ts 10.30.0.0/24 --count "$N" --scenario "$sc" --hold "$HOLD" \
    --target-pid "$pid" --json-out "$OUT/$sc.json" --html "$OUT/$sc.html" --progress-every 5s || true
done
