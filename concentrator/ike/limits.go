package ike

// Implementation limits: bounds on what a peer can make us parse or keep.
const (
	maxProposals             = 32
	maxTransformsPerProposal = 64
	maxPayloads              = 64
	maxCPAttrs               = 64
	maxMessageSize           = 65535
	maxCertPayloads          = 8
	headerLen                = 28
	genericHeaderLen         = 4

	// MaxFragments bounds the number of SKF fragments of one message we
	// reassemble, and MaxReassemblyBytes their total size (RFC 7383 §2.6.1
	// leaves both to the implementation).
	MaxFragments       = 32
	MaxReassemblyBytes = 64 << 10
)
