package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/ikefleet/ikefleet/api/admin/v1"
)

// ---- helpers ----

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

func oneArg(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usagef("%s: want one argument, %s", cmd.CommandPath(), what)
		}
		return nil
	}
}

// parseSPI reads an IKE SPI in hex (16 digits at most, 0x optional).
func parseSPI(s string) (uint64, error) {
	h := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	v, err := strconv.ParseUint(h, 16, 64)
	if err != nil || h == "" || len(h) > 16 || v == 0 {
		return 0, usagef("%q is not an IKE SPI (up to 16 hex digits, not zero)", s)
	}
	return v, nil
}

// parseESPSPI reads an ESP SPI in hex (8 digits at most).
func parseESPSPI(s string) (uint32, error) {
	h := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	v, err := strconv.ParseUint(h, 16, 32)
	if err != nil || h == "" || v == 0 {
		return 0, usagef("%q is not an ESP SPI (up to 8 hex digits, not zero)", s)
	}
	return uint32(v), nil
}

func (a *app) emit(m proto.Message, table func(w io.Writer)) error {
	if a.output == "table" {
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	return encode(a.stdout, a.output, view(m.ProtoReflect()))
}

func when(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().Local().Format(time.RFC3339)
}

func age(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	d := time.Since(t.AsTime())
	switch {
	case d < 0:
		return "in " + (-d).Round(time.Second).String()
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// spiCompletion completes IKE SPIs from the node's SA list.
func (a *app) spiCompletion(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cli, err := a.client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := a.call(cmd)
	defer cancel()
	r, err := cli.ListSAs(ctx, &adminv1.ListSAsRequest{PageSize: 1000})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, sa := range r.Sas {
		out = append(out, hex64(sa.Spi)+"\t"+sa.PeerId+" "+sa.Remote)
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// ---- status, nodes ----

func (a *app) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Cluster status: live nodes, SAs, the state store",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cli, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.call(cmd)
			defer cancel()
			st, err := cli.GetClusterStatus(ctx, &adminv1.GetClusterStatusRequest{})
			if err != nil {
				return err
			}
			return a.emit(st, func(w io.Writer) {
				ss := st.GetStateStore()
				store := ss.GetMode()
				if store != "none" {
					reach := "reachable"
					if !ss.GetReachable() {
						reach = "UNREACHABLE: " + ss.GetLastError()
					}
					store += fmt.Sprintf(", %s, %d changes queued, layout %d", reach, ss.GetQueued(), ss.GetLayout())
				}
				fmt.Fprintf(w, "cluster:\t%d nodes, %d IKE SAs\n", len(st.Nodes), st.TotalSas)
				fmt.Fprintf(w, "answered by:\t%s\n", st.NodeId)
				fmt.Fprintf(w, "state store:\t%s\n", store)
				for _, n := range st.Nodes {
					if r := n.GetKeyRotation(); n.Self && r != nil {
						fmt.Fprintf(w, "key rotation:\t%s\n", keyRotation(r))
					}
				}
				fmt.Fprintln(w)
				nodesTable(w, st.Nodes)
			})
		},
	}
}

func nodesTable(w io.Writer, nodes []*adminv1.Node) {
	fmt.Fprintln(w, "NODE\tSTATE\tEPOCH\tSLOT\tOWNED_SAS\tIKE_SAS\tESTABLISHED\tHALF_OPEN\tCHILD_SAS\tCLUSTER_KEYS\tLAYOUT\tREGISTERED")
	for _, n := range nodes {
		id, state, ikeSAs, est, half, child := n.Id, "LIVE", "-", "-", "-", "-"
		if n.Self {
			id += " *"
			state = n.GetHealth().GetState()
			l := n.GetLoad()
			ikeSAs, est, half, child = fmt.Sprint(l.GetIkeSas()), fmt.Sprint(l.GetEstablished()), fmt.Sprint(l.GetHalfOpen()), fmt.Sprint(l.GetChildSas())
		}
		epoch, slot := "-", "-"
		if n.Registered != nil {
			epoch, slot = fmt.Sprint(n.Epoch), fmt.Sprint(n.Slot)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, state, epoch, slot, n.OwnedSas, ikeSAs, est, half, child,
			clusterKeys(n.ClusterKeyIds, n.SealingKey), layouts(n), age(n.Registered))
	}
}

// layouts: the store layout a node writes and, in parentheses, those
// its release supports ("-" for this node without a registration).
func layouts(n *adminv1.Node) string {
	switch {
	case n.Registered == nil:
		return "-"
	case n.LayoutMax == 0: // a release before store layouts
		return "2 (2)"
	case n.LayoutMin == n.LayoutMax:
		return fmt.Sprintf("%d (%d)", n.Layout, n.LayoutMax)
	}
	return fmt.Sprintf("%d (%d-%d)", n.Layout, n.LayoutMin, n.LayoutMax)
}

// keyRotation describes a node's last pass rewriting records under its
// sealing key.
func keyRotation(r *adminv1.KeyRotation) string {
	counts := fmt.Sprintf("%d records scanned, %d rewritten, %d raced, %d unreadable", r.Scanned, r.Rewritten, r.Raced, r.Unreadable)
	switch {
	case r.Running:
		return fmt.Sprintf("rewriting under key %d for %s: %s so far", r.SealingKey, age(r.Started), counts)
	case r.Error != "":
		return fmt.Sprintf("INTERRUPTED (under key %d, %s ago): %s; %s", r.SealingKey, age(r.Finished), r.Error, counts)
	}
	return fmt.Sprintf("done under key %d, %s ago: %s", r.SealingKey, age(r.Finished), counts)
}

// clusterKeys lists key ids, the sealing one (if known) marked with *.
func clusterKeys(ids []uint32, sealing uint32) string {
	if len(ids) == 0 {
		return "-"
	}
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprint(id)
		if id == sealing {
			parts[i] += "*"
		}
	}
	return strings.Join(parts, ",")
}

func (a *app) nodesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "nodes",
		Short: "Live nodes of the registry (* marks the node that answered)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cli, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.call(cmd)
			defer cancel()
			r, err := cli.ListNodes(ctx, &adminv1.ListNodesRequest{})
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) { nodesTable(w, r.Nodes) })
		},
	}
}

