package ike

import (
	"net/netip"
	"time"
)

// UniqueIDs is the unique identities policy (auth.unique_ids), as
// strongSwan's uniqueids: what a new IKE SA of a peer identity does about
// the older IKE SAs of the same identity. INITIAL_CONTACT (RFC 7296
// §2.4) asserts that the new IKE SA is the only one between the two
// identities: the peer has forgotten the others (it rebooted).
type UniqueIDs uint8

const (
	// UniqueNever: many IKE SAs per identity; INITIAL_CONTACT ignored.
	UniqueNever UniqueIDs = iota
	// UniqueNo: many IKE SAs per identity; INITIAL_CONTACT replaces the
	// older ones.
	UniqueNo
	// UniqueReplace: a new IKE SA replaces the older ones, with or
	// without INITIAL_CONTACT.
	UniqueReplace
	// UniqueKeep: a new IKE SA is refused while the identity has one;
	// with INITIAL_CONTACT it replaces them.
	UniqueKeep
)

var uniqueNames = [...]string{"never", "no", "replace", "keep"}

func (u UniqueIDs) String() string {
	if int(u) < len(uniqueNames) {
		return uniqueNames[u]
	}
	return "unique(?)"
}

// ParseUniqueIDs reads a policy name: no, never, replace or keep.
func ParseUniqueIDs(s string) (UniqueIDs, bool) {
	for i, n := range uniqueNames {
		if s == n {
			return UniqueIDs(i), true
		}
	}
	return 0, false
}

// UniqueAction is what the Established write of a new IKE SA does about
// the older IKE SAs of its identity.
type UniqueAction uint8

const (
	// UniqueNone: nothing; the SA is not indexed by identity.
	UniqueNone UniqueAction = iota
	// UniqueIndexOnly: index the SA (a later INITIAL_CONTACT or replace
	// finds it); leave the others.
	UniqueIndexOnly
	// UniqueDeleteOlder: delete the older IKE SAs of the identity.
	UniqueDeleteOlder
	// UniqueRefuse: refuse the new IKE SA if the identity has one.
	UniqueRefuse
)

func (a UniqueAction) String() string {
	return [...]string{"none", "index", "delete-older", "refuse"}[min(int(a), 3)]
}

// Action is the policy's answer for a new IKE SA whose first IKE_AUTH
// request did (initialContact) or did not carry INITIAL_CONTACT.
func (u UniqueIDs) Action(initialContact bool) UniqueAction {
	switch {
	case u == UniqueNever:
		return UniqueNone
	case initialContact || u == UniqueReplace:
		return UniqueDeleteOlder
	case u == UniqueKeep:
		return UniqueRefuse
	default:
		return UniqueIndexOnly
	}
}

// Replace deletes the established IKE SA with our SPI spi at once: a newer
// IKE SA of its peer identity replaces it (unique identities). With
// notify, one INFORMATIONAL request with a Delete payload goes to the
// peer, neither retransmitted nor awaited (a peer that rebooted knows the
// SA no more). Its CHILD SAs leave the data plane and its record is
// deleted; its virtual IPs are forgotten here, not released: the
// identity's lease stays with the SA that replaced it. It reports whether
// the SA was there.
func (e *Engine) Replace(now time.Time, spi uint64, notify bool, rd *Ready) bool {
	e.begin(now)
	sa := e.sas[spi]
	if sa == nil || sa.localSPI() != spi || sa.superseded ||
		(sa.state != stateEstablished && sa.state != stateDeleting) {
		return false
	}
	if notify && !sa.idUnknown {
		// No message ID reservation: the SA is deleted in the same write
		// and never sends again.
		m := sa.header(INFORMATIONAL, sa.nextOut, false)
		m.Payloads = []Payload{&Delete{Protocol: ProtoIKE}}
		pkts := sa.seal(e, &m)
		sa.nextOut++
		sa.sendTo(pkts, netip.AddrPort{}, rd)
	}
	sa.forgetVIPs(e)
	sa.terminate(e, "replaced by a newer IKE SA of its identity", rd)
	return true
}

// forgetVIPs lets go of the SA's virtual IPs on this node only: a pool
// shared by the nodes keeps the identity's lease, a pool of this node's
// frees the address (another SA of the identity here keeps its hold).
func (sa *IKESA) forgetVIPs(e *Engine) {
	if pool := sa.pool(e); sa.vip.IsValid() && pool != nil && !sa.vipForeign {
		if f, ok := pool.(interface{ Forget(netip.Addr) }); ok {
			f.Forget(sa.vip)
		} else {
			pool.Release(sa.vip)
		}
		sa.vipForeign = true // released above
	}
	if sa.vip6.IsValid() && e.cfg.Pool6 != nil && !sa.vip6Foreign {
		if f, ok := e.cfg.Pool6.(interface{ Forget(netip.Addr) }); ok {
			f.Forget(sa.vip6)
		} else {
			e.cfg.Pool6.Release(sa.vip6)
		}
		sa.vip6Foreign = true
	}
}
