//go:build linux

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// DefaultCharonPlugins is the plugin load list of a StrongSwan instance.
// kernel-libipsec (userspace ESP through a TUN device) must come before
// kernel-netlink: the first kernel-ipsec backend registered wins, and
// kernel-netlink is still needed for routes, addresses and rules. In the
// other order CHILD_SA install fails ("unable to add SAD entry", answered
// with NO_PROPOSAL_CHOSEN).
const DefaultCharonPlugins = "random nonce openssl pem pkcs1 pkcs8 x509 pubkey revocation constraints " +
	"sha2 sha1 hmac aes gcm kdf curve25519 counters kernel-libipsec kernel-netlink socket-default vici"

// StrongSwan is a standalone charon (no starter, no systemd) in one
// namespace, with its own strongswan.conf, SWANCTL_DIR, vici socket and log
// under Dir. charon always writes /var/run/charon.pid, so each instance runs
// in a private mount namespace with Dir/run bind-mounted over /run: several
// instances coexist. ESP runs in user space (kernel-libipsec, TUN device
// ipsec0, MTU 1400, routes in table 220) and so must be UDP-encapsulated:
// use encap = yes in connections.
type StrongSwan struct {
	Name string // instance label
	NS   string // namespace charon runs in
	Dir  string // instance directory

	// Set before Start.
	LogLevel  int    // filelog level for all subsystems: -1 silent, 1 normal (default; E2E_CHARON_LOGLEVEL overrides), 2 verbose
	Plugins   string // plugin load list; DefaultCharonPlugins if empty
	ExtraConf string // appended inside charon { ... }; later keys override earlier ones (e.g. "dos_protection = no")

	t    testing.TB
	tp   *Topology
	proc *Process
}

// NewStrongSwan prepares (does not start) an instance named name in namespace
// ns. Its cleanup stops charon, logs the charon log when the test has failed,
// and removes the instance directory.
func NewStrongSwan(t testing.TB, tp *Topology, name, ns string) *StrongSwan {
	t.Helper()
	dir, err := os.MkdirTemp("", "ikf-ss-") // short: the vici socket path must fit sun_path
	if err != nil {
		t.Fatal(err)
	}
	level := 1
	if v, err := strconv.Atoi(os.Getenv("E2E_CHARON_LOGLEVEL")); err == nil {
		level = v
	}
	s := &StrongSwan{Name: name, NS: ns, Dir: dir, LogLevel: level, t: t, tp: tp}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Logf("strongswan %s: stop: %v", name, err)
		}
		if t.Failed() {
			t.Logf("charon log of %s (netns %s):\n%s", name, ns, tail(s.Log(), 128<<10))
		}
		os.RemoveAll(dir)
	})
	return s
}

func (s *StrongSwan) vici() string     { return "unix://" + filepath.Join(s.Dir, "charon.vici") }
func (s *StrongSwan) confPath() string { return filepath.Join(s.Dir, "strongswan.conf") }

// SwanctlDir is the instance's SWANCTL_DIR.
func (s *StrongSwan) SwanctlDir() string { return filepath.Join(s.Dir, "swanctl") }

// Start writes conf as swanctl.conf and files (paths relative to SWANCTL_DIR,
// e.g. "x509ca/ca.crt", "x509/gw.crt", "private/gw.key") into a fresh
// SWANCTL_DIR, starts charon, waits for its vici socket and loads everything
// with swanctl --load-all. Any failure fails the test.
func (s *StrongSwan) Start(conf string, files map[string][]byte) {
	s.t.Helper()
	if s.proc != nil {
		s.t.Fatalf("strongswan %s: already started", s.Name)
	}
	sw := s.SwanctlDir()
	_ = os.RemoveAll(sw)
	for _, sub := range []string{"conf.d", "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl",
		"private", "rsa", "ecdsa", "pkcs8", "pkcs12", "pubkey"} {
		if err := os.MkdirAll(filepath.Join(sw, sub), 0o700); err != nil {
			s.t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(s.Dir, "run"), 0o755); err != nil {
		s.t.Fatal(err)
	}
	write := func(path string, data []byte, mode os.FileMode) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			s.t.Fatal(err)
		}
		if err := os.WriteFile(path, data, mode); err != nil {
			s.t.Fatal(err)
		}
	}
	write(filepath.Join(sw, "swanctl.conf"), []byte(conf), 0o600)
	for rel, data := range files {
		if filepath.IsAbs(rel) || strings.HasPrefix(filepath.Clean(rel), "..") {
			s.t.Fatalf("strongswan %s: file %q must be relative to SWANCTL_DIR", s.Name, rel)
		}
		write(filepath.Join(sw, rel), data, 0o600)
	}
	write(s.confPath(), []byte(s.strongswanConf()), 0o644)
	logPath := filepath.Join(s.Dir, "charon.log")
	write(logPath, nil, 0o644)
	_ = os.Remove(filepath.Join(s.Dir, "charon.vici"))

	// ip netns exec unshares the mount namespace (slave to /), so the bind
	// mount over /run is private to this charon; exec keeps the PID.
	s.proc = s.tp.StartProcess(s.t, "charon "+s.Name, s.NS, "sh", "-c",
		`mount --bind "$1/run" /run && export STRONGSWAN_CONF="$1/strongswan.conf" && exec "$2"`,
		"sh", s.Dir, CharonPath)

	sock := filepath.Join(s.Dir, "charon.vici")
	// A bound, not a measure: under TCG in the VM tier on a loaded host,
	// charon's plugin loading alone has taken more than 10 s.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if s.proc.Exited() || time.Now().After(deadline) {
			s.t.Fatalf("charon %s did not come up (exited: %v)\nstderr: %s\nlog:\n%s",
				s.Name, s.proc.Exited(), s.proc.Stderr(), tail(s.Log(), 16<<10))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out, err := s.Swanctl("--load-all", "--noprompt"); err != nil {
		s.t.Fatalf("strongswan %s: load config: %v\n%s", s.Name, err, out)
	}
}

