package ike

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// EncrAlg is an encryption transform with its key length in bits (0 for
// transforms with a fixed key length).
type EncrAlg struct {
	ID     uint16
	KeyLen uint16
}

// ProposalSpec is a configured proposal: acceptable algorithms of each
// transform type, in preference order. It uses strongSwan's proposal syntax
// so operators can carry configurations over ("aes256gcm16-prfsha256-x25519").
type ProposalSpec struct {
	Encrs  []EncrAlg
	Integs []uint16
	PRFs   []uint16
	Groups []uint16
	ESNs   []uint16
	// AddKEs are the additional key exchanges (RFC 9370): AddKEs[i] lists
	// the methods acceptable as ADDKE(i+1), transform type 6+i; 0 in a list
	// is NONE (the exchange may be left out). strongSwan's syntax:
	// "ke1_mlkem768", "ke2_none". IKE proposals run them in
	// IKE_INTERMEDIATE and, on rekeys, IKE_FOLLOWUP_KE; ESP proposals (with
	// a group) in IKE_FOLLOWUP_KE when a CREATE_CHILD_SA creates or rekeys a
	// CHILD SA (the first CHILD SA, created in IKE_AUTH, has none).
	AddKEs [NumAddKE][]uint16
}

// NumAddKE is the number of additional key exchange transform types
// (ADDKE1..ADDKE7, RFC 9370 §2.2).
const NumAddKE = 7

// HasAddKE reports whether the spec asks for any additional key exchange.
func (p *ProposalSpec) HasAddKE() bool {
	for _, l := range p.AddKEs {
		if len(l) > 0 {
			return true
		}
	}
	return false
}

// AEAD reports whether the proposal's ciphers are all combined-mode.
func (p *ProposalSpec) AEAD() bool {
	for _, e := range p.Encrs {
		if !isAEAD(e.ID) {
			return false
		}
	}
	return len(p.Encrs) > 0
}

func isAEAD(id uint16) bool {
	switch id {
	case suite.EncrAESGCM8, suite.EncrAESGCM12, suite.EncrAESGCM16, suite.EncrChaCha20Poly1305:
		return true
	}
	return false
}

// ProposalError is a configuration proposal that cannot be used.
type ProposalError struct {
	Proposal string
	Reason   string
}

func (e *ProposalError) Error() string { return fmt.Sprintf("proposal %q: %s", e.Proposal, e.Reason) }

var encrKeywords = map[string]EncrAlg{
	"aes128": {suite.EncrAESCBC, 128}, "aes192": {suite.EncrAESCBC, 192}, "aes256": {suite.EncrAESCBC, 256},
	"aes128gcm16": {suite.EncrAESGCM16, 128}, "aes192gcm16": {suite.EncrAESGCM16, 192}, "aes256gcm16": {suite.EncrAESGCM16, 256},
	"aes128gcm": {suite.EncrAESGCM16, 128}, "aes192gcm": {suite.EncrAESGCM16, 192}, "aes256gcm": {suite.EncrAESGCM16, 256},
	"aes128gcm12": {suite.EncrAESGCM12, 128}, "aes256gcm12": {suite.EncrAESGCM12, 256},
	"aes128gcm8": {suite.EncrAESGCM8, 128}, "aes256gcm8": {suite.EncrAESGCM8, 256},
	"chacha20poly1305": {suite.EncrChaCha20Poly1305, 0},
	"3des":             {suite.Encr3DES, 0}, "des": {suite.EncrDES, 0},
}

var integKeywords = map[string]uint16{
	"sha256": suite.IntegHMACSHA256128, "sha2_256": suite.IntegHMACSHA256128,
	"sha384": suite.IntegHMACSHA384192, "sha2_384": suite.IntegHMACSHA384192,
	"sha512": suite.IntegHMACSHA512256, "sha2_512": suite.IntegHMACSHA512256,
	"sha1": suite.IntegHMACSHA196, "md5": suite.IntegHMACMD596,
}

var prfKeywords = map[string]uint16{
	"prfsha256": suite.PRFHMACSHA256, "prfsha384": suite.PRFHMACSHA384, "prfsha512": suite.PRFHMACSHA512,
	"prfsha1": suite.PRFHMACSHA1, "prfmd5": suite.PRFHMACMD5,
}

