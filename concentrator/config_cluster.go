package concentrator

import (
	"net"
	"net/netip"
)

// ClusterConfig configures the node-to-node API (api/peer/v1) through
// which nodes behind one anycast address hand SAs to each other. With
// ca_file, cert_file and key_file the API is served and called with mutual
// TLS: every node's certificate is signed by ca_file. Without them it is
// plaintext, which is allowed only on a loopback address.
type ClusterConfig struct {
	PeerListen    string `yaml:"peer_listen"`    // host:port of the peer API; "" disables hand-offs (SAs move only by takeover)
	PeerAdvertise string `yaml:"peer_advertise"` // host:port other nodes dial; default peer_listen's bound address
	CAFile        string `yaml:"ca_file"`        // CA that signs every node's certificate
	CertFile      string `yaml:"cert_file"`      // this node's certificate (PEM), for serving and calling
	KeyFile       string `yaml:"key_file"`       // and its key
	// FleetRekeysPerSec caps the CHILD rekeys the whole cluster starts a
	// second: each node's scheduler takes its share, this divided by the
	// live nodes in the registry (and never more than
	// children.max_rekeys_per_second), so a node that takes over a large
	// part of the fleet spreads its overdue rekeys instead of starting them
	// at once. 0: each node keeps its own cap.
	FleetRekeysPerSec int `yaml:"fleet_rekeys_per_second"`
}

// TLS reports whether the peer API uses mutual TLS.
func (c *ClusterConfig) TLS() bool { return c.CertFile != "" }

func (c *ClusterConfig) validate(storeMode string) error {
	if c.FleetRekeysPerSec < 0 {
		return fieldErr("cluster.fleet_rekeys_per_second", "must not be negative (0: no fleet-wide cap)")
	}
	if c.PeerListen == "" {
		if c.PeerAdvertise != "" {
			return fieldErr("cluster.peer_listen", "required with cluster.peer_advertise")
		}
		return nil
	}
	if storeMode == "none" {
		return fieldErr("cluster.peer_listen", "needs a state store (statestore.mode embedded or external): it is the authority on who owns an SA")
	}
	lo, err := hostPortLoopback("cluster.peer_listen", c.PeerListen)
	if err != nil {
		return err
	}
	advLo := lo
	if c.PeerAdvertise != "" {
		if advLo, err = hostPortLoopback("cluster.peer_advertise", c.PeerAdvertise); err != nil {
			return err
		}
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return fieldErr("cluster.key_file", "cluster.cert_file and cluster.key_file go together")
	}
	if c.CertFile != "" && c.CAFile == "" {
		return fieldErr("cluster.ca_file", "required with cluster.cert_file: nodes are authenticated by certificates it signs (mutual TLS)")
	}
	if c.CAFile != "" && c.CertFile == "" {
		return fieldErr("cluster.cert_file", "required with cluster.ca_file")
	}
	if !c.TLS() && !(lo && advLo) {
		return fieldErr("cluster.cert_file", "required: the peer API (%s) is not on a loopback address, and it is plaintext only on loopback (set cluster.ca_file, cluster.cert_file and cluster.key_file)", c.PeerListen)
	}
	return nil
}

// hostPortLoopback checks a host:port field and reports whether its host
// is a loopback address (or localhost).
func hostPortLoopback(field, hp string) (bool, error) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return false, fieldErr(field, "must be host:port: %v", err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return false, fieldErr(field, "bad port %q", port)
	}
	if host == "localhost" {
		return true, nil
	}
	if host == "" {
		return false, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false, fieldErr(field, "host must be an IP address or localhost: %q", host)
	}
	return ip.IsLoopback(), nil
}
