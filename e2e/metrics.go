package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// MetricsAddr is where concentratord serves /metrics, /healthz and /readyz
// by default (metrics.listen), inside its namespace.
const MetricsAddr = "127.0.0.1:9180"

// HTTPGet fetches path from addr inside namespace ns (HTTP/1.1, one
// request, 5 s at most) and returns the status code and body.
func HTTPGet(ns, addr, path string) (int, string, error) {
	var c net.Conn
	if err := InNetns(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, addr); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// MetricLine reports whether a /metrics body has the sample line (name
// with labels, a space, the value).
func MetricLine(body, sample string) bool {
	return strings.Contains("\n"+body, "\n"+sample+"\n")
}
