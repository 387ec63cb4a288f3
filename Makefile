# ikefleet — see README.md. Every target works on a fresh Debian machine
# once .ci/run (or `make deps`) has installed the packages.
SHELL := /bin/bash
GO ?= go
BIN := bin
PKGS := ./...
STATICCHECK_VERSION := v0.8.2
TOOLS := $(CURDIR)/.tools
FUZZTIME ?= 10s

.PHONY: all build test test-unit test-race test-fuzz test-chart test-e2e test-cluster test-vm bench bench-sim bench-node bench-node-vm bench-vs-strongswan load-smoke bench-cluster test-flood test-faults test-hardening fuzz-smoke fuzz generate lint run demo clean deps

all: build

# concentratord --version: git describe, else the toolchain's build info.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)
LDFLAGS := $(if $(VERSION),-X github.com/ikefleet/ikefleet/internal/buildinfo.Version=$(VERSION))

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# Every tier whose prerequisites are here: staticcheck (lint), unit and
# in-process tests, then the network-namespace interop tests with
# strongSwan (root), then the kernel ESP tier in a QEMU VM (root). Under
# CI=true a missing prerequisite fails the run instead of skipping.
test: lint test-unit test-race test-fuzz test-chart test-e2e test-vm

test-unit:
	$(GO) vet $(PKGS)
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /e2e)

# The unit tier again under the race detector (part of make test), with
# -short: TestClusterECMP runs 60 gateways instead of 500 (the same
# joins, leaves, kill and checks), TestFleetRekeySmoothing 500 instead
# of 2,000, TestMODPRoundTrip skips the 3072- and 4096-bit groups; under
# the race detector's 5-10x slowdown the full sizes alone would take
# longer than the rest of the tier.
test-race:
	$(GO) test -race -short -count=1 -timeout 30m $$($(GO) list ./... | grep -v /e2e)

# deploy/: the Helm chart rendered with Helm's packages and decoded into
# Kubernetes API types, the values schema, the Dockerfile parsed with
# BuildKit's parser. A module of its own (deploy/charttest) keeps Helm and
# Kubernetes out of go.mod; its first build takes about 6 minutes here.
test-chart:
	cd deploy/charttest && $(GO) vet ./... && $(GO) test -count=1 ./...

test-e2e: build
	E2E_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 20m ./e2e/...

# The cluster tier alone (part of test-e2e; root): three concentratord
# nodes (user-space data plane) sharing one service address behind a
# router namespace that spreads flows over them, a three-member etcd
# (Debian's etcd-server) over mutual TLS, 20 strongSwan gateways behind a
# masquerading NAT pinging through their tunnels; a live move, an etcd
# follower and leader kill, a node kill -9, a node cut off from etcd for
# 10 s (it fences itself, the others take over, it rejoins). Prints the
# cluster-* figures (outage per gateway, lost pings, claims, times to fence
# and takeover). About 4 minutes.
test-cluster: build
	E2E_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -run '^TestCluster$$' -timeout 10m ./e2e/

# Kernel ESP tier: this host's kernel has no ESP, so the xfrm data plane's
# tests and the strongSwan (kernel ESP) end-to-end test run in a VM booting
# Debian's stock kernel (e2e/vm/kernel-tier.sh; ~3 min under TCG).
test-vm:
	GO=$(GO) bash e2e/vm/kernel-tier.sh

# Micro-benchmarks (handshake vs its cryptographic floor, ciphers, ESP...).
bench:
	$(GO) test -run '^$$' -bench . -skip 'RekeySmoothing|MemoryPerSA|RestoreRekeys' -benchtime 2s ./concentrator/...

# Fleet-scale simulations: 100,000 gateways through two rekey cycles
# (peak/mean per scheduler), 1,000,000 SAs in one engine (B/SA, idle CPU),
# and 1,000,000 SAs restored after a minute down (peak/mean of the rekeys
# in the hour after). About forty minutes on a shared 2-core machine.
bench-sim:
	$(GO) test -run '^$$' -bench 'RekeySmoothing|MemoryPerSA|RestoreRekeys' -benchtime 1x -timeout 60m ./concentrator/ike/

