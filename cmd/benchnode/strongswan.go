package main

// The strongSwan row: the same gateways and load against strongSwan's
// charon (kernel-libipsec: ESP in user space, as concentratord's
// userspace data plane), pinned to the node's CPU, for a comparison in
// one run. charon binds its ports on every address and kernel-libipsec
// makes a TUN device with routes, so the row runs in a network namespace
// of its own: benchnode creates it, runs itself there for the one row
// (--row-json) and reads the row back.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// errSkipped: a row that cannot run here (printed as skipped, not as an
// error).
type errSkipped struct{ why string }

func (e errSkipped) Error() string { return e.why }

// charonReady reports why the strongSwan row cannot run, or nil.
func (o *options) charonReady() error {
	if _, err := os.Stat(o.charon); err != nil {
		return errSkipped{fmt.Sprintf("no %s (apt-get install strongswan-charon strongswan-swanctl libcharon-extra-plugins)", o.charon)}
	}
	if _, err := exec.LookPath("swanctl"); err != nil {
		return errSkipped{"no swanctl (apt-get install strongswan-swanctl)"}
	}
	if os.Geteuid() != 0 {
		return errSkipped{"needs root (a network namespace, charon's TUN device)"}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errSkipped{"no ip(8)"}
	}
	return nil
}

// netnsEnv names the namespace a benchnode runs in (set for the child).
const netnsEnv = "BENCHNODE_NETNS"

// rowJSON is a row's result as the child prints it.
type rowJSON struct {
	Row rowResult
	Err string
}

// strongswanRow runs the strongSwan row in a fresh network namespace (a
// child benchnode there) and returns its result.
func (o *options) strongswanRow(ctx context.Context, spec nodeSpec, eng time.Duration) (rowResult, error) {
	if err := o.charonReady(); err != nil {
		return rowResult{}, err
	}
	ns := fmt.Sprintf("ikfbench-%d", os.Getpid())
	ip := func(args ...string) error {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	if err := ip("netns", "add", ns); err != nil {
		return rowResult{}, err
	}
	defer exec.Command("ip", "netns", "delete", ns).Run()
	// Loopback for the gateways (127.1.x.y) and charon; the protected
	// network behind the responder on a veth: kernel-libipsec routes a
	// CHILD SA's traffic through its TUN device and needs a source address
	// in it.
	for _, args := range [][]string{
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "add", "core0", "type", "veth", "peer", "name", "core0-peer"},
		{"-n", ns, "addr", "add", "10.30.0.1/24", "dev", "core0"},
		{"-n", ns, "link", "set", "core0", "up"},
		{"-n", ns, "link", "set", "core0-peer", "up"},
	} {
		if err := ip(args...); err != nil {
			return rowResult{}, err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return rowResult{}, err
	}
	args := []string{"netns", "exec", ns, self, "--row-json", "--rows", spec.String(), "--burst", "0",
		"--count", strconv.Itoa(spec.gateways), "--rate", strconv.FormatFloat(o.rate, 'f', -1, 64),
		"--groups", strconv.Itoa(o.groups), "--pin=" + strconv.FormatBool(o.pin), "--charon", o.charon,
		"--engine-cpu", eng.String(), "--timeout", o.timeout.String(), "--concentratord", o.bin}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(os.Environ(), netnsEnv+"="+ns)
	// ip execs the child benchnode (same PID): asked to end, it stops its
	// charon before it exits, which a SIGKILL would leave running.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = time.Minute
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return rowResult{}, fmt.Errorf("the row in namespace %s: %v: %s", ns, err, bytes.TrimSpace(errOut.Bytes()))
	}
	var j rowJSON
	if err := json.Unmarshal(out.Bytes(), &j); err != nil {
		return rowResult{}, fmt.Errorf("the row's result %q: %v", out.Bytes(), err)
	}
	if j.Err != "" {
		return j.Row, errors.New(j.Err)
	}
	return j.Row, nil
}

// printRowJSON runs the one row of o (in the namespace) and prints its
// result as JSON.
func (o *options) printRowJSON(ctx context.Context, out *os.File, nodeCPU int) error {
	if len(o.rows) != 1 {
		return errors.New("--row-json: one row")
	}
	spec := o.rows[0]
	spec.gateways = o.count
	r, err := o.row(ctx, spec, nodeCPU)
	j := rowJSON{Row: r}
	if err != nil {
		j.Err = err.Error()
	}
	return json.NewEncoder(out).Encode(j)
}

