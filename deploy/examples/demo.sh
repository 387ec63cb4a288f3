#!/usr/bin/env bash
# make demo: a three-node cluster on loopback and 10,000 simulated gateways
# (no root). Node 1 runs the embedded etcd; nodes 2 and 3 use it as an
# external store (plain http is allowed on loopback) with node 1's cluster
# key. Each node listens on its own address, 127.0.0.11..13, on the same
# ports; ikeload plays the ECMP router in front of the anycast address
# 127.0.0.10: each gateway's flow goes to the node a hash of its 5-tuple
# picks among the nodes whose /readyz passes. The run: ramp, churn, node 2
# killed with SIGKILL, node 3 drained (concentratorctl drain); the SAs of
# the nodes that leave move through the cluster's claim path (takeover
# from the dead node, hand-off from the drained one): any gateway that has
# to authenticate again fails the demo. Needs only the binaries in bin/.
#
# Knobs: DEMO_GATEWAYS (10000), DEMO_RATE (setups/s, 0: a window of 100
# in flight), DEMO_HOLD (45s), DEMO_KILL_AFTER / DEMO_DRAIN_AFTER (seconds
# into the hold), DEMO_OUT (where the report goes; default a new
# directory under /tmp).
set -euo pipefail
N=${DEMO_GATEWAYS:-10000}
RATE=${DEMO_RATE:-0}
HOLD=${DEMO_HOLD:-45s}
KILL_AFTER=${DEMO_KILL_AFTER:-10}
DRAIN_AFTER=${DEMO_DRAIN_AFTER:-25}
started=$(( $(date +%s%N) / 1000000 ))
dir=$(mktemp -d /tmp/ikefleet-demo.XXXXXX)
out=${DEMO_OUT:-$dir/report}
mkdir -p "$out"
pids=()
load_pid=""
cleanup() {
  for p in "${pids[@]}" $load_pid; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}" $load_pid; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir/n1" "$dir/n2" "$dir/n3"
}
trap cleanup EXIT

ANY=127.0.0.10
addr() { echo "127.0.0.1$1"; }

# One configuration per node: the PSKs of the whole fleet, the ports
# shared by all, the node's own addresses.
psks="$dir/psks.yaml"
{
  echo "auth:"
  echo "  psks:"
  for i in $(seq 1 "$N"); do
    echo "    - {id: gw$i@iot.example, secret: demo-psk-0123456789-$i}"
  done
} > "$psks"
config() { # node-number store-section
  local k=$1 a
  a=$(addr "$1")
  cat <<EOF
node:
  id: node$k
log:
  level: info
  format: text
ike:
  listen: [$a]
  port: 15500
  natt_port: 15501
  dpd_delay: 0s             # the gateways check liveness; the nodes do not
identity:
  id: conc.example
children:
  local_ts: [10.30.0.0/24]
  pool: 10.99.0.0/16
  dns: [10.30.0.53]
dataplane:
  mode: memory
metrics:
  listen: $a:15580
admin:
  listen: $a:9179
cluster:
  peer_listen: $a:15600
$2
EOF
  cat "$psks"
}
start_node() { # node-number
  bin/concentratord --config "$dir/n$1.yaml" > "$dir/node$1.log" 2>&1 &
  pids[$1]=$!
}
wait_node() { # node-number
  for _ in $(seq 1 300); do grep -q 'msg=listening' "$dir/node$1.log" && return 0; sleep 0.1; done
  cat "$dir/node$1.log" >&2
  echo "node $1 did not start" >&2
  exit 1
}
ms() { echo $(( $(date +%s%N) / 1000000 )); }

mkdir -p "$dir/n1" "$dir/n2" "$dir/n3"
config 1 "statestore:
  mode: embedded
  data_dir: $dir/n1
  etcd_log_level: error     # not a line per slow request on a busy machine
  lease_ttl: 5s" > "$dir/n1.yaml"
start_node 1
wait_node 1
etcd=$(grep -o 'msg="embedded etcd ready".*' "$dir/node1.log" | grep -o 'endpoint=[^ ]*' | head -1 | cut -d= -f2)
[ -n "$etcd" ] || { cat "$dir/node1.log" >&2; echo "no etcd endpoint in node 1's log" >&2; exit 1; }
for k in 2 3; do
  config $k "statestore:
  mode: external
  endpoints: [$etcd]
  cluster_key_file: $dir/n1/cluster.key
  data_dir: $dir/n$k
  lease_ttl: 5s" > "$dir/n$k.yaml"
  start_node $k