func (s *StrongSwan) strongswanConf() string {
	plugins := s.Plugins
	if plugins == "" {
		plugins = DefaultCharonPlugins
	}
	return fmt.Sprintf(`# generated by the ikefleet e2e harness for instance %[1]s (netns %[2]s)
charon {
  # the one source of truth for plugins: no load_modular, no /etc/strongswan.d
  load = %[3]s
  port = 500
  port_nat_t = 4500
  install_routes = yes
  install_virtual_ip = yes
  # routes to the remote traffic selectors go to table 220, via ipsec0
  routing_table = 220
  routing_table_prio = 220
  retransmit_tries = 3
  retransmit_timeout = 2.0
  retransmit_base = 1.4
  # default DoS protection allows 5 half-open IKE_SAs per source address;
  # many gateways behind one NAT hit that: override in ExtraConf
  dos_protection = yes
  init_limit_half_open = 0
  threads = 16
  reuse_ikesa = no
  plugins {
    vici {
      socket = unix://%[4]s/charon.vici
    }
    socket-default {
      use_ipv6 = no
    }
  }
  filelog {
    main {
      path = %[4]s/charon.log
      time_format = %%H:%%M:%%S
      time_add_ms = yes
      ike_name = yes
      append = no
      flush_line = yes
      default = %[5]d
    }
  }
  syslog {
  }
%[6]s
}
swanctl {
  load = pem pkcs1 pkcs8 x509 pubkey openssl random
}
`, s.Name, s.NS, plugins, s.Dir, s.LogLevel, s.ExtraConf)
}

// Swanctl runs swanctl against this instance (30 s limit) and returns its
// combined output.
func (s *StrongSwan) Swanctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return s.SwanctlContext(ctx, args...)
}

// SwanctlContext is Swanctl bounded by ctx. swanctl is a vici client, so it
// runs in the host namespace and reaches charon through the socket file.
func (s *StrongSwan) SwanctlContext(ctx context.Context, args ...string) (string, error) {
	args = append(append([]string{}, args...), "--uri", s.vici())
	cmd := exec.CommandContext(ctx, "swanctl", args...)
	cmd.Env = append(os.Environ(), "STRONGSWAN_CONF="+s.confPath(), "SWANCTL_DIR="+s.SwanctlDir())
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("swanctl %s (%s): %w", strings.Join(args[:len(args)-2], " "), s.Name, err)
	}
	return string(out), nil
}

// ListSAs returns the instance's IKE_SAs (swanctl --list-sas --pretty).
func (s *StrongSwan) ListSAs(ctx context.Context) ([]IKESA, error) {
	out, err := s.SwanctlContext(ctx, "--list-sas", "--pretty")
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	return ParseListSAs(out)
}

// WaitSAs polls ListSAs every 100 ms until cond holds and returns the SAs
// that satisfied it; on timeout the error includes the last listing.
func (s *StrongSwan) WaitSAs(ctx context.Context, cond func([]IKESA) bool) ([]IKESA, error) {
	var last []IKESA
	var lastErr error
	for {
		sas, err := s.ListSAs(ctx)
		if err == nil && cond(sas) {
			return sas, nil
		}
		last, lastErr = sas, err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("strongswan %s: condition on SAs not met: %w (last: %v, error %v)",
				s.Name, ctx.Err(), last, lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Log returns the charon log so far.
func (s *StrongSwan) Log() string {
	b, err := os.ReadFile(filepath.Join(s.Dir, "charon.log"))
	if err != nil {
		return fmt.Sprintf("(no charon log: %v)", err)
	}
	return string(b)
}

// Stop stops charon by PID (SIGTERM, SIGKILL after StopGrace). charon removes
// its TUN device and routes when it exits cleanly; after SIGKILL they are
// removed here if the namespace still exists. Stopping twice is harmless.
func (s *StrongSwan) Stop() error {
	if s.proc == nil {
		return nil
	}
	err := s.proc.Stop()
	if err != nil {
		s.cleanupAfterKill()
	}
	return err
}

// Crash ends charon with SIGKILL, as a crash or a power loss would (no
// Delete reaches its peers), and removes what it left; Start may follow
// (a rebooted gateway: same identity, no SA, INITIAL_CONTACT).
func (s *StrongSwan) Crash(ctx context.Context) error {
	if s.proc == nil {
		return nil
	}
	if err := s.proc.cmd.Process.Kill(); err != nil {
		return err
	}
	_ = s.proc.Wait(ctx)
	s.cleanupAfterKill()
	s.proc = nil
	return nil
}

// cleanupAfterKill removes the TUN device and routes a charon that did
// not exit cleanly left in its namespace.
func (s *StrongSwan) cleanupAfterKill() {
	if _, serr := os.Stat(filepath.Join("/run/netns", s.NS)); serr == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if out, lerr := s.tp.Exec(ctx, s.NS, "ip", "-o", "link", "show", "type", "tun"); lerr == nil {
			sc := bufio.NewScanner(strings.NewReader(out))
			for sc.Scan() {
				if f := strings.Fields(sc.Text()); len(f) > 1 {
					dev := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
					_, _ = run(ctx, nil, "ip", "-n", s.NS, "link", "del", dev)
				}
			}
		}
		_, _ = run(ctx, nil, "ip", "-n", s.NS, "route", "flush", "table", "220")
		for i := 0; i < 10; i++ {
			if _, rerr := run(ctx, nil, "ip", "-n", s.NS, "rule", "del", "table", "220"); rerr != nil {
				break
			}
		}
	}
}