// ---- SAs ----

type filterFlags struct{ identity, remote, node, state string }

func (f *filterFlags) add(cmd *cobra.Command, withNode bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.identity, "identity", "", "peer identity glob (* and ?), e.g. 'gw*@iot.example'")
	fl.StringVar(&f.remote, "remote", "", "peer address, address:port or prefix (192.0.2.0/24)")
	fl.StringVar(&f.state, "state", "", "IKE SA state (ESTABLISHED, INIT_DONE, DELETING...)")
	cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions(
		[]string{"ESTABLISHED", "INIT_DONE", "INIT_SENT", "AUTH_SENT", "DELETING", "REKEYED"}, cobra.ShellCompDirectiveNoFileComp))
	if withNode {
		fl.StringVar(&f.node, "node", "", "node id (this node's only)")
	}
}

func (f *filterFlags) pb() *adminv1.SAFilter {
	if *f == (filterFlags{}) {
		return nil
	}
	return &adminv1.SAFilter{Identity: f.identity, Remote: f.remote, Node: f.node, State: f.state}
}

func (a *app) sasCommand() *cobra.Command {
	sas := &cobra.Command{
		Use:   "sas",
		Short: "IKE SAs of the node: list, show",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usagef("%s: name a subcommand: list or show", cmd.CommandPath())
		},
	}
	var f filterFlags
	var pageSize uint32
	var limit int
	var token string
	list := &cobra.Command{
		Use:   "list",
		Short: "List IKE SAs, filtered, in SPI order",
		Example: `  concentratorctl sas list
  concentratorctl sas list --identity 'gw1*' --state established -o json
  concentratorctl sas list --limit 100 --page-token TOKEN`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cli, err := a.client()
			if err != nil {
				return err
			}
			if limit < 0 {
				return usagef("--limit: must not be negative")
			}
			ctx, cancel := a.call(cmd)
			defer cancel()
			all := &adminv1.ListSAsResponse{}
			next := token
			for {
				size := pageSize
				if limit > 0 && limit-len(all.Sas) < int(size) {
					size = uint32(limit - len(all.Sas))
				}
				r, err := cli.ListSAs(ctx, &adminv1.ListSAsRequest{Filter: f.pb(), PageSize: size, PageToken: next})
				if err != nil {
					return err
				}
				all.Sas = append(all.Sas, r.Sas...)
				all.Total = r.Total
				next = r.NextPageToken
				all.NextPageToken = next
				if next == "" || (limit > 0 && len(all.Sas) >= limit) {
					break
				}
			}
			return a.emit(all, func(w io.Writer) {
				fmt.Fprintln(w, "SPI\tPEER\tREMOTE\tSTATE\tVIRTUAL_IP\tCHILD_SAS\tAGE\tPROPOSAL")
				for _, sa := range all.Sas {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", hex64(sa.Spi), dash(sa.PeerId), sa.Remote, sa.State,
						dash(sa.VirtualIp), len(sa.Children), age(sa.Established), dash(sa.Proposal))
				}
				more := ""
				if all.NextPageToken != "" {
					more = ", more with --page-token " + all.NextPageToken
				}
				fmt.Fprintf(w, "(%d of %d IKE SAs%s)\n", len(all.Sas), all.Total, more)
			})
		},
	}
	f.add(list, true)
	list.Flags().Uint32Var(&pageSize, "page-size", 500, "SAs per call")
	list.Flags().IntVar(&limit, "limit", 0, "list at most this many (0: all)")
	list.Flags().StringVar(&token, "page-token", "", "continue after a previous --limit")

	show := &cobra.Command{
		Use:               "show SPI",
		Short:             "One IKE SA with its CHILD SAs and their traffic",
		Example:           "  concentratorctl sas show 8f2a4c1e00000001",
		Args:              oneArg("the IKE SPI (hex)"),
		ValidArgsFunction: a.spiCompletion,
		RunE: func(cmd *cobra.Command, args []string) error {
			spi, err := parseSPI(args[0])
			if err != nil {
				return err
			}
			cli, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.call(cmd)
			defer cancel()
			sa, err := cli.GetSA(ctx, &adminv1.GetSARequest{Spi: spi})
			if err != nil {
				return err
			}
			return a.emit(sa, func(w io.Writer) { showSA(w, sa) })
		},
	}
	sas.AddCommand(list, show)
	return sas
}

