package main

// The engine's own cost: responder handshakes in this process, no sockets,
// no store, no data plane, timed with the thread's CPU clock (the same
// measure as the node's utime+stime, and blind to other processes).

import (
	"crypto/rand"
	"errors"
	"net/netip"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

func threadCPU() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

// engineCost is the responder engine's own CPU per SA.
type engineCost struct {
	handshake time.Duration // IKE_SA_INIT + IKE_AUTH
	delete    time.Duration // the gateway's INFORMATIONAL that deletes the SA
}

// perSA is the engine's share of what a row's CPU per SA counts: the
// setup and the delete.
func (c engineCost) perSA() time.Duration { return c.handshake + c.delete }

// measureEngine returns the responder engine's CPU time per IKE_SA_INIT +
// IKE_AUTH (PSK, virtual IP, one CHILD SA) and per delete of the SA by
// its gateway, over n SAs, in the configuration the node runs.
func measureEngine(n int, prop, esp ike.ProposalSpec) (engineCost, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	gw, _ := ike.ParseIdentity(gatewayID(1))
	conc, _ := ike.ParseIdentity("conc.bench.example")
	local := netip.MustParseAddrPort("127.0.0.1:500")
	remote := netip.MustParseAddrPort("127.0.0.1:40000")
	res, err := ike.NewEngine(ike.Config{Local: ike.Credentials{ID: conc}, PSKs: ike.PSKMap{gw.String(): []byte(gatewayPSK(1))},
		IKEProposals: []ike.ProposalSpec{prop}, ESPProposals: []ike.ProposalSpec{esp},
		LocalTS:  []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		Pool:     ike.NewPool(netip.MustParsePrefix("10.112.0.0/12")),
		NATTPort: 4500, ForceEncap: true, CookieThreshold: 1000, MOBIKE: true, Rand: rand.Reader})
	if err != nil {
		return engineCost{}, err
	}
	ini, err := ike.NewEngine(ike.Config{IKEProposals: []ike.ProposalSpec{prop}, NATTPort: 40001, ForceEncap: true, Rand: rand.Reader})
	if err != nil {
		return engineCost{}, err
	}
	in := ike.Initiation{Local: remote, Remote: local, Creds: ike.Credentials{ID: gw}, PSK: []byte(gatewayPSK(1)),
		IKEProposals: []ike.ProposalSpec{prop}, ESPProposals: []ike.ProposalSpec{esp},
		TSi:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))},
		TSr:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		RequestVIP: true}
	var spent, setup time.Duration
	iacts, racts := &ike.Ready{}, &ike.Ready{}
	// deliver hands from's messages to engine to, committing the state its
	// steps persist at once (no store here), into out.
	deliver := func(to *ike.Engine, from, out *ike.Ready, timed bool) *ike.Ready {
		out.Reset()
		for _, s := range from.Send {
			for _, m := range s.Messages {
				pkt := ike.Packet{Local: s.Remote, Remote: s.Local, Data: m}
				if timed {
					t := threadCPU()
					to.Handle(time.Now(), pkt, out)
					spent += threadCPU() - t
				} else {
					to.Handle(time.Now(), pkt, out)
				}
			}
		}
		for _, p := range out.Persist {
			to.Committed(p.SPI, p.Version)
		}
		return out
	}
	for i := 0; i < n+n/10; i++ {
		if i == n/10 {
			spent, setup = 0, 0 // warm-up done
		}
		var spi uint64
		iacts.Reset()
		spi, err = ini.Initiate(time.Now(), in, iacts)
		if err != nil {
			return engineCost{}, err
		}
		t := spent
		racts = deliver(res, iacts, racts, true)  // IKE_SA_INIT
		iacts = deliver(ini, racts, iacts, false) // -> IKE_AUTH
		racts = deliver(res, iacts, racts, true)  // IKE_AUTH
		iacts = deliver(ini, racts, iacts, false)
		setup += spent - t
		if sa := ini.SA(spi); sa == nil || !sa.Established() {
			return engineCost{}, errors.New("in-process handshake did not complete")
		}
		var spir uint64
		for _, ev := range racts.Events {
			if ev.Kind == ike.EventIKEEstablished {
				spir = ev.SPIr
			}
		}
		// The gateway deletes the SA, as a row's do.
		iacts.Reset()
		ini.Delete(time.Now(), spi, iacts)
		racts = deliver(res, iacts, racts, true) // INFORMATIONAL (Delete)
		deliver(ini, racts, iacts, false)
		if res.SA(spir) != nil || ini.SA(spi) != nil {
			return engineCost{}, errors.New("in-process delete did not complete")
		}
	}
	return engineCost{handshake: setup / time.Duration(n), delete: (spent - setup) / time.Duration(n)}, nil
}
