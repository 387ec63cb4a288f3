#!/bin/bash
# bench-node-vm.sh — `make bench-node-vm`: benchnode's rows with the kernel
# data plane (dataplane xfrm: the default wherever the kernel can install
# an ESP state) beside the memory rows, in the kernel tier's VM (Debian's
# stock kernel under QEMU; the build hosts' kernel has no ESP). Builds
# static binaries on the host into a scratch directory and runs benchnode
# there as root, the node pinned to vCPU 0 and the gateways to vCPU 1.
#
# The VM emulates its CPU (TCG): everything runs 15-20 times slower than
# on the host, and not uniformly (the kernel's work, heavy in memory
# accesses, more than the engine's arithmetic). So read only what one run
# compares: a row against the engine measured in the same VM, and the xfrm
# rows against the memory rows (the kernel's share of an SA's cost). The
# embedded etcd writes to the VM's tmpfs: its fsyncs cost nothing there.
#
# Environment: BENCH_NODE_VM_FLAGS (benchnode's flags; default below),
# VM_* as in run-in-vm.sh (VM_SMP defaults to 2 here), KEEP=1 keeps the
# scratch directory (with --cpuprofile FILE, give FILE under /work/...:
# the VM writes only to the scratch directory, which it sees as its cwd).
# Exit status: benchnode's (125: the VM failed, 124: timeout).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
GO=${GO:-go}
if [ "$(id -u)" != 0 ]; then
	echo "bench-node-vm: needs root (9p export of /, namespaces inside)" >&2
	exit 1
fi
work=$(mktemp -d /tmp/ikf-vmbench.XXXXXX)
[ "${KEEP:-}" = 1 ] || trap 'rm -rf "$work"' EXIT
CGO_ENABLED=0 "$GO" build -o "$work/" ./cmd/benchnode ./cmd/concentratord
# 400 gateways at 40/s: under TCG the node's core handles about 50
# handshakes a second. A lease of 10 s: a node whose embedded etcd starts
# slowly under TCG could miss the default 3 s at its start, and exit.
flags=${BENCH_NODE_VM_FLAGS:---rows memory+none,xfrm+none,memory+embedded,xfrm+embedded --count 400 --rate 40 --burst 500 --burst-config xfrm+embedded --lease-ttl 10s}
# shellcheck disable=SC2086 # flags are words
VM_SMP=${VM_SMP:-2} VM_TIMEOUT=${VM_TIMEOUT:-1800} sh "$root/e2e/vm/run-in-vm.sh" "$work" ./benchnode --concentratord ./concentratord $flags