var groupKeywords = map[string]uint16{
	"modp768": suite.Group1, "modp1024": suite.Group2, "modp1536": suite.Group5,
	"modp2048": suite.Group14, "modp3072": suite.Group15, "modp4096": suite.Group16,
	"ecp256": suite.Group19, "ecp384": suite.Group20, "ecp521": suite.Group21,
	"x25519": suite.Group31, "curve25519": suite.Group31,
	"mlkem768": suite.GroupMLKEM768, "mlkem1024": suite.GroupMLKEM1024,
}

// parseAddKE reads strongSwan's "keN_method" keyword: N in 1..7 and a
// key exchange method or "none".
func parseAddKE(kw string) (idx int, id uint16, ok bool, err string) {
	if len(kw) < 5 || kw[:2] != "ke" || kw[3] != '_' || kw[2] < '1' || kw[2] > '7' {
		return 0, 0, false, ""
	}
	idx = int(kw[2] - '1')
	name := kw[4:]
	if name == "none" {
		return idx, 0, true, ""
	}
	g, known := groupKeywords[name]
	if !known {
		return 0, 0, true, "unknown key exchange method " + name + " in " + kw
	}
	return idx, g, true, ""
}

var integToPRF = map[uint16]uint16{
	suite.IntegHMACSHA256128: suite.PRFHMACSHA256, suite.IntegHMACSHA384192: suite.PRFHMACSHA384,
	suite.IntegHMACSHA512256: suite.PRFHMACSHA512, suite.IntegHMACSHA196: suite.PRFHMACSHA1,
	suite.IntegHMACMD596: suite.PRFHMACMD5,
}

// ParseProposal parses a proposal in strongSwan syntax. esp selects the
// ESP grammar (no PRF; groups mean PFS; esn/noesn allowed). Weak algorithms
// are refused with a *suite.WeakError unless allowWeak.
func ParseProposal(s string, esp, allowWeak bool) (ProposalSpec, error) {
	var p ProposalSpec
	fail := func(r string) (ProposalSpec, error) { return ProposalSpec{}, &ProposalError{Proposal: s, Reason: r} }
	weak := func(typ uint8, id uint16) error {
		if !allowWeak && suite.Weak(typ, id) {
			return &ProposalError{Proposal: s, Reason: (&suite.WeakError{Type: typ, ID: id}).Error()}
		}
		return nil
	}
	if strings.TrimSpace(s) == "" {
		return fail("empty")
	}
	for _, kw := range strings.Split(strings.ToLower(strings.TrimSpace(s)), "-") {
		if e, ok := encrKeywords[kw]; ok {
			if err := weak(suite.TypeENCR, e.ID); err != nil {
				return ProposalSpec{}, err
			}
			p.Encrs = append(p.Encrs, e)
		} else if id, ok := integKeywords[kw]; ok {
			if err := weak(suite.TypeINTEG, id); err != nil {
				return ProposalSpec{}, err
			}
			p.Integs = append(p.Integs, id)
		} else if id, ok := prfKeywords[kw]; ok && !esp {
			if err := weak(suite.TypePRF, id); err != nil {
				return ProposalSpec{}, err
			}
			p.PRFs = append(p.PRFs, id)
		} else if id, ok := groupKeywords[kw]; ok {
			if err := weak(suite.TypeKE, id); err != nil {
				return ProposalSpec{}, err
			}
			p.Groups = append(p.Groups, id)
		} else if i, g, ok, reason := parseAddKE(kw); ok {
			if reason != "" {
				return fail(reason)
			}
			if g != 0 {
				if err := weak(suite.TypeKE, g); err != nil {
					return ProposalSpec{}, err
				}
			}
			p.AddKEs[i] = append(p.AddKEs[i], g)
		} else if kw == "esn" && esp {
			p.ESNs = append(p.ESNs, suite.ESNYes)
		} else if kw == "noesn" && esp {
			p.ESNs = append(p.ESNs, suite.ESNNo)
		} else {
			return fail("unknown algorithm " + kw)
		}
	}
	if len(p.Encrs) == 0 {
		return fail("no encryption algorithm")
	}
	aead := p.AEAD()
	for _, e := range p.Encrs {
		if isAEAD(e.ID) != aead {
			return fail("mixes AEAD and non-AEAD ciphers")
		}
	}
	if aead && len(p.Integs) > 0 {
		return fail("AEAD ciphers take no integrity algorithm")
	}
	if !aead && len(p.Integs) == 0 {
		return fail("no integrity algorithm")
	}
	if !esp {
		if len(p.PRFs) == 0 {
			if aead {
				return fail("AEAD proposals need a PRF (e.g. prfsha256)")
			}
			for _, i := range p.Integs {
				if prf, ok := integToPRF[i]; ok {
					p.PRFs = append(p.PRFs, prf)
				}
			}
		}
		if len(p.Groups) == 0 {
			return fail("no key exchange group")
		}
	} else {
		if len(p.ESNs) == 0 {
			p.ESNs = []uint16{suite.ESNNo}
		}
		if p.HasAddKE() && len(p.Groups) == 0 {
			// RFC 9370 §2.2.4: the additional exchanges follow the key
			// exchange of CREATE_CHILD_SA (IKE_FOLLOWUP_KE).
			return fail("additional key exchanges need a key exchange group (PFS) in an ESP proposal")
		}
	}
	return p, nil
}

