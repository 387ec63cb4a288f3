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

// Rekeys keep the post-quantum protection through a real node (RFC 9370
// IKE_FOLLOWUP_KE): our gateways rekey their CHILD SAs and then their IKE
// SAs with a fresh ML-KEM-768 exchange each, and the node rekeys CHILD SAs
// itself (its initiator role, the gateways' engines answering). The
// node's rekey counters and its SAs' proposals show it.
func TestNodeHybridRekeysWithFollowupKE(t *testing.T) {
	const pq = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"
	const pqESP = "aes256gcm16-x25519-ke1_mlkem768"
	const gws = 5
	cfgText := nodeConfig(gws, "  proposals: ["+pq+"]\n  esp_proposals: ["+pqESP+"]\n",
		fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s\n", t.TempDir()))
	n, _, _ := runNode(t, cfgText)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	o := loadOptions(t, n, gws)
	ikeP, err := ike.ParseProposal(pq, false, false)
	if err != nil {
		t.Fatal(err)
	}
	espP, err := ike.ParseProposal(pqESP, true, false)
	if err != nil {
		t.Fatal(err)
	}
	o.IKEProposals, o.ESPProposals = []ike.ProposalSpec{ikeP}, []ike.ProposalSpec{espP}
	counts := func() (childUs, childPeer, ikePeer uint64) {
		s, err := n.metricsSnapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s.Events.ChildRekeysByUs, s.Events.ChildRekeysByPeer, s.Events.IKERekeysByPeer
	}

	// The gateways rekey their CHILD SAs, then (a second fleet) their IKE SAs.
	o.RekeyStorm = true
	rep, err := loadtest.Run(ctx, o)
	if err != nil || rep.Rekeys.Done != gws || len(rep.Rekeys.Failures) > 0 {
		t.Fatalf("CHILD rekey storm: %+v %v", rep.Rekeys, err)
	}
	if _, peer, _ := counts(); peer != gws {
		t.Fatalf("node counted %d CHILD rekeys by peers, want %d", peer, gws)
	}
	o.RekeyIKE = true
	rep, err = loadtest.Run(ctx, o)
	if err != nil || rep.Rekeys.IKE != gws {
		t.Fatalf("IKE rekey storm: %+v %v", rep.Rekeys, err)
	}
	if _, _, ikePeer := counts(); ikePeer != gws {
		t.Fatalf("node counted %d IKE rekeys by peers, want %d", ikePeer, gws)
	}

	// The node rekeys each gateway's CHILD SA while the gateways hold.
	o.RekeyStorm, o.RekeyIKE = false, false
	o.Hold = time.Minute // ended early below
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	done := make(chan struct{})
	go func() { loadtest.Run(hctx, o); close(done) }()
	var up []SAInfo
	for ctx.Err() == nil && up == nil {
		if sas, _ := n.SAs(ctx); len(sas) == gws && allEstablished(sas) {
			up = sas
		}
		time.Sleep(10 * time.Millisecond)
	}
	if up == nil {
		t.Fatal("the gateways never came up")
	}
	old := map[uint32]bool{}
	for _, sa := range up {
		if len(sa.Children) != 1 {
			t.Fatalf("SA %016x has %d CHILD SAs", sa.SPIr, len(sa.Children))
		}
		old[sa.Children[0].InSPI] = true
		if _, err := n.RekeyChild(ctx, sa.SPIr, 0); err != nil {
			t.Fatal(err)
		}
	}
	for ctx.Err() == nil {
		if us, _, _ := counts(); us == gws {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	sas, _ := n.SAs(ctx)
	fresh := 0
	for _, sa := range sas {
		if !strings.Contains(sa.Proposal, "KE1_ML_KEM_768") {
			t.Fatalf("SA %016x: %q", sa.SPIr, sa.Proposal)
		}
		for _, c := range sa.Children {
			if !old[c.InSPI] && strings.Contains(c.Proposal.String(), "KE1_ML_KEM_768") {
				fresh++
			}
		}
	}
	if us, _, _ := counts(); us != gws || fresh != gws {
		t.Fatalf("node rekeyed %d CHILD SAs, %d new ones with ML-KEM, want %d", us, fresh, gws)
	}
	hcancel()
	<-done
}

func allEstablished(sas []SAInfo) bool {
	for _, sa := range sas {
		if sa.State != "ESTABLISHED" || len(sa.Children) == 0 {
			return false
		}
	}
	return true
}