# What a node costs per SA, end to end: concentratord as a child process
# pinned to CPU 0 in each configuration (data plane x state store), driven
# over loopback by simulated gateways on CPU 1; CPU per SA (setup+delete)
# from /proc, p99 setup, RSS per SA, each against the engine's own cost
# measured in the same run; then BURST gateways at once. userspace rows
# need root (TUN). The last row is strongSwan's charon (kernel-libipsec)
# under the same load, pinned the same way, in a network namespace of its
# own: root, skipped when charon is not installed. BENCH_NODE_FLAGS='--scale
# 100000 --rate 400' adds the cost of a setup and delete at 1,000 vs
# 100,000 established SAs (20,000 gateways coming and going at 400/s at
# each, then at 1,000 again after deleting down to it; about ten minutes;
# at 1,000/s a node holding 100,000 SAs has no core left to measure
# with). The rows run at each of BENCH_NODE_RATES new SAs a second:
# 1,000, and 400, where setups come too far apart to share an etcd
# transaction (issue 10 measures at both). Each row and the burst also
# print where the node's CPU went, from its CPU profile, kept as
# BENCH_NODE_PROFILE.<row> for go tool pprof (BENCH_NODE_PROFILE= : none).
BURST ?= 10000
BENCH_NODE_RATES ?= 1000,400
BENCH_NODE_PROFILE ?= $(BIN)/bench-node.cpu
BENCH_NODE_FLAGS ?=
bench-node: build
	$(BIN)/benchnode --concentratord $(BIN)/concentratord --burst $(BURST) --rates $(BENCH_NODE_RATES) --cpuprofile=$(BENCH_NODE_PROFILE) $(BENCH_NODE_FLAGS)

# bench-node's rows with the kernel data plane (dataplane xfrm, the
# default wherever the kernel can install an ESP state) beside the memory
# rows, and a burst against xfrm+embedded, in the kernel tier's VM (this
# host's kernel has no ESP): 400 gateways at 40/s, 500 at once; about 3
# minutes. The VM emulates its CPU (15-20 times slower, and not evenly):
# compare rows within one run only. BENCH_NODE_VM_FLAGS replaces the flags.
bench-node-vm:
	GO=$(GO) bash e2e/vm/bench-node-vm.sh

# The same load against one concentratord node and a strongSwan responder
# (charon), each pinned to CPU 0 with ikeload on CPU 1, in a network
# namespace of its own (root): PSK then ECDSA certificates (X25519,
# AES-GCM-256), then the setup rate as the fleet grows to 100,000 SAs
# (ECDSA; several ikeload processes; strongSwan bounded by time). Prints
# setups per responder core, p99 setup latency and their ratios; writes JSON and
# HTML into $(BENCH_OUT). About 15 minutes. Knobs: see
# loadtest/bench/bench-vs-strongswan.sh (RATE_N, FLEET_N, FLEET_SECONDS...).
BENCH_OUT ?= $(CURDIR)/bench-out
bench-vs-strongswan: build
	OUT=$(BENCH_OUT) BIN=$(CURDIR)/$(BIN) bash loadtest/bench/bench-vs-strongswan.sh

# A short ikeload run of every scenario against a node on loopback (no root).
load-smoke: build
	@bash loadtest/bench/load-smoke.sh

# In-process cluster: three nodes behind one anycast address (memory data
# plane, one embedded etcd, real gRPC between the nodes), CLUSTER_GATEWAYS
# simulated gateways (each its own address and IKE SA; they share a few
# initiator engines) re-hashed as ECMP does when a node joins, leaves and
# is killed. Prints one `cluster:` line (lost, re-authentications, dual
# owners, moves, outage percentiles) and a line of hand-off figures.
# CLUSTER_LEASE_TTL: the nodes' statestore.lease_ttl (the product's
# default is 3s); on a shared 2-core host, the fleet's first minutes keep
# etcd so busy that a 3 s lease is missed and nodes fence themselves.
CLUSTER_GATEWAYS ?= 100000
CLUSTER_LEASE_TTL ?= 10s
bench-cluster:
	@out=$$(CLUSTER_BENCH=1 CLUSTER_GATEWAYS=$(CLUSTER_GATEWAYS) CLUSTER_LEASE_TTL=$(CLUSTER_LEASE_TTL) $(GO) test -v -count=1 -run '^TestClusterECMP$$' -timeout 10m ./concentrator/ 2>&1); \
	  rc=$$?; if [ $$rc -ne 0 ]; then echo "$$out" | grep -E '_test.go:|^--- |^FAIL|^panic|^fatal error|^runtime:|^signal|^cluster:' | tail -40; exit $$rc; fi; echo "$$out" | grep '^cluster:'

