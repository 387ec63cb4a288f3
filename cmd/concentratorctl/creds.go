package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	adminv1 "github.com/ikefleet/ikefleet/api/admin/v1"
)

// ---- creds: the cluster's per-device credential store ----

// importBatch is how many credentials one PutCredentials carries (the
// node's limit, statestore.MaxCredentialBatch: one etcd transaction within
// etcd's default --max-txn-ops).
const importBatch = 128

func (a *app) credsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "creds",
		Short: "Per-device PSKs and raw public keys in the cluster's credential store",
		Long: `Manage the credential store (auth.credential_store): per-device pre-shared
keys and raw public keys kept sealed in etcd. Every node follows the store:
additions, rotations and revocations take effect on all nodes without a
restart. Credentials in the configuration file take precedence over the
store for the identities they name.`,
	}
	cmd.AddCommand(a.credsSetCommand("add", "Add a device's credential (or replace it)"),
		a.credsSetCommand("rotate", "Replace a device's credential with a new one"),
		a.credsRevokeCommand(), a.credsListCommand(), a.credsImportCommand())
	return cmd
}

// secretFlags read one credential from the command line.
type secretFlags struct{ pskFile, pskHex, pubkeyFile string }

func (f *secretFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.pskFile, "psk-file", "", "file holding the PSK (trailing newlines ignored; - for stdin)")
	cmd.Flags().StringVar(&f.pskHex, "psk-hex", "", "the PSK in hex (visible in the process list: prefer --psk-file)")
	cmd.Flags().StringVar(&f.pubkeyFile, "pubkey-file", "", "the device's raw public key: PEM \"PUBLIC KEY\" or DER SubjectPublicKeyInfo")
}

func (f *secretFlags) credential(a *app, id string) (*adminv1.Credential, error) {
	set := 0
	for _, v := range []string{f.pskFile, f.pskHex, f.pubkeyFile} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return nil, usagef("give exactly one of --psk-file, --psk-hex and --pubkey-file")
	}
	c := &adminv1.Credential{Id: id, Kind: adminv1.CredentialKind_CREDENTIAL_KIND_PSK}
	var err error
	switch {
	case f.pskHex != "":
		c.Secret, err = decodeHexArg(f.pskHex)
	case f.pskFile == "-":
		c.Secret, err = io.ReadAll(a.stdin)
		c.Secret = []byte(strings.TrimRight(string(c.Secret), "\r\n"))
	case f.pskFile != "":
		c.Secret, err = os.ReadFile(f.pskFile)
		c.Secret = []byte(strings.TrimRight(string(c.Secret), "\r\n"))
	default:
		c.Kind = adminv1.CredentialKind_CREDENTIAL_KIND_PUBKEY
		c.Secret, err = os.ReadFile(f.pubkeyFile)
	}
	return c, err
}

func decodeHexArg(s string) ([]byte, error) {
	s = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(s), "0x"), "0X")
	b := make([]byte, len(s)/2)
	if len(s)%2 != 0 {
		return nil, usagef("hex of odd length")
	}
	for i := range b {
		var v byte
		if _, err := fmt.Sscanf(s[2*i:2*i+2], "%02x", &v); err != nil {
			return nil, usagef("not hex: %q", s)
		}
		b[i] = v
	}
	return b, nil
}

func (a *app) credsSetCommand(use, short string) *cobra.Command {
	var f secretFlags
	cmd := &cobra.Command{
		Use:   use + " IDENTITY",
		Short: short,
		Args:  oneArg("the device's IKE identity"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.credential(a, args[0])
			if err != nil {
				return err
			}
			cli, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.call(cmd)
			defer cancel()
			r, err := cli.PutCredentials(ctx, &adminv1.PutCredentialsRequest{Credentials: []*adminv1.Credential{c}})
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				fmt.Fprintf(w, "stored:\t%s (%s)\n", args[0], kindName(c.Kind))
			})
		},
	}
	f.add(cmd)
	return cmd
}

