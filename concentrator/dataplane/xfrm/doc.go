// Package xfrm is the kernel ESP data plane (dataplane.mode xfrm): CHILD
// SAs become Linux XFRM states, policies and routes, applied through one
// vishvananda/netlink Handle.
//
// # Layout
//
// Pure builders (BuildStates, BuildPolicies, BuildRouteTargets) turn a
// dataplane.ChildSA into netlink values and are unit-tested without root;
// DataPlane applies them. Installing is idempotent (EEXIST is success),
// dumps are retried on netlink.ErrDumpInterrupted.
//
//   - States: tunnel mode over IPv4 or IPv6, ESP-in-UDP (espinudp; the
//     ports come from the SA, 4500 when zero) when the SA is encapsulated —
//     a NAT was detected or, by default (ike.force_encap), claimed so that a
//     peer's IKE and ESP share one 5-tuple for ECMP — and plain ESP when
//     not. States carry no selector family (XFRM_STATE_AF_UNSPEC, as
//     strongSwan's): the policies select the traffic, so one CHILD SA
//     carries IPv4 and IPv6 whatever its outer family. AES-GCM-8/12/16
//     (rfc4106(gcm(aes))), ChaCha20-Poly1305 (rfc7539esp(chacha20,poly1305)),
//     AES-CBC or AES-CTR with HMAC-SHA2-256/384/512 (truncated to 128/192/256
//     bits), HMAC-SHA1-96 and AES-XCBC-96 for old peers. ESN SAs get the
//     configured replay window; non-ESN SAs the kernel's legacy maximum, 32.
//   - Policies: out, in and fwd for every pair of local and remote selector
//     prefixes (ranges are split into prefixes; ports must be any or one).
//     Priorities put more specific selectors first. Policies are read
//     back with this package's own dump (policydump.go): the library's
//     parser takes an IPv6 address whose last 12 bytes are zero
//     (fd00:20::) for an IPv4 one.
//   - Request IDs: each SA takes a slot in a reserved reqid range, out =
//     base+2*slot, in = out+1. The range is how a restarted node recognises
//     its own states and policies (Reconcile, List); anything outside it is
//     foreign and never touched, and a foreign policy holding a selector we
//     need fails the install instead of being replaced. A rekey's successor
//     takes over the predecessor's policies; removing the predecessor then
//     leaves them alone.
//   - Routes: the xfrm output path needs a route to exist before the policy
//     lookup replaces it with the tunnel. A virtual IP in a configured pool
//     is covered by one route for the whole pool (a fleet of 100k peers
//     costs one route, not 100k); remote selectors outside every pool get
//     one shared, reference-counted route each. Routes go out of the
//     interface that reaches the peer (through its gateway when that is of
//     the route's family; an IPv4 selector over an IPv6 path gets a route on
//     the interface alone), carry route protocol 225 (0xe1, our
//     marker) and, where we have one, a source address inside the local
//     selectors so traffic the node itself sends matches the out policy.
//     Pool routes stay while the node runs.
//
// At start New sets the SPD hash thresholds (hthresh4 0 32 by default: the
// per-peer /32 policies are hashed instead of walked in one priority-sorted
// list on every insert) and installs the MSS clamp.
//
// # Expiries
//
// Every state carries kernel packet limits (StateLimits): a non-ESN SA's
// 32-bit sequence number must never wrap, so its states expire softly at
// 2^32-2^24 packets and hard at 2^32-2^16 (SeqSoftPackets,
// SeqHardPackets); ESN SAs have no packet limit unless Options set one.
// Options add optional byte limits (ByteSoftLimit, ByteHardLimit) and may
// lower the packet limits (tests use 5 and 10). New subscribes to the
// kernel's XFRM expire multicast group (XFRMNLGRP_EXPIRE) on its own
// netlink socket in the data plane's namespace; a reader goroutine turns
// the expiries of our ESP states (by reqid range; foreign states are
// ignored) into dataplane.Expiry values on the buffered Expiries channel,
// under the pair's inbound SPI (an outbound state is mapped through its
// slot). Soft: the node should rekey; hard: the kernel has already deleted
// that state. Both states of a pair expire on their own, so a CHILD SA may
// be reported once per direction. The reader never blocks: expiries that
// find the channel full are dropped and counted (ExpiriesDropped), as are
// socket overruns (ENOBUFS). Close stops the reader and closes the
// channel. An address move that re-adds the states gives the new ones what
// the old had left of their limits (the kernel's counters start over, the
// sequence numbers do not).
//
// # Sequence numbers
//
// A CHILD SA restored or moved with its keys must never send a sequence
// number twice (with AES-GCM and ChaCha20-Poly1305 it is the nonce) and
// should not accept an old one. States are therefore added with a
// netlink message of this package's own (stateAddMessage; the netlink
// library forces an ESN state's counters to zero): the outbound state's
// replay state holds oseq = OutSeq (the first packet carries OutSeq+1),
// the inbound state's seq = InSeqLow with every bitmap bit set (so
// numbers up to InSeqLow are refused), as XFRMA_REPLAY_VAL or, with ESN,
// XFRMA_REPLAY_ESN_VAL with the high words. An address move carries the
// replay state over the same way (ESN included), the outbound number
// jumping ahead by moveSeqSlack.
//
// The kernel cannot stop an SA at OutSeqLimit: it sends on past it. The
// margin between the progress report (limit-margin, see
// dataplane.SeqProgress) and the limit is the time the node has to commit
// the next reservation. With a margin of half a block, renewals come
// every half block, so the write window is the time between renewals: at
// least about a minute once the engine's doubling of the block (when
// renewals come less than 60 s apart) has caught up with the SA's rate,
// shorter while it ramps up (a 4096-packet block at 10,000 packets/s
// leaves 0.2 s). A kernel seen past the limit is logged and counted
// (SeqStats OverLimit), after the fact.
//
// Progress comes from the kernel's async events (XFRM_MSG_NEWAE on
// XFRMNLGRP_AEVENTS): a state reports when its number has moved by its
// replay threshold (XFRMA_REPLAY_THRESH) since its last event. Each state
// is added with the threshold to its next report and no event timer
// (XFRMA_ETIMER_THRESH 0); a reader on its own socket turns the events of
// our states into SeqProgress. Because the kernel counts from its last
// event and a renewal answered with OutSeq+block puts the next report
// block/2 after the reported number, the threshold does not change from
// one renewal to the next. Cost per CHILD SA, counted by the kernel tests
// and the model tests: one event per report and one XFRM_MSG_GETAE (the
// other direction's number for the report); SetSeqLimit needs no round
// trip while the block stays the same and one or two XFRM_MSG_NEWAE when
// it changes; an idle SA costs nothing. Polling instead would cost every
// SA, busy or not, on every poll: measured in the VM tier (Linux 6.1 under
// TCG, 500 SAs, BenchmarkKernelSeqPoll) a poll with XFRM_MSG_GETAE takes
// 1.45 ms per SA (two round trips) and a state dump 0.41 ms per SA, every
// poll, and a poll interval must stay below the write window. If the
// event socket overflows (ENOBUFS) every SA is read once (two GETAE each)
// and the thresholds set again.
//
// Subscribing to the async events turns them on for every state of the
// network namespace: states of other software keep the kernel's defaults
// (net.core.xfrm_aevent_rseqth = 2 packets, xfrm_aevent_etime = 1 s) and
// send events that the reader counts and ignores (SeqStats Foreign);
// where other IPsec software shares the namespace, raise those sysctls.
//
// # Sockets
//
// The node's UDP 4500 socket must carry UDP_ENCAP_ESPINUDP
// (EnableESPInUDP, called through DataPlane.ConfigureSocket): the kernel
// then decapsulates ESP-in-UDP itself while IKE (non-ESP marker) and NAT-T
// keepalives still reach the socket. Without it, ESP sits unread in the
// socket and is never decrypted.
//
// # MTU, PMTU and MSS
//
// ESP-in-UDP in tunnel mode adds 20 (outer IPv4) + 8 (UDP) + 8 (ESP header)
// + 8 (IV of GCM/ChaCha; 16 for CBC) + 2..17 (padding and trailer) + 16 (ICV)
// bytes: about 60-75 per packet. The kernel accounts for it in the XFRM
// bundle's MTU: an inner IPv4 packet without DF is encrypted whole and
// the outer packet is fragmented; a packet with DF (and every IPv6 packet)
// larger than the bundle MTU is dropped and answered with ICMP
// "fragmentation needed" / "packet too big" carrying the inner MTU, to the
// local socket or to the sender of a forwarded packet, so PMTU discovery
// works as long as that ICMP reaches it. Outer packets are sent with
// the outer route's PMTU; an ICMP error about an outer packet updates the
// PMTU of the peer's address, which the bundle picks up. Because many paths
// (CGNAT, cellular) drop ICMP, TCP MSS clamping is on by default: the
// nftables table "inet ikefleet_mss" lowers the MSS of TCP SYNs routed into
// a tunnel to the bundle MTU's MSS ("rt mtu") and of SYNs arriving from a
// tunnel to dataplane.xfrm.mss (default 1360, right for a 1500-byte path);
// the kernel never raises an MSS. UDP and other protocols rely on PMTU
// discovery or fragmentation.
//
// # Reconciliation
//
// A node that restarts calls Reconcile with the SAs it knows: those still
// installed are adopted (their slot kept, missing policies or routes
// re-added), the others under our reqids are removed with their policies,
// and routes with our protocol that nothing needs go too. concentratord
// does not persist SAs yet, so it reconciles with none and removes every
// stray an earlier run left.
//
// # Tests
//
// The kernel tests (kernel_test.go) need root and a kernel with ESP; they
// run in the VM tier (make test-vm, e2e/vm/kernel-tier.sh), each in fresh
// network namespaces.
package xfrm
