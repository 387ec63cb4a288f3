// Package memory is a data plane that records CHILD SAs without carrying
// packets: for control-plane tests and load tests of the IKE side.
package memory

import (
	"context"
	"net/netip"
	"sort"
	"sync"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// DataPlane keeps installed CHILD SAs in a map.
type DataPlane struct {
	mu       sync.Mutex
	sas      map[uint32]*dataplane.ChildSA
	closed   bool
	installs uint64
	removes  uint64
}

// New returns an empty memory data plane.
func New() *DataPlane { return &DataPlane{sas: make(map[uint32]*dataplane.ChildSA)} }

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