// String renders the spec in the same syntax.
func (p *ProposalSpec) String() string {
	var parts []string
	for _, e := range p.Encrs {
		parts = append(parts, encrName(e))
	}
	for _, i := range p.Integs {
		parts = append(parts, suite.IntegName(i))
	}
	for _, f := range p.PRFs {
		parts = append(parts, suite.PRFName(f))
	}
	for _, g := range p.Groups {
		parts = append(parts, suite.GroupName(g))
	}
	for i, l := range p.AddKEs {
		for _, g := range l {
			parts = append(parts, addKEName(i, g))
		}
	}
	return strings.Join(parts, "/")
}

func addKEName(i int, g uint16) string {
	name := "NONE"
	if g != 0 {
		name = suite.GroupName(g)
	}
	return fmt.Sprintf("KE%d_%s", i+1, name)
}

func encrName(e EncrAlg) string {
	if e.KeyLen != 0 {
		return suite.EncrName(e.ID) + "-" + strconv.Itoa(int(e.KeyLen))
	}
	return suite.EncrName(e.ID)
}

// Selected is a negotiated proposal: one transform of each type.
type Selected struct {
	Num      uint8
	Protocol ProtocolID
	SPI      []byte // the peer's SPI from its proposal (ESP: its inbound SPI)
	Encr     EncrAlg
	Integ    uint16
	PRF      uint16
	Group    uint16 // 0: none
	ESN      uint16
	// AddKE are the negotiated additional key exchanges (RFC 9370),
	// ADDKE1..ADDKE7; 0: none.
	AddKE [NumAddKE]uint16
}

// propKey is a Selected without its SPI: what IKE SAs of one suite share.
type propKey struct {
	Num      uint8
	Protocol ProtocolID
	Encr     EncrAlg
	Integ    uint16
	PRF      uint16
	Group    uint16
	ESN      uint16
	AddKE    [NumAddKE]uint16
}

// sharedProp returns the engine's copy of an IKE SA's negotiated proposal
// without its SPI, so that the SAs of one suite share one (memory per SA;
// the SPIs are the SA's own fields). The table holds one entry per
// proposal number and suite the engine's configured proposals allow.
// Nothing writes into an SA's proposal.
func (e *Engine) sharedProp(s *Selected) *Selected {
	k := propKey{s.Num, s.Protocol, s.Encr, s.Integ, s.PRF, s.Group, s.ESN, s.AddKE}
	if p := e.props[k]; p != nil {
		return p
	}
	p := s.kept()
	e.props[k] = &p
	return &p
}

// kept returns the proposal as a CHILD SA keeps it: without the peer's
// SPI, which is its OutSPI (a 4-byte slice of its own per SA otherwise).
func (s *Selected) kept() Selected {
	k := *s
	k.SPI = nil
	return k
}

