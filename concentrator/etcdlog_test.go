package concentrator

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/internal/syncbuf"
)

// Embedded etcd's own log lines reach the node's log (component=etcd) from
// statestore.etcd_log_level; at the default (warn) a clean start says
// nothing.
func TestNodeEtcdLogs(t *testing.T) {
	for _, level := range []string{"info", "warn"} {
		t.Run(level, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(nodeConfig(1, "", fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %[1]s\n  cluster_key_file: %[1]s.key\n  etcd_log_level: %[2]s\n", t.TempDir(), level))))
			if err != nil {
				t.Fatal(err)
			}
			var buf syncbuf.Buffer
			n, err := New(cfg, slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), memory.New())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- n.Run(ctx) }()
			select {
			case <-n.Ready():
			case err := <-done:
				t.Fatal(err)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			etcdInfo := ""
			for _, l := range strings.Split(buf.String(), "\n") {
				if strings.Contains(l, `"component":"etcd"`) && strings.Contains(l, `"level":"INFO"`) {
					etcdInfo = l
					break
				}
			}
			if level == "info" && etcdInfo == "" {
				t.Fatalf("no etcd info lines at etcd_log_level info:\n%.3000s", buf.String())
			}
			if level == "warn" && etcdInfo != "" {
				t.Fatalf("an etcd info line at etcd_log_level warn: %s", etcdInfo)
			}
		})
	}
}