func showSA(w io.Writer, sa *adminv1.SA) {
	role := "responder (the peer started it)"
	if sa.Initiator {
		role = "initiator (we started it)"
	}
	fmt.Fprintf(w, "IKE SA:\t%s on node %s\n", hex64(sa.Spi), sa.Node)
	fmt.Fprintf(w, "state:\t%s, %s\n", sa.State, role)
	fmt.Fprintf(w, "SPIs:\t%s_i %s_r\n", hex64(sa.SpiI), hex64(sa.SpiR))
	fmt.Fprintf(w, "peer:\t%s at %s\n", dash(sa.PeerId), sa.Remote)
	if sa.Policy != "" {
		fmt.Fprintf(w, "policy:\t%s\n", sa.Policy)
	}
	fmt.Fprintf(w, "local:\t%s\n", sa.Local)
	fmt.Fprintf(w, "proposal:\t%s\n", dash(sa.Proposal))
	fmt.Fprintf(w, "virtual IP:\t%s\n", dash(sa.VirtualIp))
	fmt.Fprintf(w, "created:\t%s\n", when(sa.Created))
	fmt.Fprintf(w, "established:\t%s (%s ago)\n", when(sa.Established), age(sa.Established))
	fmt.Fprintf(w, "\nCHILD SAs: %d\n", len(sa.Children))
	if len(sa.Children) == 0 {
		return
	}
	fmt.Fprintln(w, "IN_SPI\tOUT_SPI\tPROPOSAL\tLOCAL_TS\tREMOTE_TS\tBYTES_IN\tBYTES_OUT\tPACKETS_IN\tPACKETS_OUT\tAGE\tREKEY_IN")
	for _, c := range sa.Children {
		counters := []string{"-", "-", "-", "-"}
		if c.HasCounters {
			counters = []string{fmt.Sprint(c.InBytes), fmt.Sprint(c.OutBytes), fmt.Sprint(c.InPackets), fmt.Sprint(c.OutPackets)}
		}
		rekey := "-"
		if c.RekeyAt != nil {
			rekey = strings.TrimPrefix(age(c.RekeyAt), "in ")
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", hex32(c.InSpi), hex32(c.OutSpi), c.Proposal,
			strings.Join(c.LocalTs, ","), strings.Join(c.RemoteTs, ","), strings.Join(counters, "\t"), age(c.Created), rekey)
	}
}

