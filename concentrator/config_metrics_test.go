package concentrator

import (
	"errors"
	"testing"
)

func TestMetricsListen(t *testing.T) {
	for _, tc := range []struct {
		listen  string
		enabled bool
		bad     bool
	}{
		{"", false, false}, {"off", false, false}, {"127.0.0.1:9180", true, false}, {":9180", true, false},
		{"[::1]:0", true, false}, {"9180", false, true}, {"localhost:9180", false, true}, {"127.0.0.1:70000", false, true},
		{"127.0.0.1:x", false, true},
	} {
		c, err := ParseConfig([]byte(minimal + "metrics:\n  listen: \"" + tc.listen + "\"\n"))
		var fe *FieldError
		if tc.bad {
			if !errors.As(err, &fe) || fe.Field != "metrics.listen" {
				t.Errorf("listen %q: want an error at metrics.listen, got %v", tc.listen, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("listen %q: %v", tc.listen, err)
		} else if c.Metrics.Enabled() != tc.enabled {
			t.Errorf("listen %q: enabled %v", tc.listen, c.Metrics.Enabled())
		}
	}
	if _, err := ParseConfig([]byte(minimal + "metrics:\n  port: 1\n")); err == nil {
		t.Error("unknown key metrics.port accepted")
	}
}