func (a *app) credsRevokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke IDENTITY",
		Short: "Remove a device's stored credential (its established SAs keep running: terminate them)",
		Args:  oneArg("the device's IKE identity"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cli, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.call(cmd)
			defer cancel()
			r, err := cli.DeleteCredential(ctx, &adminv1.DeleteCredentialRequest{Id: args[0]})
			if err != nil {
				return err
			}
			if !r.Deleted {
				return fmt.Errorf("%s has no stored credential", args[0])
			}
			return a.emit(r, func(w io.Writer) { fmt.Fprintf(w, "revoked:\t%s\n", args[0]) })
		},
	}
}

func kindName(k adminv1.CredentialKind) string {
	if k == adminv1.CredentialKind_CREDENTIAL_KIND_PUBKEY {
		return "pubkey"
	}
	return "psk"
}

func (a *app) credsListCommand() *cobra.Command {
	var limit int
	var after string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List stored credentials (identities and kinds, never secrets)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cli, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := a.call(cmd)
			defer cancel()
			r, err := cli.ListCredentials(ctx, &adminv1.ListCredentialsRequest{PageSize: uint32(limit), PageToken: after})
			if err != nil {
				return err
			}
			return a.emit(r, func(w io.Writer) {
				fmt.Fprintln(w, "IDENTITY\tKIND\tUPDATED")
				for _, c := range r.Credentials {
					fmt.Fprintf(w, "%s\t%s\t%s\n", c.Id, kindName(c.Kind), when(c.Updated))
				}
				fmt.Fprintf(w, "\n%d stored; this node holds %d PSKs and %d public keys", r.Total, r.NodePsks, r.NodePubkeys)
				if r.NextPageToken != "" {
					fmt.Fprintf(w, "; more after %s (--after)", r.NextPageToken)
				}
				fmt.Fprintln(w)
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 100, "identities per page (at most 10000)")
	cmd.Flags().StringVar(&after, "after", "", "list identities after this one")
	return cmd
}

// readCredentialCSV parses the import format: one device a line,
// "identity,kind,secret" where kind is psk (secret as text), psk_hex, or
// pubkey (secret: base64 DER SubjectPublicKeyInfo). Lines starting with #
// and a header line "identity,kind,secret" are skipped.
func readCredentialCSV(r io.Reader) ([]*adminv1.Credential, error) {
	cr := csv.NewReader(bufio.NewReader(r))
	cr.Comment = '#'
	cr.FieldsPerRecord = 3
	var out []*adminv1.Credential
	for line := 1; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("csv: %w", err)
		}
		if line == 1 && strings.EqualFold(rec[0], "identity") {
			continue
		}
		l, _ := cr.FieldPos(0)
		c := &adminv1.Credential{Id: strings.TrimSpace(rec[0])}
		switch strings.TrimSpace(rec[1]) {
		case "psk":
			c.Kind, c.Secret = adminv1.CredentialKind_CREDENTIAL_KIND_PSK, []byte(rec[2])
		case "psk_hex":
			c.Kind = adminv1.CredentialKind_CREDENTIAL_KIND_PSK
			if c.Secret, err = decodeHexArg(rec[2]); err != nil {
				return nil, fmt.Errorf("csv line %d: %v", l, err)
			}
		case "pubkey":
			c.Kind = adminv1.CredentialKind_CREDENTIAL_KIND_PUBKEY
			if c.Secret, err = base64.StdEncoding.DecodeString(strings.TrimSpace(rec[2])); err != nil {
				return nil, fmt.Errorf("csv line %d: pubkey is not base64: %v", l, err)
			}
		default:
			return nil, fmt.Errorf("csv line %d: kind %q (want psk, psk_hex or pubkey)", l, rec[1])
		}
		if c.Id == "" || len(c.Secret) == 0 {
			return nil, fmt.Errorf("csv line %d: empty identity or secret", l)
		}
		out = append(out, c)
	}
}

