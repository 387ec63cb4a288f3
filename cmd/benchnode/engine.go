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

// engineHandshakeCPU returns the responder engine's CPU time per
// IKE_SA_INIT + IKE_AUTH (PSK, virtual IP, one CHILD SA), over n
// handshakes, in the configuration the node runs.
func engineHandshakeCPU(n int, prop, esp ike.ProposalSpec) (time.Duration, error) {
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
		return 0, err
	}
	ini, err := ike.NewEngine(ike.Config{IKEProposals: []ike.ProposalSpec{prop}, NATTPort: 40001, ForceEncap: true, Rand: rand.Reader})
	if err != nil {
		return 0, err
	}
	in := ike.Initiation{Local: remote, Remote: local, Creds: ike.Credentials{ID: gw}, PSK: []byte(gatewayPSK(1)),
		IKEProposals: []ike.ProposalSpec{prop}, ESPProposals: []ike.ProposalSpec{esp},
		TSi:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))},
		TSr:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		RequestVIP: true}
	var spent time.Duration
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
			spent = 0 // warm-up done
		}
		var spi uint64
		iacts.Reset()
		spi, err = ini.Initiate(time.Now(), in, iacts)
		if err != nil {
			return 0, err
		}
		racts = deliver(res, iacts, racts, true)  // IKE_SA_INIT
		iacts = deliver(ini, racts, iacts, false) // -> IKE_AUTH
		racts = deliver(res, iacts, racts, true)  // IKE_AUTH
		iacts = deliver(ini, racts, iacts, false)
		if sa := ini.SA(spi); sa == nil || !sa.Established() {
			return 0, errors.New("in-process handshake did not complete")
		}
		// Forget both sides so the tables stay small.
		var spir uint64
		for _, ev := range racts.Events {
			if ev.Kind == ike.EventIKEEstablished {
				spir = ev.SPIr
			}
		}
		ini.Forget(spi, &ike.Ready{})
		res.Forget(spir, &ike.Ready{})
	}
	return spent / time.Duration(n), nil
}