// ---- terminate ----

func (a *app) terminateCommand() *cobra.Command {
	var f filterFlags
	var rate uint32
	var dryRun, noWait, quiet bool
	cmd := &cobra.Command{
		Use:   "terminate [SPI]",
		Short: "Delete IKE SAs: one by SPI, or every SA a filter matches",
		Long: `Delete IKE SAs: the node sends each peer an INFORMATIONAL Delete, and the SA
goes when the peer answers (or the request times out). Name one SA by its SPI,
or select SAs with --identity/--remote/--state (--identity '*' selects all).
Progress goes to stderr; exit code 1 if an SA was still there at the end.`,
		Example: `  concentratorctl terminate 8f2a4c1e00000001
  concentratorctl terminate --identity 'gw1*@iot.example' --dry-run
  concentratorctl terminate --remote 198.51.100.0/24 --rate 50`,
		ValidArgsFunction: a.spiCompletion,
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &adminv1.TerminateSARequest{Filter: f.pb(), Rate: rate, DryRun: dryRun, NoWait: noWait,
				Timeout: durationpb.New(a.timeout)}
			switch {
			case len(args) > 1:
				return usagef("terminate: at most one SPI")
			case len(args) == 1 && req.Filter != nil:
				return usagef("terminate: an SPI or filter flags, not both")
			case len(args) == 1:
				spi, err := parseSPI(args[0])
				if err != nil {
					return err
				}
				req.Spi = spi
			case req.Filter == nil:
				return usagef("terminate: name an SPI or select SAs with --identity, --remote or --state (all: --identity '*')")
			}
			cli, err := a.client()
			if err != nil {
				return err
			}
			stream, err := cli.TerminateSA(cmd.Context(), req)
			if err != nil {
				return err
			}
			last, err := follow(stream, newBar(a.stderr, "terminating", quiet || dryRun), func(b *bar, p *adminv1.TerminateProgress) {
				if noWait {
					b.update(p.Started, p.Matched, "Deletes sent")
				} else {
					b.update(p.Gone, p.Matched, fmt.Sprintf("gone, %d Deletes sent", p.Started))
				}
			})
			if err != nil {
				return err
			}
			if last == nil || !last.Done {
				return errors.New("terminate: the node ended the stream early")
			}
			if err := a.emit(last, func(w io.Writer) {
				switch {
				case dryRun:
					fmt.Fprintf(w, "would terminate %d IKE SAs:\n", last.Matched)
					for _, s := range last.Spis {
						fmt.Fprintln(w, hex64(s))
					}
				case noWait:
					fmt.Fprintf(w, "Deletes sent for %d of %d IKE SAs\n", last.Started, last.Matched)
				default:
					fmt.Fprintf(w, "terminated %d of %d IKE SAs", last.Gone, last.Matched)
					if last.Failed > 0 {
						fmt.Fprintf(w, "; %d still there after %v", last.Failed, a.timeout)
					}
					fmt.Fprintln(w)
				}
			}); err != nil {
				return err
			}
			if last.Failed > 0 {
				return &failedError{fmt.Sprintf("%d IKE SAs not terminated", last.Failed)}
			}
			return nil
		},
	}
	f.add(cmd, false)
	cmd.Flags().Uint32Var(&rate, "rate", 0, "bulk: Deletes started per second (0: the node's default, 200)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be terminated")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the Deletes are sent")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress bar")
	return cmd
}

