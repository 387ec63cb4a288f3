#!/bin/bash
# kernel-tier.sh — the kernel ESP test tier (docs/architecture.md, "Tests", tier 3), run by
# `make test-vm`. The build hosts' kernel has XFRM but no ESP, so this
# builds static binaries on the host (CGO_ENABLED=0) into a scratch
# directory, boots Debian's stock kernel under QEMU with run-in-vm.sh (the
# host's / read-only, the scratch directory read-write) and runs there, as
# root, in network namespaces:
#   1. xfrm.test  — concentrator/dataplane/xfrm against the real kernel
#   2. e2e.test -test.run TestKernel — strongSwan (kernel ESP) behind an
#      nftables NAT to concentratord with dataplane.mode xfrm, and two
#      concentratord nodes sharing one etcd (Debian's etcd-server) and
#      the gateway-facing address: one is killed, the route moves to the
#      other, which claims the SA through its NFQUEUE (TestKernelClusterKill),
#      and anycast.mode kernel on a dummy interface (TestKernelAnycastRoutes)
#   3. benchnode --check: make bench-node-vm's xfrm row and burst in
#      miniature (40 gateways at 20/s, then 60 at once, kernel data plane
#      and embedded etcd), so that the benchmark of the kernel data plane
#      keeps running; it fails unless every gateway is established
# Exit status: the tests' (125: the VM failed, 124: timeout). Under CI=true
# a missing prerequisite (qemu, strongSwan, ...) is a failure.
# Environment: VM_* as in run-in-vm.sh; KEEP=1 keeps the scratch directory;
# VM_E2E_RUN narrows the e2e tests (a -test.run pattern, default ^TestKernel; set, it leaves out step 3),
# VM_SKIP_XFRM=1 leaves out xfrm.test, VM_XFRM_RUN narrows it (a -test.run
# pattern, default all).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
GO=${GO:-go}
if [ "$(id -u)" != 0 ]; then
	# The VM needs root (9p export of /, namespaces inside).
	if [ "${CI:-}" = true ]; then echo "kernel-tier: needs root (CI=true: failing)" >&2; exit 1; fi
	echo "kernel-tier: SKIP: needs root"; exit 0
fi
work=$(mktemp -d /tmp/ikf-vm.XXXXXX)
[ "${KEEP:-}" = 1 ] || trap 'rm -rf "$work"' EXIT

t0=$(date +%s)
export CGO_ENABLED=0
"$GO" build -o "$work/concentratord" ./cmd/concentratord
"$GO" test -c -o "$work/xfrm.test" ./concentrator/dataplane/xfrm
"$GO" test -c -o "$work/e2e.test" ./e2e
"$GO" build -o "$work/benchnode" ./cmd/benchnode
t1=$(date +%s)
echo "kernel-tier: static binaries built in $((t1 - t0)) s"

cat >"$work/run.sh" <<'IN'
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export IKEFLEET_VM=1 E2E_BIN_DIR="$PWD"
echo "vm: $(uname -r), $(nproc) vCPU"
rc=0
[ -n "${VM_SKIP_XFRM:-}" ] || ./xfrm.test -test.v -test.count=1 -test.run "${VM_XFRM_RUN:-.}" -test.timeout 4m || rc=1
./e2e.test -test.v -test.count=1 -test.run "${VM_E2E_RUN:-^TestKernel}" -test.timeout 14m || rc=1
if [ -z "${VM_E2E_RUN:-}" ]; then
	./benchnode --concentratord ./concentratord --rows xfrm+embedded --count 40 --rate 20 \
		--burst 60 --burst-config xfrm+embedded --pin=false --timeout 60s --lease-ttl 10s --check || rc=1
fi
exit $rc
IN
rc=0
VM_TIMEOUT=${VM_TIMEOUT:-1200} sh "$root/e2e/vm/run-in-vm.sh" "$work" env CI="${CI:-}" VM_E2E_RUN="${VM_E2E_RUN:-}" VM_SKIP_XFRM="${VM_SKIP_XFRM:-}" VM_XFRM_RUN="${VM_XFRM_RUN:-}" sh run.sh || rc=$?
echo "kernel-tier: VM run $(( $(date +%s) - t1 )) s, total $(( $(date +%s) - t0 )) s, exit $rc"
exit $rc
