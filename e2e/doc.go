// Package e2e holds ikefleet's network-namespace tests (test tier 2 in
// docs/architecture.md): real strongSwan gateways talk IKEv2 to concentratord and
// ikeload through an nftables NAT, all inside namespaces the test creates.
//
// The non-test files are the harness:
//
//   - [NewTopology]: the gw / nat / conc namespaces with unique names per
//     test, removed (with every process started in them) by t.Cleanup.
//   - [NewStrongSwan]: a standalone charon (userspace ESP through
//     kernel-libipsec) in one namespace, driven with swanctl.
//   - [Binary] and [Topology.StartProcess]: the project's commands, built once
//     per test run, run inside a namespace with output captured.
//   - [NewPKI]: a throw-away ECDSA P-256 CA and end-entity certificates.
//   - [NewCluster] (cluster.go, router.go): the cluster tier's topology — a
//     router namespace spreading the gateways' flows over N concentratord
//     nodes that share one service address ([FlowSpreader]: an nftables flow
//     map and policy routing; a BGP router can stand in for it), a
//     three-member etcd (Debian's etcd-server) over mutual TLS, and
//     strongSwan gateways behind one masquerading NAT, each with its own
//     identity, PSK, inner LAN and IKE ports; [PingStream] records every
//     echo request so outages and losses can be read afterwards.
//
// Every test calls requireNetns first: it needs root, ip, nft, sysctl, charon,
// swanctl and /dev/net/tun. Without them a test skips, except under CI=true,
// where it fails naming what is missing.
//
// Environment: E2E_BIN_DIR=DIR uses prebuilt commands from DIR instead of
// building them; E2E_CHARON_LOGLEVEL=N sets charon's log level (default 1,
// 2 for payload dumps); E2E_CLUSTER_LOGDIR=DIR keeps the cluster tier's
// node and charon logs there; CI=true turns missing prerequisites into
// failures; E2E_CLUSTER_LEASE_TTL=D sets the nodes' statestore.lease_ttl
// (default 3s).
// Namespaces left behind by a test binary that died (its pid is gone) are
// deleted by the next run.
//
// Topology (as in shared/interop/strongswan/netns-up.sh):
//
//	[gw]  lan0 10.20.0.1/24 (inner LAN)
//	[gw]  gw0 10.10.1.2/24 --- nat-gw 10.10.1.1 [nat] nat-conc 192.168.100.1 --- conc0 192.168.100.2/24 [conc]
//	                      nftables masquerade out of nat-conc                    core0 10.30.0.1/24 (inner LAN)
//
// Interface names are fixed (they live in private namespaces, so they never
// clash); namespace names are ikf-<pid>-<n>-{gw,nat,conc}.
package e2e