done
wait_node 2
wait_node 3
echo "== 3 nodes up: $(addr 1) (embedded etcd $etcd), $(addr 2), $(addr 3); ports 15500/15501; anycast $ANY (ikeload routes)"

echo "== $N gateways: ramp, then ${HOLD} of churn (20%/min); node 2 killed ${KILL_AFTER}s into it, node 3 drained at ${DRAIN_AFTER}s"
targets="$(addr 1),$(addr 2),$(addr 3)"
http="http://$(addr 1):15580,http://$(addr 2):15580,http://$(addr 3):15580"
bin/ikeload --server $ANY --server-port 15500 --server-natt-port 15501 --targets "$targets" --target-http "$http" \
  --start-natt --reconnect --id 'gw{n}@iot.example' --psk 'demo-psk-0123456789-{n}' --remote-id conc.example \
  --vip --remote-ts 10.30.0.0/24 --count "$N" --rate "$RATE" --scenario churn --hold "$HOLD" --dpd 0s --keepalive 0s \
  --no-delete --max-duration 150s --progress-every 1s --label "3-node cluster" \
  --json-out "$out/demo.json" --html "$out/demo.html" > "$out/summary.txt" 2> "$dir/ikeload.err" &
load_pid=$!

# Follow the progress line; act at the planned moments of the hold.
hold_at=""
killed="" drained=""
while kill -0 "$load_pid" 2>/dev/null; do
  line=$(tail -n 1 "$dir/ikeload.err" 2>/dev/null || true)
  [ -n "$line" ] && printf '\r\033[K%s' "${line:0:150}" >&2
  if [ -z "$hold_at" ] && grep -q ' hold ' "$dir/ikeload.err"; then hold_at=$(ms); fi
  if [ -n "$hold_at" ]; then
    into=$(( $(ms) - hold_at ))
    if [ -z "$killed" ] && [ "$into" -ge $(( KILL_AFTER * 1000 )) ]; then
      kill -9 "${pids[2]}"
      killed=$(ms)
      printf '\r\033[K== %s: node 2 killed (SIGKILL)\n' "$(date +%T)" >&2
    fi
    if [ -z "$drained" ] && [ "$into" -ge $(( DRAIN_AFTER * 1000 )) ]; then
      drained=$(ms)
      bin/concentratorctl --addr "$(addr 3):9179" --timeout 20s drain -q > "$dir/drain.out" 2>&1 || { cat "$dir/drain.out" >&2; echo "drain failed" >&2; }
      printf '\r\033[K== %s: node 3 drained: %s\n' "$(date +%T)" "$(head -1 "$dir/drain.out")" >&2
    fi
  fi
  sleep 0.5
done
printf '\r\033[K' >&2
set +e
wait "$load_pid"
rc=$?
load_pid=""
set -e
cp "$dir"/node*.log "$out"/ 2>/dev/null || true

echo "== summary (ikeload, $out/summary.txt):"
cat "$out/summary.txt"
fail=""
reauth=$(grep -o '"reauthentications": [0-9]*' "$out/demo.json" | grep -o '[0-9]*$' || echo "?")
lost=$(grep -o '"lost": [0-9]*' "$out/demo.json" | head -1 | grep -o '[0-9]*$' || echo "?")
[ "$reauth" = 0 ] || fail="$fail re-authentications=$reauth"
[ "$lost" = 0 ] || fail="$fail lost=$lost"
# ikeload exits 1 when some setup attempt failed or timed out (counted by
# reason above); the demo fails on what must not happen in a cluster.
grep -q '"consistent": true' "$out/demo.json" || fail="$fail accounting-inconsistent"
[ "$rc" -le 1 ] || fail="$fail ikeload-exit=$rc"
peak=$(grep -o '"peak_established": [0-9]*' "$out/demo.json" | grep -o '[0-9]*$' || echo 0)
[ "$peak" -ge "$N" ] || fail="$fail fleet-never-complete(peak=$peak)"
[ -n "$killed" ] || fail="$fail node-2-not-killed"
[ -n "$drained" ] || fail="$fail node-3-not-drained"
for k in 1 3; do
  grep -E 'level=(WARN|ERROR)' "$dir/node$k.log" | grep -v 'SA claim failed' | head -3 | sed "s/^/   node $k: /" || true
done
took=$(( ($(ms) - started) / 1000 ))
echo "== report: $out/demo.html (JSON: $out/demo.json, node logs: $out/node*.log)"
echo "== demo took $took s"
if [ -n "$fail" ]; then
  echo "== DEMO FAILED:$fail" >&2
  exit 1
fi
