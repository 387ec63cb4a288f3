#!/usr/bin/env bash
# make demo: one concentrator node on loopback and a fleet of simulated
# gateways with per-device PSKs. Needs only the binaries in bin/.
set -euo pipefail
N=${DEMO_GATEWAYS:-50}
dir=$(mktemp -d /tmp/ikefleet-demo.XXXXXX)
conc_pid=""
cleanup() {
  [ -n "$conc_pid" ] && kill "$conc_pid" 2>/dev/null && wait "$conc_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
{
  sed '/^auth:/,$d' deploy/examples/demo.yaml
  echo "auth:"
  echo "  psks:"
  for i in $(seq 1 "$N"); do
    echo "    - {id: gw$i@iot.example, secret: demo-psk-0123456789-$i}"
  done
  sed -n '/^children:/,$p' deploy/examples/demo.yaml
} > "$dir/concentratord.yaml"
bin/concentratord --config "$dir/concentratord.yaml" > "$dir/node.log" 2>&1 &
conc_pid=$!
for _ in $(seq 1 50); do grep -q 'msg=listening' "$dir/node.log" && break; sleep 0.1; done
grep -q 'msg=listening' "$dir/node.log" || { cat "$dir/node.log"; echo "node did not start" >&2; exit 1; }
echo "== concentratord up on 127.0.0.1:15500/15501 with $N per-device PSKs"
echo "== $N gateways: IKE_SA_INIT + IKE_AUTH, virtual IP, CHILD SA, hold 1s, delete"
bin/ikeload --server 127.0.0.1 --server-port 15500 --server-natt-port 15501 \
  --id 'gw{n}@iot.example' --psk 'demo-psk-0123456789-{n}' --remote-id conc.example \
  --vip --remote-ts 10.30.0.0/24 --count "$N" --rate 200 --hold 1s
if command -v curl >/dev/null; then
  echo "== metrics (http://127.0.0.1:15580/metrics, some of them):"
  curl -fsS http://127.0.0.1:15580/metrics | grep -E '^ikefleet_(handshakes_total|handshake_failures_total|ike_sas\{state="established"\}|child_sas|rekeys_total)' || true
  echo "== readiness: $(curl -s http://127.0.0.1:15580/readyz | tr '\n' ' ')"
fi
echo "== node log (first lines):"
head -n 8 "$dir/node.log"
echo "   ... $(grep -c 'IKE_SA established' "$dir/node.log") IKE_SA established, $(grep -c 'CHILD_SA installed' "$dir/node.log") CHILD_SA installed, $(grep -c 'IKE_SA deleted' "$dir/node.log") deleted"