func (a *app) credsImportCommand() *cobra.Command {
	var parallel int
	var quiet bool
	cmd := &cobra.Command{
		Use:   "import FILE.csv",
		Short: "Bulk-import devices from CSV (identity,kind,secret; - for stdin)",
		Long: `Import devices into the credential store from CSV, one device a line:

    identity,kind,secret
    gw1@iot.example,psk,a-pre-shared-key-of-16-bytes-or-more
    gw2@iot.example,psk_hex,8f3a9c2e5d7b1f4a6c8e0d2b4f6a8c0e
    gw3.iot.example,pubkey,MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE...

Existing identities are replaced. The file is checked whole before anything
is written; then batches of 128 go to the node (each batch all or nothing),
with progress on stderr. On an error the count written so far is reported;
importing the same file again is safe. A batch the node could not write for
a moment (etcd busy or electing: Unavailable) is retried up to 5 times.`,
		Args: oneArg("the CSV file"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var in io.Reader = a.stdin
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			cs, err := readCredentialCSV(in)
			if err != nil {
				return err
			}
			cli, err := a.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), a.timeout+time.Duration(len(cs)/importBatch)*a.timeout/10)
			defer cancel()
			var written atomic.Int64
			t0 := time.Now()
			stop := make(chan struct{})
			var pw sync.WaitGroup
			if !quiet {
				pw.Add(1)
				go func() {
					defer pw.Done()
					tick := time.NewTicker(time.Second)
					defer tick.Stop()
					for {
						select {
						case <-stop:
							return
						case <-tick.C:
							n := written.Load()
							fmt.Fprintf(a.stderr, "\rimported %d/%d (%.0f/s)", n, len(cs), float64(n)/time.Since(t0).Seconds())
						}
					}
				}()
			}
			batches := make(chan []*adminv1.Credential)
			errc := make(chan error, parallel)
			var wg sync.WaitGroup
			for range max(parallel, 1) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for b := range batches {
						r, err := putRetrying(ctx, cli, b)
						if err != nil {
							errc <- err
							cancel()
							return
						}
						written.Add(int64(r.Written))
					}
				}()
			}
		feed:
			for i := 0; i < len(cs); i += importBatch {
				select {
				case batches <- cs[i:min(i+importBatch, len(cs))]:
				case <-ctx.Done():
					break feed
				}
			}
			close(batches)
			wg.Wait()
			close(stop)
			pw.Wait()
			took := time.Since(t0)
			if !quiet {
				fmt.Fprintf(a.stderr, "\rimported %d/%d in %s\n", written.Load(), len(cs), took.Round(time.Millisecond))
			}
			select {
			case err := <-errc:
				return fmt.Errorf("import stopped after %d of %d: %w", written.Load(), len(cs), err)
			default:
			}
			r := &adminv1.PutCredentialsResponse{Written: uint32(written.Load())}
			return a.emit(r, func(w io.Writer) {
				fmt.Fprintf(w, "imported:\t%d devices in %s (%.0f/s)\n", r.Written, took.Round(time.Millisecond), float64(r.Written)/took.Seconds())
			})
		},
	}
	cmd.Flags().IntVar(&parallel, "parallel", 2, "batches in flight at once")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress")
	return cmd
}

// putRetrying writes one batch, retrying (idempotent puts) while the node
// reports the store unavailable for a moment.
func putRetrying(ctx context.Context, cli adminv1.AdminClient, b []*adminv1.Credential) (*adminv1.PutCredentialsResponse, error) {
	backoff := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		r, err := cli.PutCredentials(ctx, &adminv1.PutCredentialsRequest{Credentials: b})
		if c := status.Code(err); err == nil || attempt == 5 || c != codes.Unavailable && c != codes.DeadlineExceeded {
			return r, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}
