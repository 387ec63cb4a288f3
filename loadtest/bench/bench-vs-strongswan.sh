#!/usr/bin/env bash
# make bench-vs-strongswan: the same load against one concentratord node and
# against a strongSwan responder (charon), each pinned to the same core, with
# ikeload pinned to the other. Needs root (a network namespace), charon and
# swanctl (Debian strongswan-charon, strongswan-swanctl, libcharon-extra-plugins
# for kernel-libipsec), taskset, and bin/ikeload + bin/concentratord (make build).
#
# In one fresh network namespace, on its loopback (nothing leaves it):
#   1. per authentication (PSK, then ECDSA P-256 certificates, one per
#      gateway; X25519, AES-GCM-256 for IKE and ESP): RATE_N gateways, WINDOW
#      handshakes in flight, against a fresh concentratord, then a fresh charon;
#   2. fleet growth (ECDSA): up to FLEET_N (100,000) gateways, as many as each
#      responder takes within its time bound (FLEET_SECONDS for concentratord,
#      FLEET_SECONDS_STRONGSWAN for charon, which slows down as its SAs
#      grow), the setup rate measured as the SAs grow. An ikeload process
#      holds one socket per gateway: the fleet is split over as many
#      processes as the open file limit needs (FLEET_PER_PROCESS each),
#      running at once, and their reports merged (ikeload merge).
# Then `ikeload compare` prints setups per responder CPU-second (= per core),
# p99 setup latency and their ratios, and writes one HTML report.
#
# Environment: OUT (results dir; default bench-out/), RATE_N (3000), RATE_N_ECDSA
# (1500), FLEET_WINDOW (256), FLEET_N (100000), FLEET_SECONDS (400), FLEET_SECONDS_STRONGSWAN
# (150), FLEET_PER_PROCESS (19000), SKIP_RATE (1: only the fleet growth), WINDOW (64), RESPONDER_CPU (0),
# LOAD_CPU (1), KEEP (1: keep the work directory).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$ROOT/bin}
OUT=${OUT:-$ROOT/bench-out}
RATE_N=${RATE_N:-3000}
RATE_N_ECDSA=${RATE_N_ECDSA:-1500}
FLEET_N=${FLEET_N:-100000}
FLEET_SECONDS=${FLEET_SECONDS:-400}
FLEET_SECONDS_STRONGSWAN=${FLEET_SECONDS_STRONGSWAN:-150}
FLEET_PER_PROCESS=${FLEET_PER_PROCESS:-19000}
WINDOW=${WINDOW:-64}
FLEET_WINDOW=${FLEET_WINDOW:-256}
RESPONDER_CPU=${RESPONDER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
CHARON=${CHARON:-/usr/lib/ipsec/charon}
PROPOSAL=aes256gcm16-prfsha256-x25519
ESP=aes256gcm16
NS=ikf-bench-$$

die() { echo "bench-vs-strongswan: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespace, charon); run: sudo make bench-vs-strongswan"
for c in ip ss taskset swanctl; do command -v "$c" >/dev/null || die "$c not found"; done
[ -x "$CHARON" ] || die "$CHARON not found (apt-get install strongswan-charon strongswan-swanctl libcharon-extra-plugins)"
[ -x "$BIN/ikeload" ] && [ -x "$BIN/concentratord" ] || die "no $BIN/ikeload or $BIN/concentratord (make build)"
[ "$(nproc)" -ge 2 ] || die "needs two CPUs (one for the responder, one for ikeload)"

W=$(mktemp -d /tmp/ikf-bench.XXXXXX)
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  ip netns del "$NS" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "work directory kept: $W" || rm -rf "$W"
}
trap cleanup EXIT

ip netns add "$NS"
ip -n "$NS" link set lo up
# The protected network behind the responders (strongSwan's kernel-libipsec
# routes CHILD SAs through its TUN device and needs a source address in it).
ip -n "$NS" link add core0 type veth peer name core0-peer
ip -n "$NS" addr add 10.30.0.1/24 dev core0
ip -n "$NS" link set core0 up
ip -n "$NS" link set core0-peer up
"$BIN/ikeload" gen-pki --dir "$W/pki" --responder-id conc.example >/dev/null

# ---- responders ----------------------------------------------------------

# conc_config AUTH N: concentratord's defaults except what a bench needs: the
# gateways' credentials, a pool, quiet logs. Embedded etcd (the default).
conc_config() {
  local auth=$1 n=$2 dir=$3
  {
    echo "node: {id: bench}"
    echo "log: {level: warn, format: text}"
    echo "ike:"
    echo "  proposals: [$PROPOSAL]"
    echo "  esp_proposals: [$ESP]"
    echo "identity:"
    echo "  id: conc.example"
    if [ "$auth" = ecdsa ]; then
      echo "  cert: $W/pki/responder.crt"
      echo "  key: $W/pki/responder.key"
      echo "auth:"
      echo "  cas: [$W/pki/ca.crt]"
    else
      echo "auth:"
      echo "  psks:"
      awk -v n="$n" 'BEGIN { for (i = 1; i <= n; i++) printf "    - {id: gw%d@iot.example, secret: psk-0123456789ab-%d}\n", i, i }'
    fi
    echo "children:"
    echo "  local_ts: [10.30.0.0/24]"
    echo "  pool: 10.64.0.0/10"
    echo "statestore:"
    echo "  data_dir: $dir/data"
  } > "$dir/concentratord.yaml"
}

start_conc() { # AUTH N -> sets RPID
  local dir=$W/conc-$RANDOM
  mkdir -p "$dir"
  conc_config "$1" "$2" "$dir"
  taskset -c "$RESPONDER_CPU" ip netns exec "$NS" "$BIN/concentratord" --config "$dir/concentratord.yaml" \
    >"$dir/log" 2>&1 &
  RPID=$!
  PIDS+=("$RPID")
  for _ in $(seq 1 300); do
    # log level warn: no "listening" line; ready once port 500 is bound
    ip netns exec "$NS" ss -Hlun 'sport = :500' | grep -q . && return 0
    kill -0 "$RPID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$dir/log" >&2
  die "concentratord did not start"
}

start_charon() { # AUTH N -> sets RPID
  local auth=$1 n=$2 dir=$W/charon-$RANDOM
  mkdir -p "$dir/run" "$dir/swanctl"/{x509,x509ca,private,conf.d}
  cat >"$dir/strongswan.conf" <<EOF
charon {
  load = random nonce openssl pem pkcs1 pkcs8 x509 pubkey revocation constraints sha2 hmac aes gcm kdf curve25519 kernel-libipsec kernel-netlink socket-default vici
  port = 500
  port_nat_t = 4500
  install_routes = no
  install_virtual_ip = no
  # no DoS protection or cookies: the bench measures the setup path itself
  dos_protection = no
  cookie_threshold = 1000000
  block_threshold = 1000000
  init_limit_half_open = 0
  threads = 16
  ikesa_table_size = 4096
  ikesa_table_segments = 16
  reuse_ikesa = no
  plugins {
    vici { socket = unix://$dir/charon.vici }
    socket-default { use_ipv6 = no }
  }
  filelog { main { path = $dir/charon.log
    default = -1
    ike = 0 } }
  syslog { }
}
swanctl { load = pem pkcs1 pkcs8 x509 pubkey openssl random }
EOF
  local local_auth="auth = psk" remote_auth="auth = psk"
  if [ "$auth" = ecdsa ]; then
    cp "$W/pki/ca.crt" "$dir/swanctl/x509ca/"
    cp "$W/pki/responder.crt" "$dir/swanctl/x509/"
    cp "$W/pki/responder.key" "$dir/swanctl/private/"
    local_auth="auth = pubkey
      certs = responder.crt"
    remote_auth="auth = pubkey"
  fi
  {
    cat <<EOF
connections {
  gw {
    version = 2
    proposals = $PROPOSAL
    encap = yes
    pools = vips
    local { $local_auth
      id = conc.example }
    remote { $remote_auth
      id = %any }
    children { lan { local_ts = 10.30.0.0/24
      esp_proposals = $ESP } }
  }
}
pools { vips { addrs = 10.64.0.0/10 } }
EOF
    if [ "$auth" = psk ]; then
      echo "secrets {"
      awk -v n="$n" 'BEGIN { for (i = 1; i <= n; i++) printf "  ike-%d { id = gw%d@iot.example\n    secret = psk-0123456789ab-%d }\n", i, i, i }'
      echo "}"
    fi
  } >"$dir/swanctl/swanctl.conf"
  # ip netns exec unshares the mount namespace: a private /run for
  # charon.pid. Every exec keeps the PID, so $! is charon's.
  taskset -c "$RESPONDER_CPU" env STRONGSWAN_CONF="$dir/strongswan.conf" ip netns exec "$NS" \
    sh -c 'mount --bind "$1/run" /run && exec "$2"' sh "$dir" "$CHARON" >"$dir/stderr" 2>&1 &
  RPID=$!
  PIDS+=("$RPID")
  for _ in $(seq 1 100); do [ -S "$dir/charon.vici" ] && break; sleep 0.1; done
  [ -S "$dir/charon.vici" ] || { cat "$dir/stderr" >&2; die "charon did not start"; }
  local t0=$SECONDS
  STRONGSWAN_CONF="$dir/strongswan.conf" SWANCTL_DIR="$dir/swanctl" \
    swanctl --load-all --noprompt --uri "unix://$dir/charon.vici" >"$dir/load.log" 2>&1 ||
    { cat "$dir/load.log" >&2; die "swanctl --load-all failed"; }
  echo "   (swanctl loaded the configuration in $((SECONDS - t0)) s)" >&2
}

stop_responder() {
  kill -TERM "$RPID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$RPID" 2>/dev/null || true
  wait "$RPID" 2>/dev/null || true
}

# load NAME AUTH N [ikeload flags...]: one ikeload run against $RPID.
load() {
  local name=$1 label=$2 auth=$3 n=$4; shift 4
  local creds=(--psk 'psk-0123456789ab-{n}')
  [ "$auth" = ecdsa ] && creds=(--issue-ca-cert "$W/pki/ca.crt" --issue-ca-key "$W/pki/ca.key" --ca "$W/pki/ca.crt")
  echo "== $name: $label, $auth, $n gateways" >&2
  taskset -c "$LOAD_CPU" ip netns exec "$NS" "$BIN/ikeload" --server 127.0.0.1 --remote-id conc.example \
    --id 'gw{n}@iot.example' "${creds[@]}" --vip --remote-ts 10.30.0.0/24 --proposal "$PROPOSAL" --esp "$ESP" \
    --count "$n" --window "$WINDOW" --no-delete --target-pid "$RPID" --label "$label" \
    --json-out "$OUT/$name-$label.json" --html "$OUT/$name-$label.html" --progress-every 10s "$@" >&2 || true
}

# fleet NAME AUTH N SECONDS: N gateways split over ikeload processes that
# run at once, each with its range of identities; one merged report.
fleet() {
  local label=$1 auth=$2 n=$3 secs=$4 first=1 k=0 pids=() parts=()
  local creds=(--issue-ca-cert "$W/pki/ca.crt" --issue-ca-key "$W/pki/ca.key" --ca "$W/pki/ca.crt")
  local procs=$(( (n + FLEET_PER_PROCESS - 1) / FLEET_PER_PROCESS ))
  echo "== fleet: $label, $auth, $n gateways in $procs ikeload processes, at most $secs s" >&2
  while [ "$first" -le "$n" ]; do
    local c=$(( n - first + 1 ))
    [ "$c" -gt "$FLEET_PER_PROCESS" ] && c=$FLEET_PER_PROCESS
    k=$((k + 1))
    taskset -c "$LOAD_CPU" ip netns exec "$NS" "$BIN/ikeload" --server 127.0.0.1 --remote-id conc.example \
      --id 'gw{n}@iot.example' "${creds[@]}" --vip --remote-ts 10.30.0.0/24 --proposal "$PROPOSAL" --esp "$ESP" \
      --first "$first" --count "$c" --window $(( (FLEET_WINDOW + procs - 1) / procs )) --no-delete --target-pid "$RPID" \
      --label "$label" --max-duration "${secs}s" --source "127.$((k + 1)).0.0/16" --ports-per-gateway 1 --quiet --no-html \
      --start-when "$W/go-$label" --json-out "$W/fleet-$label-$k.json" > "$W/fleet-$label-$k.txt" 2>&1 &
    pids+=($!)
    parts+=("$W/fleet-$label-$k.json")
    first=$((first + c))
  done
  # All start together, once every process has its gateways prepared
  # (certificates issued, sockets bound).
  local t0=$SECONDS
  while [ "$(cat "$W"/fleet-"$label"-*.txt 2>/dev/null | grep -c '^ikeload: ready')" -lt "$k" ]; do
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || break 2; done
    sleep 0.2
  done
  echo "   (gateways prepared in $((SECONDS - t0)) s)" >&2
  touch "$W/go-$label"
  for p in "${pids[@]}"; do wait "$p" || true; done
  "$BIN/ikeload" merge --label "$label" --json-out "$OUT/fleet-$label.json" "${parts[@]}" >&2 ||
    { cat "$W"/fleet-"$label"-*.txt >&2; die "fleet $label: no reports"; }
}

T0=$(date +%s)
for auth in psk ecdsa; do
  [ "${SKIP_RATE:-0}" = 1 ] && break
  n=$RATE_N
  [ "$auth" = ecdsa ] && n=$RATE_N_ECDSA
  start_conc "$auth" "$n"; load "rate-$auth" concentratord "$auth" "$n"; stop_responder
  start_charon "$auth" "$n"; load "rate-$auth" strongswan "$auth" "$n"; stop_responder
done
# Fleet growth with certificates: neither responder keeps a per-gateway
# credential table then (strongSwan looks PSKs up by scanning its secrets,
# which would dominate), so the rate shows the cost of the SAs themselves.
for r in concentratord strongswan; do
  secs=$FLEET_SECONDS
  if [ $r = concentratord ]; then start_conc ecdsa "$FLEET_N"; else start_charon ecdsa "$FLEET_N"; secs=$FLEET_SECONDS_STRONGSWAN; fi
  fleet "$r" ecdsa "$FLEET_N" "$secs"
  stop_responder
done
T1=$(date +%s)

echo
echo "bench-vs-strongswan: $((T1 - T0)) s; responders pinned to CPU $RESPONDER_CPU, ikeload to CPU $LOAD_CPU"
echo "\"per CPU-second\" is setups per second per responder core: established / responder CPU time during the setup phase."
"$BIN/ikeload" compare --baseline strongswan --html "$OUT/bench-vs-strongswan.html" --json "$OUT/bench-vs-strongswan.json" \
  $(ls "$OUT"/rate-psk-*.json "$OUT"/rate-ecdsa-*.json 2>/dev/null) "$OUT"/fleet-*.json
