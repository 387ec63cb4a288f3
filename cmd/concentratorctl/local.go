package main

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// defaultConfigPath is where the Helm chart mounts concentratord's
// configuration.
const defaultConfigPath = "/etc/ikefleet/config/concentratord.yaml"

// localConfig is what --local reads of concentratord's configuration.
type localConfig struct {
	Admin *struct {
		Listen   *string `yaml:"listen"`
		CAFile   string  `yaml:"ca_file"`
		CertFile string  `yaml:"cert_file"`
		KeyFile  string  `yaml:"key_file"`
	} `yaml:"admin"`
}

// fromConfig sets the address and TLS files from the admin section of the
// node's configuration, for flags not given on the command line. The
// node's own certificate is the client certificate (the admin CA signs
// both).
func (a *app) fromConfig(cmd *cobra.Command) error {
	b, err := os.ReadFile(a.configPath)
	if err != nil {
		return fmt.Errorf("--local: %w", err)
	}
	var c localConfig
	if err := yaml.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("--local: %s: %w", a.configPath, err)
	}
	listen, ca, cert, key := defaultAddr, "", "", ""
	if ad := c.Admin; ad != nil {
		if ad.Listen != nil {
			listen = *ad.Listen
		}
		ca, cert, key = ad.CAFile, ad.CertFile, ad.KeyFile
	}
	if listen == "" || listen == "off" {
		return fmt.Errorf("--local: %s: the admin API is off (admin.listen %q)", a.configPath, listen)
	}
	set := func(flag string, dst *string, v string) {
		if !cmd.Flags().Changed(flag) {
			*dst = v
		}
	}
	if strings.HasPrefix(listen, "unix:") { // a socket: no TLS
		set("addr", &a.addr, listen)
		return nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--local: %s: admin.listen: %w", a.configPath, err)
	}
	// A wildcard listener is reached over loopback.
	switch ip := net.ParseIP(host); {
	case host == "" || (ip != nil && ip.IsUnspecified() && ip.To4() != nil):
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	set("addr", &a.addr, net.JoinHostPort(host, port))
	set("ca", &a.caFile, ca)
	set("cert", &a.certFile, cert)
	set("key", &a.keyFile, key)
	return nil
}