// startCharon starts charon (pinned to cpu when cpu >= 0) for spec's
// gateways, with the configuration the node rows use (PSK per gateway,
// X25519, AES-GCM-256, virtual IPs from a /12), and loads it.
func (o *options) startCharon(spec nodeSpec, cpu int) (*nodeProc, error) {
	if os.Getenv(netnsEnv) == "" {
		return nil, errors.New("charon runs only in benchnode's own network namespace")
	}
	dir, err := os.MkdirTemp("", "benchnode-charon-")
	if err != nil {
		return nil, err
	}
	for _, d := range []string{"run", "swanctl/conf.d"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	// The standard ports (the namespace is ours): charon expects the
	// non-ESP marker on every port once its IKE port is not 500.
	const ikePort, nattPort = 500, 4500
	// BENCHNODE_CHARON_LOG: charon's log level (default -1: quiet) for a
	// closer look at a failing run (with BENCHNODE_KEEP=1).
	logLevel := os.Getenv("BENCHNODE_CHARON_LOG")
	if logLevel == "" {
		logLevel = "-1"
	}
	vici := filepath.Join(dir, "charon.vici")
	logPath := filepath.Join(dir, "charon.log")
	conf := fmt.Sprintf(`charon {
  load = random nonce openssl pem pkcs1 pkcs8 x509 pubkey revocation constraints sha2 hmac aes gcm kdf curve25519 kernel-libipsec kernel-netlink socket-default vici
  port = %d
  port_nat_t = %d
  install_routes = no
  install_virtual_ip = no
  # no DoS protection or cookies: the rows measure the setup path itself
  dos_protection = no
  cookie_threshold = 1000000
  block_threshold = 1000000
  init_limit_half_open = 0
  threads = 16
  ikesa_table_size = 4096
  ikesa_table_segments = 16
  reuse_ikesa = no
  plugins {
    vici { socket = unix://%s }
    socket-default { use_ipv6 = no }
  }
  filelog { main { path = %s
    default = %s
    ike = %s } }
  syslog { }
}
swanctl { load = pem pkcs1 pkcs8 x509 pubkey openssl random }
`, ikePort, nattPort, vici, logPath, logLevel, max(logLevel, "0"))
	if err := os.WriteFile(filepath.Join(dir, "strongswan.conf"), []byte(conf), 0o600); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `connections {
  gw {
    version = 2
    proposals = %s
    pools = vips
    local { auth = psk
      id = conc.bench.example }
    remote { auth = psk
      id = %%any }
    children { lan { local_ts = 10.30.0.0/24
      esp_proposals = %s } }
  }
}
pools { vips { addrs = 10.112.0.0/12 } }
secrets {
`, "aes256gcm16-prfsha256-x25519", "aes256gcm16")
	for i := 1; i <= spec.gateways; i++ {
		fmt.Fprintf(&b, "  ike-%d { id = %s\n    secret = %s }\n", i, gatewayID(i), gatewayPSK(i))
	}
	b.WriteString("}\n")
	if err := os.WriteFile(filepath.Join(dir, "swanctl", "swanctl.conf"), b.Bytes(), 0o600); err != nil {
		return nil, err
	}
	// A /run of its own for charon.pid (the mount namespace is the one
	// ip netns exec made for this benchnode); every exec keeps the PID,
	// so the command's process is charon.
	p := &nodeProc{cmd: pinned(cpu, "sh", "-c", `mount --bind "$1/run" /run && exec "$2"`, "sh", dir, o.charon), dir: dir,
		ike: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ikePort), nattPort: nattPort, logPath: logPath, clockTicks: 100}
	env := append(os.Environ(), "STRONGSWAN_CONF="+filepath.Join(dir, "strongswan.conf"))
	p.cmd.Env = env
	stderr := filepath.Join(dir, "stderr")
	if err := p.launch(stderr); err != nil {
		return nil, err
	}
	viciOpen := func() bool { _, err := os.Stat(vici); return err == nil }
	if err := p.waitUntil(viciOpen, 30*time.Second, "charon's vici socket", stderr); err != nil {
		return nil, err
	}
	load := exec.Command("swanctl", "--load-all", "--noprompt", "--uri", "unix://"+vici)
	load.Env = append(env, "SWANCTL_DIR="+filepath.Join(dir, "swanctl"))
	if out, err := load.CombinedOutput(); err != nil {
		p.stop()
		return nil, fmt.Errorf("swanctl --load-all: %v\n%s", err, tail(out))
	}
	return p, nil
}
