// Command concentratorctl is the operators' CLI of ikefleet: it talks to a
// concentrator node's admin gRPC API.
//
//	concentratorctl status
//	concentratorctl sas list --identity 'gw*@iot.example' -o json
//	concentratorctl terminate --identity 'gw1*'
//	concentratorctl drain
//
// Exit codes: 0 success, 1 failure, 2 usage (bad flags or arguments).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	adminv1 "github.com/ikefleet/ikefleet/api/admin/v1"
	"github.com/ikefleet/ikefleet/internal/buildinfo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a mistake in the command line.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return &usageError{fmt.Errorf(format, args...)} }

// failedError is a command that ran but did not fully succeed; its
// output says why, so only the message is printed.
type failedError struct{ msg string }

func (e *failedError) Error() string { return e.msg }

// run executes the command line and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdin: os.Stdin, stdout: stdout, stderr: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	msg := errorText(err)
	if a.refusedAsStranger(err) {
		msg += "; a plaintext admin API on loopback serves only the node's account and root: run this as that user, or with sudo"
	}
	fmt.Fprintln(stderr, "concentratorctl:", msg)
	return exitCode(err)
}

// refusedAsStranger: err looks like the node closing a plaintext
// connection at once, as it does for a client of another account: the
// connection was made (not refused: the node is there) and then closed
// before gRPC's first frame.
func (a *app) refusedAsStranger(err error) bool {
	if a.caFile != "" || a.certFile != "" || a.keyFile != "" || status.Code(err) != codes.Unavailable {
		return false
	}
	m := err.Error()
	for _, closed := range []string{"preface", "EOF", "reset by peer", "broken pipe"} {
		if strings.Contains(m, closed) && !strings.Contains(m, "connection refused") {
			return true
		}
	}
	return false
}

func errorText(err error) string {
	if s, ok := status.FromError(err); ok && s.Code() != codes.OK && s.Code() != codes.Unknown {
		return fmt.Sprintf("%s (%s)", s.Message(), s.Code())
	}
	return err.Error()
}

func exitCode(err error) int {
	var ue *usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		return exitUsage
	}
	if s, ok := status.FromError(err); ok && s.Code() == codes.InvalidArgument {
		return exitUsage // the server refused the request as malformed
	}
	return exitFailure
}

func versionString() string {
	return fmt.Sprintf("%s (%s)", buildinfo.Get(), buildinfo.GoVersion())
}

// app holds the global flags and the connection.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	addr       string
	caFile     string
	certFile   string
	keyFile    string
	serverName string
	output     string
	timeout    time.Duration
	local      bool
	configPath string

	conn *grpc.ClientConn
	cli  adminv1.AdminClient
}

const defaultAddr = "127.0.0.1:9179"

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "concentratorctl",
		Short: "Operate an ikefleet concentrator node through its admin API",
		Long: `concentratorctl talks to the admin gRPC API of a concentrator node (admin.listen
in concentratord's configuration): cluster status, nodes, IKE SAs, terminate,
rekey, drain, credential reload and a live feed of SA events.

Without TLS flags it connects in plaintext, which the node allows on loopback
only, and there only for its own account and root; or, with --addr
unix:///path, through the node's admin socket (its account and group). With
--ca, --cert and --key it uses mutual TLS.

Exit codes: 0 success, 1 failure, 2 usage.`,
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch a.output {
			case "table", "json", "yaml":
			default:
				return usagef("-o/--output: want table, json or yaml, not %q", a.output)
			}
			if a.local {
				return a.fromConfig(cmd)
			}
			return nil
		},
		PersistentPostRun: func(*cobra.Command, []string) {
			if a.conn != nil {
				a.conn.Close()
			}
		},
	}
	root.SetVersionTemplate("concentratorctl {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })
	pf := root.PersistentFlags()
	addr := os.Getenv("CONCENTRATORCTL_ADDR")
	if addr == "" {
		addr = defaultAddr
	}
	pf.StringVar(&a.addr, "addr", addr, "admin API address host:port, or unix:///path of its socket (env CONCENTRATORCTL_ADDR)")
	pf.StringVar(&a.caFile, "ca", "", "CA certificate (PEM) that signed the node's certificate: enables TLS")
	pf.StringVar(&a.certFile, "cert", "", "client certificate (PEM) for mutual TLS")
	pf.StringVar(&a.keyFile, "key", "", "client key (PEM) for mutual TLS")
	pf.StringVar(&a.serverName, "server-name", "", "name to verify the node's certificate against (default: the host of --addr)")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table, json or yaml")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "deadline of each call (streams: of the operation on the node)")
	pf.BoolVar(&a.local, "local", false, "talk to the node on this host: --addr and the TLS files from the admin section of its configuration (--config); flags given explicitly win")
	pf.StringVar(&a.configPath, "config", defaultConfigPath, "concentratord's configuration file, for --local")

	root.AddCommand(a.statusCommand(), a.nodesCommand(), a.sasCommand(), a.terminateCommand(), a.rekeyCommand(),
		a.drainCommand(), a.reloadCommand(), a.eventsCommand(), a.credsCommand())
	return root
}

// client dials the node (lazily: the connection is made on the first call).
func (a *app) client() (adminv1.AdminClient, error) {
	if a.cli != nil {
		return a.cli, nil
	}
	creds := insecure.NewCredentials()
	if a.caFile != "" || a.certFile != "" || a.keyFile != "" {
		tc, err := a.tlsConfig()
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(a.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, usagef("--addr: %v", err)
	}
	a.conn, a.cli = conn, adminv1.NewAdminClient(conn)
	return a.cli, nil
}

func (a *app) tlsConfig() (*tls.Config, error) {
	if a.caFile == "" || a.certFile == "" || a.keyFile == "" {
		return nil, usagef("--ca, --cert and --key go together (mutual TLS)")
	}
	pem, err := os.ReadFile(a.caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--ca: no certificate in %s", a.caFile)
	}
	cert, err := tls.LoadX509KeyPair(a.certFile, a.keyFile)
	if err != nil {
		return nil, fmt.Errorf("--cert/--key: %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: a.serverName,
		MinVersion: tls.VersionTLS13}, nil
}

// call is a context for one unary call.
func (a *app) call(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), a.timeout)
}