// ---- rekey ----

func (a *app) rekeyCommand() *cobra.Command {
	var child string
	var ikeSA bool
	cmd := &cobra.Command{
		Use:   "rekey SPI",
		Short: "Rekey an IKE SA's CHILD SA (or the IKE SA itself) now",
		Long: `Rekey now and wait for the result. Without --child the IKE SA's only CHILD SA is
rekeyed (name one with --child when there are several); --ike rekeys the IKE SA.`,
		Example: `  concentratorctl rekey 8f2a4c1e00000001
  concentratorctl rekey 8f2a4c1e00000001 --child c1a2b3c4
  concentratorctl rekey 8f2a4c1e00000001 --ike`,
		Args:              oneArg("the IKE SPI (hex)"),
		ValidArgsFunction: a.spiCompletion,
		RunE: func(cmd *cobra.Command, args []string) error {
			spi, err := parseSPI(args[0])
			if err != nil {
				return err
			}
			req := &adminv1.RekeySARequest{Spi: spi, Ike: ikeSA, Timeout: durationpb.New(a.timeout)}
			if child != "" {
				if ikeSA {
					return usagef("rekey: --child or --ike, not both")
				}
				if req.Child, err = parseESPSPI(child); err != nil {
					return err
				}
			}
			cli, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.call(cmd)
			defer cancel()
			r, err := cli.RekeySA(ctx, req)
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				if r.IkeSa != nil {
					fmt.Fprintf(w, "IKE SA %s rekeyed: now %s (%s_i %s_r), %d CHILD SAs\n", hex64(spi), hex64(r.IkeSa.Spi),
						hex64(r.IkeSa.SpiI), hex64(r.IkeSa.SpiR), len(r.IkeSa.Children))
					return
				}
				fmt.Fprintf(w, "CHILD SA %s of IKE SA %s rekeyed: now %s (in) %s (out), %s\n", hex32(r.OldInSpi), hex64(spi),
					hex32(r.Child.GetInSpi()), hex32(r.Child.GetOutSpi()), r.Child.GetProposal())
			})
		},
	}
	cmd.Flags().StringVar(&child, "child", "", "inbound SPI (hex) of the CHILD SA to rekey")
	cmd.Flags().BoolVar(&ikeSA, "ike", false, "rekey the IKE SA itself")
	return cmd
}

// ---- drain ----

var phaseText = map[adminv1.DrainPhase]string{
	adminv1.DrainPhase_DRAIN_PHASE_REFUSING_NEW: "refusing new SAs",
	adminv1.DrainPhase_DRAIN_PHASE_FLUSHING:     "flushing state",
	adminv1.DrainPhase_DRAIN_PHASE_HANDING_OFF:  "handing off",
	adminv1.DrainPhase_DRAIN_PHASE_DRAINED:      "drained",
	adminv1.DrainPhase_DRAIN_PHASE_RESUMED:      "resumed",
}