// AddKEs returns the additional key exchanges to run, in order.
func (s *Selected) AddKEs() []uint16 {
	var out []uint16
	for _, g := range s.AddKE {
		if g != 0 {
			out = append(out, g)
		}
	}
	return out
}

// String names the negotiated algorithms, as logs and the admin API show them.
func (s *Selected) String() string {
	// Every event of an SA names its proposal: one allocation, no fmt.
	var b strings.Builder
	b.Grow(64)
	b.WriteString(encrName(s.Encr))
	add := func(name string) {
		b.WriteByte('/')
		b.WriteString(name)
	}
	if s.Integ != 0 {
		add(suite.IntegName(s.Integ))
	}
	if s.PRF != 0 {
		add(suite.PRFName(s.PRF))
	}
	if s.Group != 0 {
		add(suite.GroupName(s.Group))
	}
	for i, g := range s.AddKE {
		if g != 0 {
			add(addKEName(i, g))
		}
	}
	if s.Protocol == ProtoESP && s.ESN == suite.ESNYes {
		add("ESN")
	}
	return b.String()
}

// Proposal renders s as an SA payload proposal with the given SPI.
func (s *Selected) Proposal(spi []byte) Proposal {
	pr := Proposal{Num: s.Num, Protocol: s.Protocol, SPI: spi}
	pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypeENCR, ID: s.Encr.ID, KeyLen: s.Encr.KeyLen})
	if s.PRF != 0 {
		pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypePRF, ID: s.PRF})
	}
	if s.Integ != 0 {
		pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypeINTEG, ID: s.Integ})
	}
	if s.Group != 0 {
		pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypeKE, ID: s.Group})
	}
	for i, g := range s.AddKE {
		if g != 0 {
			pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypeADDKE1 + uint8(i), ID: g})
		}
	}
	if s.Protocol == ProtoESP {
		pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypeESN, ID: s.ESN})
	}
	return pr
}

// Proposals renders specs as SA payload proposals (numbered from 1) for an
// initiator. spi is the SPI to put in each (nil for IKE_SA_INIT).
func Proposals(specs []ProposalSpec, proto ProtocolID, spi []byte, withGroups bool) []Proposal {
	out := make([]Proposal, 0, len(specs))
	for i, sp := range specs {
		pr := Proposal{Num: uint8(i + 1), Protocol: proto, SPI: spi}
		for _, e := range sp.Encrs {
			pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypeENCR, ID: e.ID, KeyLen: e.KeyLen})
		}
		for _, f := range sp.PRFs {
			pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypePRF, ID: f})
		}
		for _, in := range sp.Integs {
			pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypeINTEG, ID: in})
		}
		if withGroups {
			for _, g := range sp.Groups {
				pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypeKE, ID: g})
			}
			for i, l := range sp.AddKEs {
				for _, g := range l {
					pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypeADDKE1 + uint8(i), ID: g})
				}
			}
		}
		if proto == ProtoESP {
			for _, e := range sp.ESNs {
				pr.Transforms = append(pr.Transforms, Transform{Type: suite.TypeESN, ID: e})
			}
		}
		out = append(out, pr)
	}
	return out
}

// SelectProposal picks, in our preference order, the first of our specs
// that one of the peer's proposals satisfies (one transform of every
// required type). For ESP in IKE_AUTH, wantGroup is false and key exchange
// transforms are ignored. The result names the peer's proposal number and
// SPI. It returns nil if nothing matches.
func SelectProposal(ours []ProposalSpec, theirs []Proposal, proto ProtocolID, wantGroup bool) *Selected {
	for i := range ours {
		sp := &ours[i]
		for j := range theirs {
			pr := &theirs[j]
			if pr.Protocol != proto {
				continue
			}
			if s, ok := match(sp, pr, wantGroup); ok {
				return s
			}
		}
	}
	return nil
}

func offers(pr *Proposal, typ uint8, id uint16, keyLen uint16) bool {
	for _, t := range pr.Transforms {
		if t.Type == typ && t.ID == id && t.KeyLen == keyLen && !t.UnknownAttrs {
			return true
		}
	}
	return false
}