# make test: every fuzz target a few seconds (the committed corpora under
# testdata/fuzz also run as plain tests in test-unit).
FUZZTIME_TEST ?= 3s
test-fuzz:
	@$(MAKE) --no-print-directory fuzz-smoke FUZZTIME=$(FUZZTIME_TEST)

# The flood test at full size (as root inside a network namespace of its
# own, with forged sources whose answers are routed out of a veth to no
# one; without root on loopback, from ordinary sockets): 1,000 established
# gateways (liveness checks and NAT-T keepalives running) and a node under
# 50,000 spoofed IKE_SA_INIT/s plus 50,000 malformed datagrams/s for 60 s
# (or the generator's maximum, reported) while 1,000 genuine gateways
# connect (and 1,000 before it, for the baseline); the flood comes from a
# process of its own (loadtest.Flood, as ikeload flood). Asserts no
# established SA lost, >= 95% genuine, quiet log, heap and goroutines given
# back; prints the flood rate reached, genuine success, setup latency
# percentiles and p99 under flood vs baseline, peak heap and both
# processes' CPU. make test runs it at 200 / 50 / 2,000/s / 10 s.
test-flood:
	FLOOD_FULL=1 $(GO) test -count=1 -v -run '^TestFloodEstablishedAndGenuine$$' -timeout 20m ./loadtest/

# The node-level fault tests at full size (no root; loopback): etcd out of
# reach for 60 s, the etcd member down 30 s, the embedded member's node
# crashed and restarted, the wall clock stepped +-1 h; 50 gateways each,
# 0 SAs lost, recovery times logged. make test runs them with a 15 s
# outage and a 2 s restart.
FAULT_OUTAGE_S ?= 60
FAULT_RESTART_S ?= 30
test-faults:
	@out=$$(FAULT_OUTAGE_S=$(FAULT_OUTAGE_S) FAULT_RESTART_S=$(FAULT_RESTART_S) $(GO) test -count=1 -v -run '^TestFault' -timeout 20m ./concentrator/ 2>&1); \
	  rc=$$?; echo "$$out" | grep -E '^(--- |FAIL|ok|panic)|faults_test.go'; exit $$rc

# Every hardening test at full size, one command (about 6 minutes): the
# flood (test-flood) and the faults (test-faults).
test-hardening: test-flood test-faults

# Runs every fuzz target for FUZZTIME (make fuzz-smoke FUZZTIME=60s). Go
# 1.26's fuzzing engine can fail a target with a bare "context deadline
# exceeded" when -fuzztime ends while a worker is busy (Go issue 75804,
# fixed in 1.27): such a failure, with no failing input written, runs the
# target once more; any other failure fails at once.
fuzz-smoke:
	@set -e; for pkg in $$($(GO) list ./concentrator/... ./statestore/...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; \
	    for try in 1 2; do \
	      if out=$$($(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg 2>&1); then echo "$$out"; break; fi; \
	      echo "$$out"; \
	      if [ $$try = 1 ] && echo "$$out" | grep -q 'context deadline exceeded' && ! echo "$$out" | grep -q 'Failing input written'; then \
	        echo "== $$f: the fuzzing engine's end-of-run race (no failing input written): once more"; continue; fi; \
	      exit 1; \
	    done; \
	  done; done

generate:
	$(GO) generate ./...

$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: $(TOOLS)/staticcheck
	$(GO) vet $(PKGS)
	$(TOOLS)/staticcheck $(PKGS)

# One node on loopback with the demo configuration (no root needed).
run: build
	$(BIN)/concentratord --config deploy/examples/demo.yaml

# The main job in one command (no root): three nodes on loopback sharing
# node 1's embedded etcd, 10,000 simulated gateways behind an anycast
# address that ikeload routes (ECMP): ramp, churn, node 2 killed, node 3
# drained; SAs move by the claim path, re-authentications fail the demo.
# Prints a summary and the HTML report's path (see README, "The demo").
demo: build
	@bash deploy/examples/demo.sh

clean:
	rm -rf $(BIN)
