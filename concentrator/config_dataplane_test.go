package concentrator

import (
	"errors"
	"testing"
)

func TestDataPlaneConfig(t *testing.T) {
	c, err := ParseConfig([]byte(minimal + `dataplane:
  mode: userspace
  userspace:
    tun: ikf9
    mtu: 1380
    workers: 4
    queue_len: 256
    replay_window: 2048
    socket_recv_buffer: 1048576
`))
	if err != nil {
		t.Fatal(err)
	}
	want := UserspaceConfig{TUN: "ikf9", MTU: 1380, Workers: 4, QueueLen: 256, ReplayWindow: 2048, SocketRecvBuffer: 1 << 20}
	if c.DataPlane.Mode != "userspace" || c.DataPlane.Userspace != want {
		t.Fatalf("dataplane %+v, want userspace %+v", c.DataPlane, want)
	}
	// Defaults apply to the fields left out.
	c, err = ParseConfig([]byte(minimal + "dataplane:\n  mode: auto\n  userspace:\n    mtu: 1300\n"))
	if err != nil {
		t.Fatal(err)
	}
	if u := c.DataPlane.Userspace; u.TUN != "ikf0" || u.MTU != 1300 || u.QueueLen != 1024 || u.ReplayWindow != 1024 || u.Workers != 0 {
		t.Fatalf("defaults: %+v", u)
	}
	for _, m := range DataPlaneModes {
		if _, err := ParseConfig([]byte(minimal + "dataplane:\n  mode: " + m + "\n")); err != nil {
			t.Errorf("mode %s: %v", m, err)
		}
	}
}

func TestDataPlaneConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ yaml, field string }{
		{"  mode: kernel\n", "dataplane.mode"},
		{"  userspace:\n    tun: ''\n", "dataplane.userspace.tun"},
		{"  userspace:\n    tun: a-name-far-too-long\n", "dataplane.userspace.tun"},
		{"  userspace:\n    tun: a/b\n", "dataplane.userspace.tun"},
		{"  userspace:\n    mtu: 100\n", "dataplane.userspace.mtu"},
		{"  userspace:\n    mtu: 65000\n", "dataplane.userspace.mtu"},
		{"  userspace:\n    workers: -1\n", "dataplane.userspace.workers"},
		{"  userspace:\n    queue_len: 0\n", "dataplane.userspace.queue_len"},
		{"  userspace:\n    replay_window: 16\n", "dataplane.userspace.replay_window"},
		{"  userspace:\n    replay_window: 100000\n", "dataplane.userspace.replay_window"},
		{"  userspace:\n    mtu: big\n", "dataplane.userspace.mtu"},
		{"  userspace:\n    bogus: 1\n", "dataplane.userspace.bogus"},
		{"  userspace:\n    socket_recv_buffer: -1\n", "dataplane.userspace.socket_recv_buffer"},
		{"  userspace:\n    socket_send_buffer: 2000000000\n", "dataplane.userspace.socket_send_buffer"},
	} {
		_, err := ParseConfig([]byte(minimal + "dataplane:\n" + tc.yaml))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%q: want an error at %s, got %v", tc.yaml, tc.field, err)
		}
	}
}
