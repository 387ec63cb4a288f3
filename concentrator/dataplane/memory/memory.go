// Package memory is a data plane that records CHILD SAs without carrying
// packets: for control-plane tests and load tests of the IKE side.
package memory

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// DataPlane keeps installed CHILD SAs in a map. It records sequence
// number limits (SetSeqLimit) and passes on progress reports a test
// injects (Report), so the node's wiring can be checked without packets.
type DataPlane struct {
	mu        sync.Mutex
	sas       map[uint32]*dataplane.ChildSA
	closed    bool
	installs  uint64
	removes   uint64
	limitSets uint64
	progress  chan dataplane.SeqProgress
	fenced    bool
}

// SetFenced records whether outbound ESP is stopped (dataplane.Fencer).
func (d *DataPlane) SetFenced(f bool) {
	d.mu.Lock()
	d.fenced = f
	d.mu.Unlock()
}

// Fenced reports the last SetFenced.
func (d *DataPlane) Fenced() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fenced
}

var (
	_ dataplane.DataPlane      = (*DataPlane)(nil)
	_ dataplane.AddressUpdater = (*DataPlane)(nil)
	_ dataplane.SeqLimiter     = (*DataPlane)(nil)
	_ dataplane.SeqReporter    = (*DataPlane)(nil)
)

// New returns an empty memory data plane.
func New() *DataPlane {
	return &DataPlane{sas: make(map[uint32]*dataplane.ChildSA), progress: make(chan dataplane.SeqProgress, 1024)}
}

// SetSeqLimit records limit as the SA's OutSeqLimit (List and Get show it).
// An SA that is not installed is an error.
func (d *DataPlane) SetSeqLimit(_ context.Context, inSPI uint32, limit uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	sa, ok := d.sas[inSPI]
	if !ok {
		return fmt.Errorf("memory: no SA with inbound SPI %08x", inSPI)
	}
	sa.OutSeqLimit = limit
	d.limitSets++
	return nil
}

// SeqLimitSets returns how many times SetSeqLimit succeeded.
func (d *DataPlane) SeqLimitSets() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.limitSets
}

// Get returns a copy of the installed SA with inbound SPI inSPI.
func (d *DataPlane) Get(inSPI uint32) (*dataplane.ChildSA, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sa, ok := d.sas[inSPI]
	if !ok {
		return nil, false
	}
	c := *sa
	return &c, true
}

// SeqProgress implements dataplane.SeqReporter: it delivers what
// InjectProgress queued (no packets pass, so nothing else makes progress).
func (d *DataPlane) SeqProgress() <-chan dataplane.SeqProgress { return d.progress }

// InjectProgress queues p on SeqProgress as a packet path would (tests); it
// returns false if the channel is full.
func (d *DataPlane) InjectProgress(p dataplane.SeqProgress) bool {
	select {
	case d.progress <- p:
		return true
	default:
		return false
	}
}

func (d *DataPlane) Name() string { return "memory" }

func (d *DataPlane) Install(_ context.Context, sa *dataplane.ChildSA) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	c := *sa
	d.sas[sa.InSPI] = &c
	d.installs++
	return nil
}

func (d *DataPlane) Remove(_ context.Context, inSPI uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	if _, ok := d.sas[inSPI]; ok {
		delete(d.sas, inSPI)
		d.removes++
	}
	return nil
}

func (d *DataPlane) List(context.Context) ([]*dataplane.ChildSA, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*dataplane.ChildSA, 0, len(d.sas))
	for _, sa := range d.sas {
		c := *sa
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].InSPI < out[j].InSPI })
	return out, nil
}

// UpdateAddresses moves an installed CHILD SA to new outer addresses.
func (d *DataPlane) UpdateAddresses(_ context.Context, inSPI uint32, local, remote netip.AddrPort) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return dataplane.ErrClosed
	}
	if sa, ok := d.sas[inSPI]; ok {
		sa.Local, sa.Remote = local, remote
	}
	return nil
}

// Counters reports zero traffic: no packets pass through memory.
func (d *DataPlane) Counters(context.Context) ([]dataplane.Counters, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]dataplane.Counters, 0, len(d.sas))
	for spi := range d.sas {
		out = append(out, dataplane.Counters{InSPI: spi})
	}
	return out, nil
}

// Report reports no traffic and no drops: no packets pass through memory.
func (d *DataPlane) Report(context.Context) (dataplane.Report, error) {
	return dataplane.Report{Drops: map[string]uint64{}}, nil
}

// Len returns the number of installed CHILD SAs.
func (d *DataPlane) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sas)
}

func (d *DataPlane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}