func (a *app) drainCommand() *cobra.Command {
	var drop, resume, quiet, handOff bool
	var node string
	cmd := &cobra.Command{
		Use:   "drain",
		Short: "Drain the node: refuse new IKE SAs, persist SA state (--resume undoes it)",
		Long: `Drain the node that answers: new IKE_SA_INIT requests are answered with
TEMPORARY_FAILURE (or dropped with --drop), handshakes under way finish, and SA
state is flushed to the state store. Established SAs stay. The node stays
drained until 'drain --resume' or a restart. Progress goes to stderr.
With --hand-off the node also withdraws its anycast route and waits (up to
--timeout) while the other nodes claim its SAs as their traffic reaches them.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &adminv1.DrainNodeRequest{Node: node, Resume: resume, HandOff: handOff, Timeout: durationpb.New(a.timeout)}
			if drop {
				req.Refuse = adminv1.RefuseMode_REFUSE_MODE_DROP
			}
			cli, err := a.client()
			if err != nil {
				return err
			}
			stream, err := cli.DrainNode(cmd.Context(), req)
			if err != nil {
				return err
			}
			last, err := follow(stream, newBar(a.stderr, "draining", quiet || resume), func(b *bar, p *adminv1.DrainProgress) {
				b.update(0, 0, fmt.Sprintf("%s: %d SAs, %d handshakes, %d changes queued, %d refused, %d moved",
					phaseText[p.Phase], p.Sas, p.HalfOpen, p.Queued, p.Refused, p.HandedOff))
			})
			if err != nil {
				return err
			}
			if last == nil || !last.Done {
				return errors.New("drain: the node ended the stream early")
			}
			return a.emit(last, func(w io.Writer) {
				if resume {
					fmt.Fprintf(w, "%s (%d IKE SAs on the node)\n", last.Message, last.Sas)
					return
				}
				fmt.Fprintf(w, "%s\n%d IKE SAs stay on the node; %d IKE_SA_INITs refused\n", last.Message, last.Sas, last.Refused)
			})
		},
	}
	cmd.Flags().BoolVar(&drop, "drop", false, "drop new IKE_SA_INITs instead of answering TEMPORARY_FAILURE")
	cmd.Flags().BoolVar(&resume, "resume", false, "end the drain: accept new IKE SAs again")
	cmd.Flags().BoolVar(&handOff, "hand-off", false, "withdraw the anycast route and wait for the SAs to move to other nodes")
	cmd.Flags().StringVar(&node, "node", "", "the node's id, checked against the node that answers")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress")
	return cmd
}

// ---- reload ----

func (a *app) reloadCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "reload",
		Short: "Re-read PSKs, CAs, CRLs, the node's certificate and the cluster keys without a restart",
		Long: `Re-read the identity and auth sections of the node's configuration file and the
files they name (PSK secret files, CA certificates, CRLs, the node's
certificate and key), and statestore.cluster_key_file. Established SAs keep
running; new authentications use the new credentials. On error nothing
changes. concentratord also reloads on SIGHUP.

Cluster key rotation: add the new key (a higher id) to every node's key file
and reload each node; records are sealed under the newest key every live
node holds, so a node that has the new key keeps sealing under the old one
until the last node has it too. Then every node rewrites the records under
the new key (logged; "concentratorctl nodes" marks the sealing key with *).
Remove the old key from the files (and reload) only after that.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cli, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.call(cmd)
			defer cancel()
			r, err := cli.ReloadCredentials(ctx, &adminv1.ReloadCredentialsRequest{})
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				fmt.Fprintf(w, "identity:\t%s\n", r.Identity)
				fmt.Fprintf(w, "PSKs:\t%d (%d added, %d removed, %d changed)\n", r.Psks, r.PsksAdded, r.PsksRemoved, r.PsksChanged)
				fmt.Fprintf(w, "CAs:\t%d\n", r.Cas)
				fmt.Fprintf(w, "CRLs:\t%d\n", r.Crls)
				cert := "none (PSK only)"
				if r.Certificate {
					cert = "yes, valid until " + when(r.CertificateNotAfter)
				}
				fmt.Fprintf(w, "certificate:\t%s\n", cert)
				if len(r.ClusterKeys) > 0 {
					fmt.Fprintf(w, "cluster keys:\t%s (* seals: the newest every node holds)\n", clusterKeys(r.ClusterKeys, r.SealingKey))
				}
				fmt.Fprintf(w, "changed:\t%s\n", dash(strings.Join(r.Changed, ", ")))
				if len(r.Ignored) > 0 {
					fmt.Fprintf(w, "needs a restart:\t%s (changed in the file, not reloaded)\n", strings.Join(r.Ignored, ", "))
				}
			})
		},
	}
}

