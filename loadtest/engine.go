package loadtest

// The one place where the load generator meets the IKE engine's API: the
// rest of the package sees an initiator that reports what happened through
// the sink below. A change of the engine's calling convention (how actions
// come back from Handle and Tick) is absorbed here.

import (
	"net/netip"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// sink receives what the engine asks for and what it reports, in order.
type sink interface {
	send(local, remote netip.AddrPort, msgs [][]byte)
	keepalive(local, remote netip.AddrPort)
	established(now time.Time, spi uint64, proposal string)
	failed(now time.Time, spi uint64, reason string)
	deleted(now time.Time, spi uint64, reason string)
	childInstalled(now time.Time, spi uint64, c *ike.ChildSA)
	childRekeyed(now time.Time, spi uint64, byUs bool)
	childFailed(now time.Time, spi uint64, reason string)
	ikeRekeyed(now time.Time, oldSPI, newSPI uint64)
	addressChanged(now time.Time, spi uint64)
}

// initiator wraps one engine that runs the initiator side of many gateways.
// Not safe for concurrent use: one shard owns it.
type initiator struct {
	eng *ike.Engine
	rd  ike.Ready
	out sink
}

func newInitiator(cfg ike.Config, out sink) (*initiator, error) {
	e, err := ike.NewEngine(cfg)
	if err != nil {
		return nil, err
	}
	return &initiator{eng: e, out: out}, nil
}

func (in *initiator) initiate(now time.Time, ini ike.Initiation) (uint64, error) {
	in.rd.Reset()
	spi, err := in.eng.Initiate(now, ini, &in.rd)
	in.perform(now)
	if err != nil {
		return 0, err
	}
	return spi, nil
}

func (in *initiator) handle(now time.Time, p ike.Packet) {
	in.rd.Reset()
	in.eng.Handle(now, p, &in.rd)
	in.perform(now)
}

func (in *initiator) tick(now time.Time) {
	in.rd.Reset()
	in.eng.Tick(now, &in.rd)
	in.perform(now)
}

// nextDeadline is when tick next has work (zero: nothing pending).
func (in *initiator) nextDeadline(now time.Time) time.Time { return in.eng.NextDeadline(now) }

// remove deletes the IKE SA with our SPI spi (INFORMATIONAL Delete).
func (in *initiator) remove(now time.Time, spi uint64) {
	in.rd.Reset()
	in.eng.Delete(now, spi, &in.rd)
	in.perform(now)
}

// abandon drops a half-open SA without a word to the peer.
func (in *initiator) abandon(spi uint64) {
	in.rd.Reset()
	in.eng.Forget(spi, &in.rd)
	in.rd.Reset()
}

// rekeyChild rekeys the first CHILD SA of the IKE SA; false if it has none
// or is busy.
func (in *initiator) rekeyChild(now time.Time, spi uint64) bool {
	sa := in.eng.SA(spi)
	if sa == nil || !sa.Established() || len(sa.Children()) == 0 {
		return false
	}
	in.rd.Reset()
	in.eng.RekeyChild(now, spi, sa.Children()[0].InSPI, &in.rd)
	return in.performStarted(now)
}

// rekeyIKE rekeys the IKE SA itself; false if nothing was started.
func (in *initiator) rekeyIKE(now time.Time, spi uint64) bool {
	in.rd.Reset()
	in.eng.RekeyIKE(now, spi, &in.rd)
	return in.performStarted(now)
}

// checkLiveness sends a liveness check on the SA now; false if none was
// started (no such SA, or an exchange under way).
func (in *initiator) checkLiveness(now time.Time, spi uint64) bool {
	in.rd.Reset()
	ok := in.eng.CheckLiveness(now, spi, &in.rd)
	in.perform(now)
	return ok
}

// answeredAt reports whether the SA took an authenticated message at now.
func (in *initiator) answeredAt(now time.Time, spi uint64) bool {
	sa := in.eng.SA(spi)
	return sa != nil && !sa.LastReceived().Before(now)
}

// updateAddresses moves the SA to a new local address with MOBIKE; false
// if the SA cannot (no MOBIKE negotiated, or an exchange is outstanding).
func (in *initiator) updateAddresses(now time.Time, spi uint64, local netip.AddrPort) bool {
	in.rd.Reset()
	in.eng.UpdateAddresses(now, spi, local, &in.rd)
	return in.performStarted(now)
}

// performStarted performs the batch and reports whether it sent anything
// (the exchange was started).
func (in *initiator) performStarted(now time.Time) bool {
	sent := len(in.rd.Send) > 0
	in.perform(now)
	return sent
}

func (in *initiator) retransmits() uint64 { return in.eng.Stats().Retransmits }

func localSPI(ev ike.Event) uint64 {
	if ev.Initiator {
		return ev.SPIi
	}
	return ev.SPIr
}

// perform carries out a batch in the engine's order: the load generator
// keeps no state store, so every change is committed at once; then the
// data plane, the sends, the events.
func (in *initiator) perform(now time.Time) {
	rd := &in.rd
	for _, p := range rd.Persist {
		in.eng.Committed(p.SPI, p.Version)
		if p.Kind == ike.PersistIKERekeyed {
			in.out.ikeRekeyed(now, p.OldSPI, p.SPI)
		}
	}
	for _, a := range rd.DataPlane {
		if a, ok := a.(ike.InstallChild); ok {
			in.out.childInstalled(now, localSPIOf(a.SPIi, a.SPIr, in), a.Child)
		}
	}
	for _, a := range rd.Send {
		if a.Keepalive {
			in.out.keepalive(a.Local, a.Remote)
		} else {
			in.out.send(a.Local, a.Remote, a.Messages)
		}
	}
	for _, a := range rd.Events {
		spi := localSPI(a)
		switch a.Kind {
		case ike.EventIKEEstablished:
			in.out.established(now, spi, a.Proposal)
		case ike.EventIKEFailed:
			reason := a.Reason
			if a.Notify != 0 {
				reason = a.Notify.String()
			}
			in.out.failed(now, spi, reason)
		case ike.EventIKEDeleted:
			in.out.deleted(now, spi, a.Reason)
		case ike.EventChildRekeyed:
			in.out.childRekeyed(now, spi, a.Reason == "rekeyed by us")
		case ike.EventChildFailed:
			reason := a.Reason
			if a.Notify != 0 {
				reason = a.Notify.String()
			}
			in.out.childFailed(now, spi, reason)
		case ike.EventAddressChanged:
			in.out.addressChanged(now, spi)
		}
	}
	rd.Reset()
}

// localSPIOf picks our SPI out of an SPI pair: the one the engine knows.
func localSPIOf(spii, spir uint64, in *initiator) uint64 {
	if in.eng.SA(spii) != nil {
		return spii
	}
	return spir
}
