package concentrator

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

const xfrmBase = `identity: {id: conc.example}
auth: {psks: [{id: gw1@iot.example, secret: s3cret-s3cret-s3cret}]}
children: {local_ts: [10.30.0.0/24], remote_ts: [10.20.0.0/16]}
`

func TestXFRMConfig(t *testing.T) {
	c, err := ParseConfig([]byte(xfrmBase))
	if err != nil {
		t.Fatal(err)
	}
	x := c.DataPlane.XFRM
	if !x.MSSClamp || x.ReplayWindow != 128 || !slices.Equal(x.HThresh4, []int{0, 32}) || x.SocketRecvBuffer != 0 {
		t.Errorf("defaults: %+v", x)
	}
	c, err = ParseConfig([]byte(xfrmBase + `dataplane:
  mode: xfrm
  xfrm: {socket_recv_buffer: 4194304, socket_send_buffer: 1048576, mss_clamp: false, mss: 1300, replay_window: 1024, hthresh4: [0, 24]}
`))
	if err != nil {
		t.Fatal(err)
	}
	x = c.DataPlane.XFRM
	if c.DataPlane.Mode != "xfrm" || x.SocketRecvBuffer != 4<<20 || x.SocketSendBuffer != 1<<20 || x.MSSClamp || x.MSS != 1300 ||
		x.ReplayWindow != 1024 || !slices.Equal(x.HThresh4, []int{0, 24}) {
		t.Errorf("parsed: %+v", x)
	}
}

func TestXFRMConfigErrorsNameTheField(t *testing.T) {
	for field, yaml := range map[string]string{
		"dataplane.xfrm.socket_recv_buffer": "socket_recv_buffer: -1",
		"dataplane.xfrm.socket_send_buffer": "socket_send_buffer: 2000000000",
		"dataplane.xfrm.mss":                "mss: 100",
		"dataplane.xfrm.replay_window":      "replay_window: 8",
		"dataplane.xfrm.hthresh4":           "hthresh4: [0, 33]",
	} {
		_, err := ParseConfig([]byte(xfrmBase + "dataplane:\n  xfrm: {" + yaml + "}\n"))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != field {
			t.Errorf("%s: error %v, want one naming %s", yaml, err, field)
		}
		if err != nil && !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v does not name the field", yaml, err)
		}
	}
}