// ---- events ----

func (a *app) eventsCommand() *cobra.Command {
	var f filterFlags
	var kinds []string
	var count int
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow SA events (established, deleted, rekeyed, failed...) until interrupted",
		Long: `Follow the node's SA events as they happen, one per line (-o json: one JSON
object per line; -o yaml: one document each). Without --kind every kind but
dropped messages. Stops after --count events or on Ctrl-C.`,
		Example: `  concentratorctl events
  concentratorctl events --kind ike-established,ike-deleted --identity 'gw1*'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &adminv1.WatchEventsRequest{Filter: f.pb()}
			for _, k := range kinds {
				v, ok := adminv1.EventKind_value["EVENT_KIND_"+strings.ToUpper(strings.ReplaceAll(k, "-", "_"))]
				if !ok || v == 0 {
					return usagef("--kind: unknown event kind %q (one of %s)", k, strings.Join(kindNames(), ", "))
				}
				req.Kinds = append(req.Kinds, adminv1.EventKind(v))
			}
			cli, err := a.client()
			if err != nil {
				return err
			}
			stream, err := cli.WatchEvents(cmd.Context(), req)
			if err != nil {
				return err
			}
			for n := 0; count == 0 || n < count; n++ {
				ev, err := stream.Recv()
				if err != nil {
					if cmd.Context().Err() != nil {
						return nil // interrupted
					}
					return err
				}
				if err := a.event(ev); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f.add(cmd, false)
	cmd.Flags().StringSliceVar(&kinds, "kind", nil, "event kinds, comma-separated: "+strings.Join(kindNames(), ", "))
	cmd.Flags().IntVar(&count, "count", 0, "stop after this many events (0: never)")
	cmd.RegisterFlagCompletionFunc("kind", cobra.FixedCompletions(kindNames(), cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func kindNames() []string {
	var out []string
	for i := int32(1); ; i++ {
		n, ok := adminv1.EventKind_name[i]
		if !ok {
			break
		}
		out = append(out, strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(n, "EVENT_KIND_"), "_", "-")))
	}
	return out
}

func (a *app) event(ev *adminv1.Event) error {
	switch a.output {
	case "json":
		b, err := view(ev.ProtoReflect()).MarshalJSON()
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "%s\n", b)
		return err
	case "yaml":
		fmt.Fprintln(a.stdout, "---")
		return encode(a.stdout, "yaml", view(ev.ProtoReflect()))
	}
	kind := strings.TrimPrefix(ev.Kind.String(), "EVENT_KIND_")
	if ev.Kind == adminv1.EventKind_EVENT_KIND_LOST {
		_, err := fmt.Fprintf(a.stdout, "%s %-16s %d events lost (the watcher fell behind)\n", ev.Time.AsTime().Local().Format(time.TimeOnly), kind, ev.Count)
		return err
	}
	spi := ev.SpiR
	if ev.Initiator {
		spi = ev.SpiI
	}
	line := fmt.Sprintf("%s %-16s %s %s %s", ev.Time.AsTime().Local().Format("15:04:05.000"), kind, hex64(spi), dash(ev.PeerId), dash(ev.Remote))
	if c := ev.Child; c != nil {
		line += fmt.Sprintf(" child %s/%s", hex32(c.InSpi), hex32(c.OutSpi))
		if c.VirtualIp != "" {
			line += " vip " + c.VirtualIp
		}
	}
	if ev.Notify != "" {
		line += " notify " + ev.Notify
	}
	if ev.Reason != "" {
		line += " (" + ev.Reason + ")"
	}
	_, err := fmt.Fprintln(a.stdout, line)
	return err
}
