package concentrator

import (
	"errors"
	"strings"
	"testing"
)

func TestAdminConfig(t *testing.T) {
	base := nodeConfig(1, "", "")
	for _, tc := range []struct {
		admin, field, msg string
	}{
		{"", "", ""}, // the default: 127.0.0.1:9179
		{"admin: {listen: \"\"}\n", "", ""},
		{"admin: {listen: \"off\", cert_file: c.pem}\n", "", ""},
		{"admin: {listen: \"[::1]:0\"}\n", "", ""},
		{"admin: {listen: \"localhost:9179\"}\n", "", ""},
		{"admin: {listen: \"0.0.0.0:9179\"}\n", "admin.cert_file", "not a loopback address"},
		{"admin: {listen: \"192.0.2.1:9179\"}\n", "admin.cert_file", "not a loopback address"},
		{"admin: {listen: \":9179\"}\n", "admin.cert_file", "not a loopback address"},
		{"admin: {listen: \"0.0.0.0:9179\", ca_file: ca.pem, cert_file: c.pem, key_file: k.pem}\n", "", ""},
		{"admin: {listen: \"0.0.0.0:9179\", cert_file: c.pem, key_file: k.pem}\n", "admin.ca_file", "mutual TLS"},
		{"admin: {listen: \"127.0.0.1:9179\", cert_file: c.pem}\n", "admin.key_file", "go together"},
		{"admin: {listen: \"127.0.0.1:9179\", ca_file: ca.pem}\n", "admin.cert_file", "required with admin.ca_file"},
		{"admin: {listen: \"9179\"}\n", "admin.listen", "host:port"},
		{"admin: {listen: \"example.com:9179\"}\n", "admin.listen", "IP address"},
		{"admin: {listen: \"127.0.0.1:http-alt-nope\"}\n", "admin.listen", "port"},
		{"admin: {listen: \"unix:///run/ikefleet/admin.sock\"}\n", "", ""},
		{"admin: {listen: \"unix://admin.sock\"}\n", "admin.listen", "absolute"},
		{"admin: {listen: \"unix:///run/../admin.sock\"}\n", "admin.listen", "absolute"},
		{"admin: {listen: \"unix:///run/ikefleet/admin.sock\", ca_file: ca.pem, cert_file: c.pem, key_file: k.pem}\n", "admin.cert_file", "unix socket"},
	} {
		cfg, err := ParseConfig([]byte(base + tc.admin))
		if tc.field == "" {
			if err != nil {
				t.Errorf("%q: %v", tc.admin, err)
			} else if tc.admin == "" && cfg.Admin.Listen != DefaultAdminListen {
				t.Errorf("default admin.listen %q", cfg.Admin.Listen)
			}
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: got %v, want an error at %s saying %q", tc.admin, err, tc.field, tc.msg)
		}
	}
}
