package concentrator

import (
	"net"
	"net/netip"
	"path/filepath"
	"strings"
)

// AdminConfig configures the admin gRPC API (concentratorctl talks to
// it). With ca_file, cert_file and key_file it is served with mutual TLS:
// clients need a certificate signed by ca_file. Without them it is
// plaintext, which is allowed only on a loopback address (and there only
// for the node's account and root: localpeer) or on a unix socket
// (unix:///path, mode 0660: the node's account and its group).
type AdminConfig struct {
	Listen   string `yaml:"listen"`    // host:port or unix:///path; "off" (or "") disables the admin API
	CAFile   string `yaml:"ca_file"`   // CA that signs client certificates
	CertFile string `yaml:"cert_file"` // the server's certificate (PEM)
	KeyFile  string `yaml:"key_file"`  // and its key
}

// DefaultAdminListen is admin.listen unless configured.
const DefaultAdminListen = "127.0.0.1:9179"

// Enabled reports whether the admin API is served.
func (a *AdminConfig) Enabled() bool { return a.Listen != "" && a.Listen != "off" }

// TLS reports whether the admin API is served with mutual TLS.
func (a *AdminConfig) TLS() bool { return a.CertFile != "" }

// SocketPath is the unix socket admin.listen names (unix:///path), or "".
func (a *AdminConfig) SocketPath() string {
	p, ok := strings.CutPrefix(a.Listen, "unix://")
	if !ok {
		return ""
	}
	return p
}

func (a *AdminConfig) validate() error {
	if !a.Enabled() {
		return nil
	}
	if strings.HasPrefix(a.Listen, "unix:") {
		p := a.SocketPath()
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return fieldErr("admin.listen", "a unix socket is unix:///absolute/path, not %q", a.Listen)
		}
		if a.CAFile != "" || a.CertFile != "" || a.KeyFile != "" {
			return fieldErr("admin.cert_file", "not with a unix socket (admin.listen %s): its file mode decides who connects", a.Listen)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(a.Listen)
	if err != nil {
		return fieldErr("admin.listen", "must be host:port: %v", err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fieldErr("admin.listen", "bad port %q", port)
	}
	var ip netip.Addr
	if host != "" && host != "localhost" {
		if ip, err = netip.ParseAddr(host); err != nil {
			return fieldErr("admin.listen", "host must be an IP address or localhost: %q", host)
		}
	}
	if (a.CertFile == "") != (a.KeyFile == "") {
		return fieldErr("admin.key_file", "admin.cert_file and admin.key_file go together")
	}
	if a.CertFile != "" && a.CAFile == "" {
		return fieldErr("admin.ca_file", "required with admin.cert_file: clients are authenticated by certificates it signs (mutual TLS)")
	}
	if a.CAFile != "" && a.CertFile == "" {
		return fieldErr("admin.cert_file", "required with admin.ca_file")
	}
	loopback := host == "localhost" || (ip.IsValid() && ip.IsLoopback())
	if !a.TLS() && !loopback {
		return fieldErr("admin.cert_file", "required: admin.listen %s is not a loopback address, and the admin API is served in plaintext only on loopback (set admin.ca_file, admin.cert_file and admin.key_file)", a.Listen)
	}
	return nil
}
