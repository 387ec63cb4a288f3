package ike

import (
	"net/netip"
	"time"
)

// NAT mapping changes seen in the data plane (RFC 7296 §2.23, as
// strongSwan handles XFRM mapping events): a NAT in front of the peer
// re-maps its address or port (a carrier NAT timing out, a CPE reboot),
// and authenticated ESP-in-UDP arrives from the new mapping while we keep
// sending to the old one. The data plane reports it (PeerMoved); the
// engine sends a liveness check to the new address, and the peer's
// authenticated answer from there moves the SA as any authenticated
// message from a peer behind a NAT does (mayMove). Peers not behind a NAT
// never move this way.

// MappingCheckInterval bounds the liveness checks one SA sends for
// mapping changes.
const MappingCheckInterval = time.Second

// PeerMoved reports that authenticated ESP for the CHILD SA with our
// inbound SPI inSPI came from newRemote, not from the address the SA
// sends to. If the peer is behind a NAT, a liveness check goes to
// newRemote (at most one per MappingCheckInterval, and none while another
// exchange is under way: the data plane reports again); its answer moves
// the SA. It returns whether a check was sent.
func (e *Engine) PeerMoved(now time.Time, inSPI uint32, newRemote netip.AddrPort, rd *Ready) bool {
	e.begin(now)
	sa := e.inSPIs[inSPI]
	if sa == nil || sa.state != stateEstablished || sa.childByIn(inSPI) == nil || newRemote == sa.Remote || !newRemote.IsValid() {
		return false
	}
	if !sa.natRemote {
		e.stats.MovesRefused++
		return false
	}
	if !sa.lastMapCheck.IsZero() && now.Sub(sa.lastMapCheck.Time()) < MappingCheckInterval {
		return false
	}
	sa.flushDirty(e, rd)
	if sa.req != nil || !sa.idKnown(now, e, rd) {
		return false
	}
	sa.lastMapCheck = stampOf(now)
	e.stats.MappingChecks++
	sa.requestTo(now, e, INFORMATIONAL, nil, newRemote, rd)
	sa.req.mapCheck = true
	return true
}
