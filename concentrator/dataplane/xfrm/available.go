package xfrm

import (
	"errors"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// probeSPI is the SPI of Available's throwaway state: from the range
// 1-255 that IANA reserves, so no negotiated SA ever has it.
const probeSPI = 0xfe

// Available reports whether this kernel can run the xfrm data plane: it
// adds and deletes a throwaway ESP-in-UDP AES-GCM tunnel state in a fresh
// network namespace (so nothing of the host is touched), and returns nil if
// that works or an error saying why not (no ESP, no AEAD, no permission).
// When no namespace can be created it tries in the current one, with the
// reserved SPI 0xfe between documentation addresses.
func Available() error {
	errc := make(chan error, 1)
	go func() {
		// This thread enters a new namespace and is never unlocked: it
		// ends with the goroutine and the namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("%w: %w", errNoNetns, err)
			return
		}
		errc <- probe()
	}()
	err := <-errc
	if errors.Is(err, errNoNetns) {
		return probe()
	}
	return err
}

var errNoNetns = errors.New("no fresh network namespace")

func probe() error {
	h, err := netlink.NewHandle(unix.NETLINK_XFRM)
	if err != nil {
		return fmt.Errorf("xfrm netlink: %w", err)
	}
	defer h.Close()
	key := make([]byte, 36)
	st := &netlink.XfrmState{
		Src: net.IPv4(192, 0, 2, 1), Dst: net.IPv4(192, 0, 2, 2),
		Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL, Spi: probeSPI,
		Aead:  &netlink.XfrmStateAlgo{Name: "rfc4106(gcm(aes))", Key: key, ICVLen: 128},
		Encap: &netlink.XfrmStateEncap{Type: netlink.XFRM_ENCAP_ESPINUDP, SrcPort: 4500, DstPort: 4500, OriginalAddress: net.IPv4zero},
		ESN:   true, ReplayWindow: 128,
	}
	if err := h.XfrmStateAdd(st); err != nil && !isExist(err) {
		return fmt.Errorf("kernel refuses an ESP-in-UDP AES-GCM state: %w", err)
	}
	if err := h.XfrmStateDel(st); err != nil {
		return fmt.Errorf("delete probe state: %w", err)
	}
	return nil
}
