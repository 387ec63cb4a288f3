package ike

// replayDelta is how far RFC 6311's IPSEC_REPLAY_COUNTER_SYNC asks the
// peer to move its outbound ESP sequence numbers after a restore: past
// what we may have received since the last write; 0 without CHILD SAs.
func (sa *IKESA) replayDelta() uint64 {
	if len(sa.children) == 0 {
		return 0
	}
	return defaultSeqBlock
}

const defaultSeqBlock = 1 << 12
