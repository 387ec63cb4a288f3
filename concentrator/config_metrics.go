package concentrator

import (
	"net"
	"net/netip"
	"strconv"
)

// MetricsConfig configures the HTTP listener of /metrics (Prometheus),
// /healthz and /readyz.
type MetricsConfig struct {
	Listen string `yaml:"listen"` // host:port; "" or "off" disables the listener
}

// DefaultMetricsListen is metrics.listen by default: loopback only.
const DefaultMetricsListen = "127.0.0.1:9180"

// Enabled reports whether the listener runs.
func (m MetricsConfig) Enabled() bool { return m.Listen != "" && m.Listen != "off" }

func (m *MetricsConfig) validate() error {
	if !m.Enabled() {
		return nil
	}
	host, port, err := net.SplitHostPort(m.Listen)
	if err != nil {
		return fieldErr("metrics.listen", "must be host:port (an IP address, or empty for all), or off: %q", m.Listen)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fieldErr("metrics.listen", "not an IP address: %q", host)
		}
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fieldErr("metrics.listen", "port out of range: %q", port)
	}
	return nil
}
