package concentrator

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/loadtest"
)

// A node configured for hybrid post-quantum key exchange (X25519 plus
// ML-KEM-768 in IKE_INTERMEDIATE, RFC 9370) serves our initiator over
// real sockets, persists the SAs in the embedded state store, and restores
// them, negotiated transforms included, after a restart.
func TestNodeHybridMLKEMPersistsAndRestores(t *testing.T) {
	const pq = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
	ports := freeUDPPorts(t, 2)
	dir := t.TempDir()
	cfgText := nodeConfig(5, "  proposals: ["+pq+"]\n", fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s\n  cluster_key_file: %s.key\n", dir, dir))
	cfgText = strings.Replace(cfgText, "  port: 0\n  natt_port: 0\n", fmt.Sprintf("  port: %d\n  natt_port: %d\n", ports[0], ports[1]), 1)
	n1, dp1, stop1 := runNode(t, cfgText)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o := loadOptions(t, n1, 5)
	p, err := ike.ParseProposal(pq, false, false)
	if err != nil {
		t.Fatal(err)
	}
	o.IKEProposals = []ike.ProposalSpec{p}
	o.Hold = 8 * time.Second
	type result struct {
		rep loadtest.Report
		err error
	}
	res := make(chan result, 1)
	go func() { r, err := loadtest.Run(ctx, o); res <- result{r, err} }()
	var before []SAInfo
	for ctx.Err() == nil {
		sas, _ := n1.SAs(ctx)
		if len(sas) == 5 && dp1.Len() == 5 {
			before = sas
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if before == nil {
		t.Fatal("the gateways never came up")
	}
	for _, sa := range before {
		if !strings.Contains(sa.Proposal, "KE1_ML_KEM_768") {
			t.Fatalf("SA %016x negotiated %q", sa.SPIr, sa.Proposal)
		}
	}
	if err := n1.persist.store.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	stop1()

	n2, dp2, _ := runNode(t, cfgText)
	after, err := n2.SAs(ctx)
	if err != nil || len(after) != 5 || dp2.Len() != 5 {
		t.Fatalf("after restart: %d SAs, %d CHILD SAs in the data plane (%v)", len(after), dp2.Len(), err)
	}
	for _, sa := range after {
		if sa.State != "ESTABLISHED" || !strings.Contains(sa.Proposal, "KE1_ML_KEM_768") {
			t.Fatalf("restored SA %+v", sa)
		}
	}
	r := <-res
	if r.err != nil || r.rep.Established != 5 || r.rep.Deleted != 5 {
		t.Fatalf("gateways: %+v %v (want 5 established and 5 deleted over the restored SAs)", r.rep, r.err)
	}
	if !strings.Contains(r.rep.Proposal, "KE1_ML_KEM_768") {
		t.Fatalf("gateways report proposal %q", r.rep.Proposal)
	}
}