func hasType(pr *Proposal, typ uint8) bool {
	for _, t := range pr.Transforms {
		if t.Type == typ {
			return true
		}
	}
	return false
}

func match(sp *ProposalSpec, pr *Proposal, wantGroup bool) (*Selected, bool) {
	s := &Selected{Num: pr.Num, Protocol: pr.Protocol, SPI: pr.SPI}
	found := false
	for _, e := range sp.Encrs {
		if offers(pr, suite.TypeENCR, e.ID, e.KeyLen) {
			s.Encr, found = e, true
			break
		}
	}
	if !found {
		return nil, false
	}
	if isAEAD(s.Encr.ID) {
		// An AEAD proposal carries no integrity algorithm, or only NONE.
		for _, t := range pr.Transforms {
			if t.Type == suite.TypeINTEG && t.ID != suite.IntegNone {
				return nil, false
			}
		}
	} else {
		found = false
		for _, i := range sp.Integs {
			if offers(pr, suite.TypeINTEG, i, 0) {
				s.Integ, found = i, true
				break
			}
		}
		if !found {
			return nil, false
		}
	}
	if pr.Protocol == ProtoIKE {
		found = false
		for _, f := range sp.PRFs {
			if offers(pr, suite.TypePRF, f, 0) {
				s.PRF, found = f, true
				break
			}
		}
		if !found {
			return nil, false
		}
	}
	if wantGroup {
		found = false
		for _, g := range sp.Groups {
			if offers(pr, suite.TypeKE, g, 0) {
				s.Group, found = g, true
				break
			}
		}
		if !found {
			return nil, false
		}
		if !matchAddKE(sp, pr, s) {
			return nil, false
		}
	}
	if pr.Protocol == ProtoESP {
		if !hasType(pr, suite.TypeESN) {
			s.ESN = suite.ESNNo
		} else {
			found = false
			for _, e := range sp.ESNs {
				if offers(pr, suite.TypeESN, e, 0) {
					s.ESN, found = e, true
					break
				}
			}
			if !found {
				return nil, false
			}
		}
	}
	return s, true
}

// AcceptSelected checks that a responder's chosen proposal is one of ours
// (initiator side): exactly one transform of each required type, each one
// we offered.
func AcceptSelected(ours []ProposalSpec, sa *SA, proto ProtocolID, wantGroup bool) (*Selected, error) {
	if sa == nil || len(sa.Proposals) != 1 {
		return nil, errorf(NO_PROPOSAL_CHOSEN, "responder must choose exactly one proposal")
	}
	pr := &sa.Proposals[0]
	if pr.Protocol != proto {
		return nil, errorf(NO_PROPOSAL_CHOSEN, "responder chose protocol %d", pr.Protocol)
	}
	counts := map[uint8]int{}
	for _, t := range pr.Transforms {
		counts[t.Type]++
	}
	for typ, n := range counts {
		if n > 1 {
			return nil, errorf(NO_PROPOSAL_CHOSEN, "responder chose %d transforms of type %d", n, typ)
		}
	}
	for i := range ours {
		if s, ok := match(&ours[i], pr, wantGroup); ok {
			return s, nil
		}
	}
	return nil, errorf(NO_PROPOSAL_CHOSEN, "responder chose a proposal we did not offer")
}

// matchAddKE picks one method of each additional key exchange type
// (RFC 9370 §2.2.1): the first of ours the peer offers. NONE (0) is
// offered by a proposal that lists it or has no transform of the type; a
// type we do not configure is acceptable only as NONE.
func matchAddKE(sp *ProposalSpec, pr *Proposal, s *Selected) bool {
	for i := range NumAddKE {
		typ := suite.TypeADDKE1 + uint8(i)
		has := hasType(pr, typ)
		ours := sp.AddKEs[i]
		if len(ours) == 0 {
			if has && !offers(pr, typ, 0, 0) {
				return false
			}
			continue
		}
		found := false
		for _, g := range ours {
			if g == 0 && (!has || offers(pr, typ, 0, 0)) || g != 0 && offers(pr, typ, g, 0) {
				s.AddKE[i], found = g, true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
