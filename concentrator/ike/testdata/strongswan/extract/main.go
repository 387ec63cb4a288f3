//go:build ignore

// Command extract turns the recorded strongSwan 5.9.8 exchanges (charon logs at
// level 4 plus the swanctl.conf files and certificates) into the self-contained
// known-answer files ../<case>.json.
//
// Usage, from the repository root:
//
//	go run ./concentrator/ike/testdata/strongswan/extract/main.go /path/to/vectors/strongswan
//
// The responder (concentrator) log is the primary source; the initiator
// (gateway) log is used to cross-check every message, ESP packet and key.
// Besides extracting, the program recomputes everything it can from the
// extracted data (SKEYSEED, SK_*, SK payload decryption, AUTH octets, PSK
// AUTH values, signatures, CHILD keys, ESP decryption) and prints OK/FAIL.
// It exits non-zero if any check fails; the JSON files are written anyway.
package main

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

var cases = []string{
	"x25519-aesgcm256-psk",
	"x25519-aesgcm256-ecdsa",
	"x25519-aesgcm256-ed25519",
	"modp2048-aes256cbc-sha256-psk",
}

// ---------------------------------------------------------------------------
// charon log parsing

// entry is one log line. Hex dump continuation lines are folded into the
// dump of their header line ("label => N bytes").
type entry struct {
	idx    int // position in the log (line number, 1-based)
	time   string
	thread string
	sub    string
	ctx    string // "<gw|1>" or ""
	text   string
	label  string // set when the line is a dump header
	n      int    // announced byte count of the dump
	data   []byte // reassembled dump bytes (len == n once complete)
	isDump bool
}

type logFile struct {
	name    string
	entries []*entry
}

var (
	lineRe   = regexp.MustCompile(`^(\d\d:\d\d:\d\d\.\d{3}) (\d\d)\[([A-Z]+)\] (?:(<[^>]*>) )?(.*)$`)
	headerRe = regexp.MustCompile(`^(.*?)\s*=> (\d+) bytes(?: @ .*)?$`)
	hexRe    = regexp.MustCompile(`^\s*(\d+): (.*)$`)
)

func parseLog(path string) (*logFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	lf := &logFile{name: path}
	open := map[string]*entry{} // thread -> dump being reassembled
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	ln := 0
	for sc.Scan() {
		ln++
		m := lineRe.FindStringSubmatch(sc.Text())
		if m == nil {
			return nil, fmt.Errorf("%s:%d: unrecognised line", path, ln)
		}
		thread, text := m[2], m[5]
		if d := open[thread]; d != nil {
			hm := hexRe.FindStringSubmatch(text)
			if hm == nil {
				return nil, fmt.Errorf("%s:%d: dump %q from line %d incomplete: %d of %d bytes",
					path, ln, d.label, d.idx, len(d.data), d.n)
			}
			off, _ := strconv.Atoi(hm[1])
			if off != len(d.data) {
				return nil, fmt.Errorf("%s:%d: dump offset %d, expected %d", path, ln, off, len(d.data))
			}
			k := d.n - len(d.data)
			if k > 16 {
				k = 16
			}
			s := hm[2]
			if len(s) < 3*k-1 {
				return nil, fmt.Errorf("%s:%d: short hex line", path, ln)
			}
			for i := 0; i < k; i++ {
				b, err := strconv.ParseUint(s[3*i:3*i+2], 16, 8)
				if err != nil || (3*i+2 < len(s) && s[3*i+2] != ' ') {
					return nil, fmt.Errorf("%s:%d: bad hex byte %d", path, ln, i)
				}
				d.data = append(d.data, byte(b))
			}
			// a full line of 16 bytes must not have a 17th hex byte
			if k < 16 && len(s) >= 3*k+2 && isHexPair(s[3*k:3*k+2]) {
				return nil, fmt.Errorf("%s:%d: more bytes than announced", path, ln)
			}
			if len(d.data) == d.n {
				delete(open, thread)
			}
			continue
		}
		e := &entry{idx: ln, time: m[1], thread: thread, sub: m[3], ctx: m[4], text: text}
		if hm := headerRe.FindStringSubmatch(text); hm != nil {
			e.isDump = true
			e.label = strings.TrimSpace(hm[1])
			e.n, _ = strconv.Atoi(hm[2])
			e.data = []byte{}
			if e.n > 0 {
				open[thread] = e
			}
		}
		lf.entries = append(lf.entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for t, d := range open {
		return nil, fmt.Errorf("%s: thread %s: dump %q at line %d truncated at end of file", path, t, d.label, d.idx)
	}
	return lf, nil
}

func isHexPair(s string) bool {
	_, err := strconv.ParseUint(s, 16, 8)
	return err == nil && s == strings.ToUpper(s) && s[0] != ' '
}

// dumps returns all complete dumps with the given label.
func (l *logFile) dumps(label string) []*entry {
	var out []*entry
	for _, e := range l.entries {
		if e.isDump && e.label == label {
			out = append(out, e)
		}
	}
	return out
}

// nextInThread returns the first entry after position i in the same thread
// whose text has the given prefix.
func (l *logFile) nextInThread(i int, prefix string) *entry {
	t := l.entries[i].thread
	for _, e := range l.entries[i+1:] {
		if e.thread == t && strings.HasPrefix(e.text, prefix) {
			return e
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// packets seen in one log

type packet struct {
	idx     int    // order key within the log
	sent    bool   // sent by the log's owner
	port    int    // local UDP port of the log's owner
	udp     []byte // UDP payload
	isESP   bool   // ESP-in-UDP (port 4500, no non-ESP marker)
	isKA    bool   // NAT keepalive
	espRec  *espRecord
	srcLine int
}

type espRecord struct {
	idx      int
	enc      bool // "ESP before encryption" (sent) vs "ESP decryption" (received)
	spi      string
	seq      uint32
	iv, ct   []byte
	icv      []byte
	payload  []byte
	padding  []byte
	padLen   int
	nextHdr  int
	complete bool
}

func (r *espRecord) packet() []byte {
	spi, _ := hex.DecodeString(r.spi)
	var b []byte
	b = append(b, spi...)
	b = binary.BigEndian.AppendUint32(b, r.seq)
	b = append(b, r.iv...)
	b = append(b, r.ct...)
	b = append(b, r.icv...)
	return b
}

var (
	recvFromRe = regexp.MustCompile(`^received packet: from (\S+)\[(\d+)\] to (\S+)\[(\d+)\]`)
	sendRe     = regexp.MustCompile(`^sending packet: from (\S+)\[(\d+)\] to (\S+)\[(\d+)\] \((\d+) bytes\)$`)
	espSPIRe   = regexp.MustCompile(`^\s*SPI ([0-9a-f]{8}) \[seq (\d+)\]$`)
	padLenRe   = regexp.MustCompile(`^\s*padding length = (\d+), next header = (\d+)$`)
)

// packets extracts, in log order, every UDP datagram the log's owner received
// (NET hex dump) or sent (IKE: last "generated data of this generator" of the
// worker thread before its "sending packet ... (N bytes)" line; ESP: the
// "ESP packet:" record of the encrypting thread).
func (l *logFile) packets() ([]*packet, []*espRecord, error) {
	var out []*packet
	// ESP records
	cur := map[string]*espRecord{}
	var recs []*espRecord
	for _, e := range l.entries {
		if e.sub != "ESP" {
			continue
		}
		r := cur[e.thread]
		switch {
		case e.text == "ESP decryption:":
			r = &espRecord{idx: e.idx}
			cur[e.thread] = r
			recs = append(recs, r)
		case e.text == "ESP before encryption:":
			r = &espRecord{idx: e.idx, enc: true}
			cur[e.thread] = r
			recs = append(recs, r)
		case e.text == "ESP packet:":
			if r == nil || !r.enc {
				return nil, nil, fmt.Errorf("%s:%d: ESP packet without record", l.name, e.idx)
			}
			r.idx = e.idx
		case e.text == "ESP payload:":
		case r == nil:
		case espSPIRe.MatchString(e.text):
			m := espSPIRe.FindStringSubmatch(e.text)
			r.spi = m[1]
			s, _ := strconv.ParseUint(m[2], 10, 32)
			r.seq = uint32(s)
		case padLenRe.MatchString(e.text):
			m := padLenRe.FindStringSubmatch(e.text)
			r.padLen, _ = strconv.Atoi(m[1])
			r.nextHdr, _ = strconv.Atoi(m[2])
		case e.isDump:
			switch e.label {
			case "IV":
				r.iv = e.data
			case "encrypted":
				r.ct = e.data
			case "ICV":
				r.icv = e.data
				r.complete = true
			case "payload", "payload =":
				r.payload = e.data
			case "padding", "padding =":
				r.padding = e.data
			}
		}
	}
	for i, e := range l.entries {
		switch {
		case e.isDump && e.sub == "NET" && e.ctx == "" && e.label == "received packet":
			f := l.nextInThread(i, "received packet: from")
			if f == nil {
				return nil, nil, fmt.Errorf("%s:%d: no address line", l.name, e.idx)
			}
			m := recvFromRe.FindStringSubmatch(f.text)
			port, _ := strconv.Atoi(m[4])
			p := &packet{idx: e.idx, port: port, udp: e.data, srcLine: e.idx}
			classify(p)
			out = append(out, p)
		case e.sub == "NET" && e.ctx != "" && sendRe.MatchString(e.text):
			m := sendRe.FindStringSubmatch(e.text)
			port, _ := strconv.Atoi(m[2])
			n, _ := strconv.Atoi(m[5])
			var gen *entry
			for j := i - 1; j >= 0; j-- {
				g := l.entries[j]
				if g.thread == e.thread && g.isDump && g.label == "generated data of this generator" {
					gen = g
					break
				}
			}
			if gen == nil || len(gen.data) != n {
				return nil, nil, fmt.Errorf("%s:%d: no generator dump of %d bytes before sending", l.name, e.idx, n)
			}
			udp := gen.data
			if port == 4500 {
				udp = append([]byte{0, 0, 0, 0}, gen.data...)
			}
			out = append(out, &packet{idx: e.idx, sent: true, port: port, udp: udp, srcLine: gen.idx})
		}
	}
	for _, r := range recs {
		if !r.complete {
			return nil, nil, fmt.Errorf("%s:%d: incomplete ESP record", l.name, r.idx)
		}
		if r.enc {
			out = append(out, &packet{idx: r.idx, sent: true, port: 4500, udp: r.packet(), isESP: true, espRec: r, srcLine: r.idx})
		}
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].idx < out[b].idx })
	return out, recs, nil
}

func classify(p *packet) {
	if p.port == 4500 {
		switch {
		case len(p.udp) == 1 && p.udp[0] == 0xff:
			p.isKA = true
		case len(p.udp) >= 4 && bytes.Equal(p.udp[:4], []byte{0, 0, 0, 0}):
		default:
			p.isESP = true
		}
	}
}

func (p *packet) ike() []byte {
	if p.port == 4500 {
		return p.udp[4:]
	}
	return p.udp
}

// ---------------------------------------------------------------------------
// minimal IKE parsing

var exchangeNames = map[byte]string{34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}

type payload struct {
	typ  byte
	off  int // offset of the generic header within the buffer
	body []byte
	next byte
}

// payloads walks a payload chain. For an SK payload (46) the walk stops, as
// its next-payload field names the first encrypted payload.
func payloads(b []byte, first byte, off int) ([]payload, error) {
	var out []payload
	t := first
	for t != 0 {
		if off+4 > len(b) {
			return nil, fmt.Errorf("payload header beyond end")
		}
		l := int(binary.BigEndian.Uint16(b[off+2:]))
		if l < 4 || off+l > len(b) {
			return nil, fmt.Errorf("bad payload length %d at %d", l, off)
		}
		p := payload{typ: t, off: off, body: b[off+4 : off+l], next: b[off]}
		out = append(out, p)
		if t == 46 {
			return out, nil
		}
		t = b[off]
		off += l
	}
	if off != len(b) {
		return nil, fmt.Errorf("%d trailing bytes", len(b)-off)
	}
	return out, nil
}

func msgPayloads(m []byte) ([]payload, error) {
	if len(m) < 28 || int(binary.BigEndian.Uint32(m[24:])) != len(m) {
		return nil, fmt.Errorf("bad IKE header length")
	}
	return payloads(m, m[16], 28)
}

func find(ps []payload, t byte) *payload {
	for i := range ps {
		if ps[i].typ == t {
			return &ps[i]
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// crypto helpers

func prf(k []byte, parts ...[]byte) []byte {
	h := hmac.New(sha256.New, k)
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

func prfPlus(k, s []byte, n int) []byte {
	var out, t []byte
	for i := 1; len(out) < n; i++ {
		t = prf(k, t, s, []byte{byte(i)})
		out = append(out, t...)
	}
	return out[:n]
}

// decryptSK decrypts the SK payload of an IKE message (AES-GCM-16 with a
// 36-byte key when integ is nil, else AES-CBC + HMAC-SHA2-256-128) and returns
// the inner payload chain (padding and pad length removed).
func decryptSK(msg []byte, sk *payload, encr, integ []byte) ([]byte, error) {
	data := sk.body
	var pt []byte
	if integ == nil {
		if len(encr) != 36 || len(data) < 8+16 {
			return nil, fmt.Errorf("bad GCM parameters")
		}
		blk, err := aes.NewCipher(encr[:32])
		if err != nil {
			return nil, err
		}
		g, err := cipher.NewGCM(blk)
		if err != nil {
			return nil, err
		}
		nonce := append(append([]byte{}, encr[32:]...), data[:8]...)
		pt, err = g.Open(nil, nonce, data[8:], msg[:sk.off+4])
		if err != nil {
			return nil, fmt.Errorf("GCM open: %v", err)
		}
	} else {
		if len(data) < 16+16 || (len(data)-32)%16 != 0 {
			return nil, fmt.Errorf("bad CBC payload length")
		}
		mac := prf(integ, msg[:len(msg)-16])[:16]
		if !hmac.Equal(mac, msg[len(msg)-16:]) {
			return nil, fmt.Errorf("integrity check failed")
		}
		blk, err := aes.NewCipher(encr)
		if err != nil {
			return nil, err
		}
		ct := data[16 : len(data)-16]
		pt = make([]byte, len(ct))
		cipher.NewCBCDecrypter(blk, data[:16]).CryptBlocks(pt, ct)
	}
	if len(pt) == 0 || int(pt[len(pt)-1]) >= len(pt) {
		return nil, fmt.Errorf("bad padding")
	}
	return pt[:len(pt)-1-int(pt[len(pt)-1])], nil
}

// decryptESP decrypts an ESP packet (RFC 4106 AES-GCM-16 or AES-CBC with
// HMAC-SHA2-256-128) and returns inner packet, pad length and next header.
func decryptESP(pkt, encr, integ []byte) ([]byte, int, int, error) {
	var pt []byte
	if integ == nil {
		blk, err := aes.NewCipher(encr[:32])
		if err != nil {
			return nil, 0, 0, err
		}
		g, _ := cipher.NewGCM(blk)
		nonce := append(append([]byte{}, encr[32:]...), pkt[8:16]...)
		pt, err = g.Open(nil, nonce, pkt[16:], pkt[:8])
		if err != nil {
			return nil, 0, 0, fmt.Errorf("ESP GCM open: %v", err)
		}
	} else {
		mac := prf(integ, pkt[:len(pkt)-16])[:16]
		if !hmac.Equal(mac, pkt[len(pkt)-16:]) {
			return nil, 0, 0, fmt.Errorf("ESP ICV mismatch")
		}
		blk, _ := aes.NewCipher(encr)
		ct := pkt[24 : len(pkt)-16]
		pt = make([]byte, len(ct))
		cipher.NewCBCDecrypter(blk, pkt[8:24]).CryptBlocks(pt, ct)
	}
	padLen := int(pt[len(pt)-2])
	nh := int(pt[len(pt)-1])
	if padLen+2 > len(pt) {
		return nil, 0, 0, fmt.Errorf("bad ESP padding")
	}
	for i := 0; i < padLen; i++ {
		if pt[len(pt)-2-padLen+i] != byte(i+1) {
			return nil, 0, 0, fmt.Errorf("ESP padding not monotonic")
		}
	}
	return pt[:len(pt)-2-padLen], padLen, nh, nil
}

// ---------------------------------------------------------------------------
// output format

type Message struct {
	Dir          string `json:"dir"`
	Exchange     string `json:"exchange"`
	Port         int    `json:"port"`
	NonESPMarker bool   `json:"non_esp_marker"`
	UDPPayload   string `json:"udp_payload"`
	IKE          string `json:"ike"`
	SKPlaintext  string `json:"sk_plaintext"`
}

type ESP struct {
	Dir        string `json:"dir"`
	UDPPayload string `json:"udp_payload"`
	SPI        string `json:"spi"`
	Seq        uint32 `json:"seq"`
	Inner      string `json:"inner"`
}

type Keys struct {
	SPIi     string `json:"spi_i"`
	SPIr     string `json:"spi_r"`
	Ni       string `json:"ni"`
	Nr       string `json:"nr"`
	DHShared string `json:"dh_shared"`
	SKEYSEED string `json:"skeyseed"`
	SKd      string `json:"sk_d"`
	SKai     string `json:"sk_ai"`
	SKar     string `json:"sk_ar"`
	SKei     string `json:"sk_ei"`
	SKer     string `json:"sk_er"`
	SKpi     string `json:"sk_pi"`
	SKpr     string `json:"sk_pr"`
}

type Auth struct {
	Who        string `json:"who"`
	Octets     string `json:"octets"`
	AuthData   string `json:"auth_data"`
	AuthMethod int    `json:"auth_method"`
}

type Child struct {
	SPIi   string `json:"spi_i"`
	SPIr   string `json:"spi_r"`
	EncrI  string `json:"encr_i"`
	IntegI string `json:"integ_i"`
	EncrR  string `json:"encr_r"`
	IntegR string `json:"integ_r"`
}

type Certs struct {
	CA        string `json:"ca"`
	Initiator string `json:"initiator"`
	Responder string `json:"responder"`
}

type Vector struct {
	Case        string    `json:"case"`
	PSK         string    `json:"psk"`
	InitiatorID string    `json:"initiator_id"`
	ResponderID string    `json:"responder_id"`
	Proposal    string    `json:"proposal"`
	ESPProposal string    `json:"esp_proposal"`
	Messages    []Message `json:"messages"`
	ESP         []ESP     `json:"esp"`
	Keys        Keys      `json:"keys"`
	Auth        []Auth    `json:"auth"`
	Child       Child     `json:"child"`
	Certs       *Certs    `json:"certs,omitempty"`
}

// ---------------------------------------------------------------------------
// swanctl.conf (just the few keys we need; values are unique per file)

func confValue(conf, key string) string {
	re := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(key) + `\s*=\s*("[^"]*"|\S+)`)
	m := re.FindStringSubmatch(conf)
	if m == nil {
		return ""
	}
	return strings.Trim(m[1], `"`)
}

// localID returns the id inside the local { } block.
func localID(conf string) string {
	i := strings.Index(conf, "local {")
	if i < 0 {
		return ""
	}
	j := strings.Index(conf[i:], "}")
	return confValue(conf[i:i+j], "id")
}

// ---------------------------------------------------------------------------
// per-case extraction and checks

type checker struct {
	name  string
	fails int
	notes []string
}

func (c *checker) check(ok bool, format string, args ...any) {
	if !ok {
		c.fails++
		fmt.Printf("  FAIL %s: %s\n", c.name, fmt.Sprintf(format, args...))
	}
}

func (c *checker) note(format string, args ...any) {
	c.notes = append(c.notes, fmt.Sprintf(format, args...))
}

func h(b []byte) string { return hex.EncodeToString(b) }

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "extract:", err)
		os.Exit(2)
	}
}

// one returns the single dump with the label (nil if none; error if several).
func one(l *logFile, label string) ([]byte, error) {
	d := l.dumps(label)
	switch len(d) {
	case 0:
		return nil, nil
	case 1:
		return d[0].data, nil
	}
	return nil, fmt.Errorf("%s: %d dumps labelled %q", l.name, len(d), label)
}

var childRe = regexp.MustCompile(`CHILD_SA \S+ established with SPIs ([0-9a-f]{8})_i ([0-9a-f]{8})_o`)

func childSPIs(l *logFile) (in, out string, n int) {
	for _, e := range l.entries {
		if m := childRe.FindStringSubmatch(e.text); m != nil {
			in, out = m[1], m[2]
			n++
		}
	}
	return
}

func run(src, dst, name string) (*checker, *Vector) {
	c := &checker{name: name}
	dir := filepath.Join(src, name)
	conc, err := parseLog(filepath.Join(dir, "charon-conc.log"))
	must(err)
	gw, err := parseLog(filepath.Join(dir, "charon-gw.log"))
	must(err)
	concConfB, err := os.ReadFile(filepath.Join(dir, "conc-swanctl.conf"))
	must(err)
	gwConfB, err := os.ReadFile(filepath.Join(dir, "gw-swanctl.conf"))
	must(err)
	concConf, gwConf := string(concConfB), string(gwConfB)

	v := &Vector{Case: name}
	v.PSK = confValue(concConf, "secret")
	c.check(v.PSK == confValue(gwConf, "secret"), "PSK differs between the confs")
	v.InitiatorID = localID(gwConf)
	v.ResponderID = localID(concConf)
	v.Proposal = confValue(concConf, "proposals")
	v.ESPProposal = confValue(concConf, "esp_proposals")
	c.check(v.Proposal == confValue(gwConf, "proposals") && v.ESPProposal == confValue(gwConf, "esp_proposals"),
		"proposals differ between the confs")

	// --- packets ---------------------------------------------------------
	cp, cRecs, err := conc.packets()
	must(err)
	gp, gRecs, err := gw.packets()
	must(err)
	split := func(ps []*packet, sent bool) (ike, esp []*packet) {
		for _, p := range ps {
			if p.sent != sent {
				continue
			}
			switch {
			case p.isKA:
			case p.isESP:
				esp = append(esp, p)
			default:
				ike = append(ike, p)
			}
		}
		return
	}
	cRecvIKE, cRecvESP := split(cp, false)
	cSentIKE, cSentESP := split(cp, true)
	gRecvIKE, gRecvESP := split(gp, false)
	gSentIKE, gSentESP := split(gp, true)
	for _, p := range append(append([]*packet{}, cp...), gp...) {
		if p.isKA {
			c.note("NAT keepalive seen")
		}
	}
	// cross-check: what conc received is what gw sent, and vice versa
	// recv is the receiver's NET dump (the bytes on the wire), sent the
	// sender's reconstruction. strongSwan logs "generated data of this
	// generator" before it patches the IKE header's Length field, so for
	// unencrypted messages the sender's dump says 28 there; that one
	// difference is tolerated (and noted), everything else must match.
	cmp := func(what string, recv, sent []*packet) {
		c.check(len(recv) == len(sent), "%s: %d packets vs %d", what, len(recv), len(sent))
		for i := 0; i < len(recv) && i < len(sent); i++ {
			r, s := recv[i], sent[i]
			if bytes.Equal(r.udp, s.udp) {
				continue
			}
			if !r.isESP && len(r.udp) == len(s.udp) {
				o := len(r.udp) - len(r.ike()) + 24
				fixed := append([]byte{}, s.udp...)
				copy(fixed[o:o+4], r.udp[o:o+4])
				if bytes.Equal(fixed, r.udp) && binary.BigEndian.Uint32(s.udp[o:]) == 28 {
					c.note("%s #%d: sender's generator dump has IKE Length 28 (logged before length fix-up); wire bytes taken from the receiver", what, i)
					continue
				}
			}
			c.check(false, "%s #%d differs (receiver line %d, sender line %d)", what, i, r.srcLine, s.srcLine)
		}
	}
	cmp("i2r IKE (conc received vs gw sent)", cRecvIKE, gSentIKE)
	cmp("r2i IKE (gw received vs conc sent)", gRecvIKE, cSentIKE)
	// use the bytes the gateway received for what the concentrator sent
	for i := 0; i < len(cSentIKE) && i < len(gRecvIKE); i++ {
		cSentIKE[i].udp = gRecvIKE[i].udp
	}
	cmp("i2r ESP (conc received vs gw sent)", cRecvESP, gSentESP)
	cmp("r2i ESP (gw received vs conc sent)", gRecvESP, cSentESP)
	// received ESP must also match the receiver's own decryption record
	for _, set := range []struct {
		ps   []*packet
		recs []*espRecord
	}{{cRecvESP, cRecs}, {gRecvESP, gRecs}} {
		for _, p := range set.ps {
			found := false
			for _, r := range set.recs {
				if !r.enc && r.spi == h(p.udp[:4]) && r.seq == binary.BigEndian.Uint32(p.udp[4:]) {
					p.espRec = r
					found = bytes.Equal(r.packet(), p.udp)
				}
			}
			c.check(found, "received ESP packet (line %d) not matched by its decryption record", p.srcLine)
		}
	}

	var initMsgs [2][]byte // IKE_SA_INIT request / response
	for _, p := range cp {
		if p.isKA {
			continue
		}
		if p.isESP {
			r := p.espRec
			dirn := "i2r"
			if p.sent {
				dirn = "r2i"
			}
			var inner []byte
			if r != nil {
				inner = r.payload
			}
			v.ESP = append(v.ESP, ESP{Dir: dirn, UDPPayload: h(p.udp), SPI: h(p.udp[:4]),
				Seq: binary.BigEndian.Uint32(p.udp[4:]), Inner: h(inner)})
			continue
		}
		m := p.ike()
		dirn := "i2r"
		if p.sent {
			dirn = "r2i"
		}
		ex := exchangeNames[m[18]]
		if ex == "" {
			ex = fmt.Sprintf("EXCHANGE_%d", m[18])
		}
		flagsI := m[19]&0x08 != 0
		c.check(flagsI == (dirn == "i2r"), "message %d: Initiator flag does not match direction", len(v.Messages))
		if ex == "IKE_SA_INIT" {
			if m[19]&0x20 == 0 {
				initMsgs[0] = m
			} else {
				initMsgs[1] = m
			}
		} else if ex != "IKE_AUTH" {
			c.note("extra exchange %s (%s)", ex, dirn)
		}
		v.Messages = append(v.Messages, Message{Dir: dirn, Exchange: ex, Port: p.port,
			NonESPMarker: p.port == 4500, UDPPayload: h(p.udp), IKE: h(m)})
	}
	c.check(initMsgs[0] != nil && initMsgs[1] != nil, "IKE_SA_INIT request/response missing")

	// --- keys --------------------------------------------------------------
	key := func(label string) []byte {
		a, err := one(conc, label)
		must(err)
		b, err := one(gw, label)
		must(err)
		c.check(bytes.Equal(a, b), "%q differs between conc and gw logs", label)
		return a
	}
	dh := key("shared Diffie Hellman secret")
	skeyseed := key("SKEYSEED")
	skd, skai, skar := key("Sk_d secret"), key("Sk_ai secret"), key("Sk_ar secret")
	skei, sker := key("Sk_ei secret"), key("Sk_er secret")
	skpi, skpr := key("Sk_pi secret"), key("Sk_pr secret")
	seed := key("seed")
	encrI, encrR := key("encryption initiator key"), key("encryption responder key")
	integI, integR := key("integrity initiator key"), key("integrity responder key")

	spiI, spiR := initMsgs[1][0:8], initMsgs[1][8:16]
	c.check(bytes.Equal(initMsgs[0][0:8], spiI) && bytes.Equal(initMsgs[0][8:16], make([]byte, 8)),
		"IKE_SA_INIT request SPIs unexpected")
	nonce := func(m []byte) []byte {
		ps, err := msgPayloads(m)
		must(err)
		n := find(ps, 40)
		if n == nil {
			must(fmt.Errorf("no Nonce payload"))
		}
		return n.body
	}
	ni, nr := nonce(initMsgs[0]), nonce(initMsgs[1])
	c.check(bytes.Equal(seed, append(append([]byte{}, ni...), nr...)), "CHILD seed != Ni|Nr")
	for i, m := range v.Messages {
		b, _ := hex.DecodeString(m.IKE)
		c.check(bytes.Equal(b[0:8], spiI) && (m.Exchange == "IKE_SA_INIT" || bytes.Equal(b[8:16], spiR)),
			"message %d carries other IKE SPIs", i)
	}
	v.Keys = Keys{SPIi: h(spiI), SPIr: h(spiR), Ni: h(ni), Nr: h(nr), DHShared: h(dh), SKEYSEED: h(skeyseed),
		SKd: h(skd), SKai: h(skai), SKar: h(skar), SKei: h(skei), SKer: h(sker), SKpi: h(skpi), SKpr: h(skpr)}

	// SKEYSEED and prf+
	c.check(bytes.Equal(prf(append(append([]byte{}, ni...), nr...), dh), skeyseed), "SKEYSEED != prf(Ni|Nr, g^ir)")
	s := bytes.Join([][]byte{ni, nr, spiI, spiR}, nil)
	lens := []int{len(skd), len(skai), len(skar), len(skei), len(sker), len(skpi), len(skpr)}
	total := 0
	for _, l := range lens {
		total += l
	}
	km := prfPlus(skeyseed, s, total)
	for i, want := range [][]byte{skd, skai, skar, skei, sker, skpi, skpr} {
		got := km[:lens[i]]
		km = km[lens[i]:]
		c.check(bytes.Equal(got, want), "prf+ SK #%d (order d,ai,ar,ei,er,pi,pr) mismatch", i)
	}

	// --- SK payloads -------------------------------------------------------
	plains := append(conc.dumps("plain"), gw.dumps("plain")...)
	inner := map[string][]payload{} // direction of IKE_AUTH -> inner payloads
	for i := range v.Messages {
		m, _ := hex.DecodeString(v.Messages[i].IKE)
		ps, err := msgPayloads(m)
		if err != nil {
			c.check(false, "message %d: %v", i, err)
			continue
		}
		sk := find(ps, 46)
		if sk == nil {
			continue
		}
		ek, ak := skei, skai
		if v.Messages[i].Dir == "r2i" {
			ek, ak = sker, skar
		}
		if len(ak) == 0 {
			ak = nil
		}
		pt, err := decryptSK(m, sk, ek, ak)
		if err != nil {
			c.check(false, "message %d: SK decryption: %v", i, err)
			continue
		}
		logged := false
		for _, p := range plains {
			logged = logged || bytes.Equal(p.data, pt)
		}
		c.check(logged, "message %d: decrypted SK plaintext not found among logged plain dumps", i)
		v.Messages[i].SKPlaintext = h(pt)
		ips, err := payloads(pt, sk.next, 0)
		if err != nil {
			c.check(false, "message %d: inner payloads: %v", i, err)
			continue
		}
		if v.Messages[i].Exchange == "IKE_AUTH" {
			inner[v.Messages[i].Dir] = ips
		}
	}

	// --- AUTH ----------------------------------------------------------------
	var certs *Certs
	var certDER = map[string][]byte{}
	if _, err := os.Stat(filepath.Join(dir, "certs")); err == nil {
		rd := func(f string) string {
			b, err := os.ReadFile(filepath.Join(dir, "certs", f))
			must(err)
			blk, _ := pem.Decode(b)
			if blk == nil {
				must(fmt.Errorf("%s: not PEM", f))
			}
			certDER[f] = blk.Bytes
			return string(b)
		}
		certs = &Certs{CA: rd("ca.crt"), Initiator: rd("gw1.crt"), Responder: rd("conc.crt")}
		v.Certs = certs
	}
	octets := conc.dumps("octets = message + nonce + prf(Sk_px, IDx')")
	gwOctets := gw.dumps("octets = message + nonce + prf(Sk_px, IDx')")
	c.check(len(octets) == 2 && len(gwOctets) == 2, "expected 2 octets dumps per log, got %d/%d", len(octets), len(gwOctets))
	macs := conc.dumps("AUTH = prf(prf(secret, keypad), octets)")
	for _, o := range octets {
		who, dirn, idT, skp, initMsg, peerNonce, certF := "initiator", "i2r", byte(35), skpi, initMsgs[0], nr, "gw1.crt"
		if o.data[19]&0x20 != 0 {
			who, dirn, idT, skp, initMsg, peerNonce, certF = "responder", "r2i", 36, skpr, initMsgs[1], ni, "conc.crt"
		}
		inGW := false
		for _, g := range gwOctets {
			inGW = inGW || bytes.Equal(g.data, o.data)
		}
		c.check(inGW, "%s octets differ between conc and gw logs", who)
		a := Auth{Who: who, Octets: h(o.data)}
		ips := inner[dirn]
		if id := find(ips, idT); id != nil {
			want := bytes.Join([][]byte{initMsg, peerNonce, prf(skp, id.body)}, nil)
			c.check(bytes.Equal(want, o.data), "%s octets != SA_INIT msg | peer nonce | prf(SK_p, ID')", who)
		} else {
			c.check(false, "%s: no ID payload found", who)
		}
		ap := find(ips, 39)
		if ap == nil {
			c.check(false, "%s: AUTH payload not found in decrypted IKE_AUTH", who)
		} else {
			a.AuthMethod = int(ap.body[0])
			data := ap.body[4:]
			a.AuthData = h(data)
			switch a.AuthMethod {
			case 2:
				want := prf(prf([]byte(v.PSK), []byte("Key Pad for IKEv2")), o.data)
				c.check(bytes.Equal(want, data), "%s: PSK AUTH mismatch", who)
				logged := false
				for _, m := range macs {
					logged = logged || bytes.Equal(m.data, data)
				}
				c.check(logged, "%s: AUTH value not among logged AUTH = prf(...) dumps", who)
			case 14:
				if certs == nil {
					c.check(false, "%s: signature AUTH without certificates", who)
					break
				}
				c.check(checkSignature(data, o.data, certDER[certF], certDER["ca.crt"]) == nil,
					"%s: signature: %v", who, checkSignature(data, o.data, certDER[certF], certDER["ca.crt"]))
				cp := find(ips, 37)
				c.check(cp != nil && cp.body[0] == 4 && bytes.Equal(cp.body[1:], certDER[certF]),
					"%s: CERT payload != %s", who, certF)
			default:
				c.check(false, "%s: unexpected auth method %d", who, a.AuthMethod)
			}
		}
		v.Auth = append(v.Auth, a)
	}
	sort.SliceStable(v.Auth, func(i, j int) bool { return v.Auth[i].Who == "initiator" && v.Auth[j].Who != "initiator" })

	// --- CHILD SA --------------------------------------------------------------
	cin, cout, nc := childSPIs(conc)
	gin, gout, ng := childSPIs(gw)
	c.check(nc == 1 && ng == 1, "expected one CHILD_SA per log, got %d/%d", nc, ng)
	c.check(cin == gout && cout == gin, "CHILD SPIs disagree: conc %s_i %s_o, gw %s_i %s_o", cin, cout, gin, gout)
	v.Child = Child{SPIi: cout, SPIr: cin, EncrI: h(encrI), IntegI: h(integI), EncrR: h(encrR), IntegR: h(integR)}
	// the SA payloads carry the same SPIs (initiator's in the request)
	for dirn, want := range map[string]string{"i2r": cout, "r2i": cin} {
		sa := find(inner[dirn], 33)
		c.check(sa != nil && len(sa.body) >= 12 && h(sa.body[8:12]) == want, "%s IKE_AUTH SA payload SPI != %s", dirn, want)
	}
	ckm := prfPlus(skd, append(append([]byte{}, ni...), nr...), len(encrI)+len(integI)+len(encrR)+len(integR))
	c.check(bytes.Equal(ckm, bytes.Join([][]byte{encrI, integI, encrR, integR}, nil)),
		"CHILD keys != prf+(SK_d, Ni|Nr)")

	// --- ESP -------------------------------------------------------------------
	var ii, ir []byte
	if len(integI) > 0 {
		ii, ir = integI, integR
	}
	for i, e := range v.ESP {
		pkt, _ := hex.DecodeString(e.UDPPayload)
		ek, ak, spi := encrI, ii, v.Child.SPIr
		if e.Dir == "r2i" {
			ek, ak, spi = encrR, ir, v.Child.SPIi
		}
		c.check(e.SPI == spi, "ESP #%d: SPI %s, expected %s", i, e.SPI, spi)
		in, _, nh, err := decryptESP(pkt, ek, ak)
		if err != nil {
			c.check(false, "ESP #%d: %v", i, err)
			continue
		}
		c.check(nh == 4 && h(in) == e.Inner, "ESP #%d: inner packet differs from logged payload (nh %d)", i, nh)
	}
	return c, v
}

var (
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidEd25519         = asn1.ObjectIdentifier{1, 3, 101, 112}
)

// checkSignature verifies RFC 7427 AUTH data (len | AlgorithmIdentifier |
// signature) over octets with the certificate's key, and the certificate
// against the CA.
func checkSignature(data, octets, certDER, caDER []byte) error {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := cert.CheckSignatureFrom(ca); err != nil {
		return fmt.Errorf("certificate not signed by CA: %v", err)
	}
	n := int(data[0])
	var ai struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.RawValue `asn1:"optional"`
	}
	if rest, err := asn1.Unmarshal(data[1:1+n], &ai); err != nil || len(rest) != 0 {
		return fmt.Errorf("bad AlgorithmIdentifier")
	}
	sig := data[1+n:]
	switch {
	case ai.Algorithm.Equal(oidECDSAWithSHA256):
		pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
		d := sha256.Sum256(octets)
		if !ok || !ecdsa.VerifyASN1(pub, d[:], sig) {
			return fmt.Errorf("ECDSA signature invalid")
		}
	case ai.Algorithm.Equal(oidEd25519):
		pub, ok := cert.PublicKey.(ed25519.PublicKey)
		if !ok || !ed25519.Verify(pub, octets, sig) {
			return fmt.Errorf("Ed25519 signature invalid")
		}
	default:
		return fmt.Errorf("unexpected signature algorithm %v", ai.Algorithm)
	}
	return nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run ./concentrator/ike/testdata/strongswan/extract/main.go <vectors/strongswan dir>")
		os.Exit(2)
	}
	src := os.Args[1]
	dst := "concentrator/ike/testdata/strongswan"
	if _, err := os.Stat(dst); err != nil {
		fmt.Fprintln(os.Stderr, "extract: run from the repository root")
		os.Exit(2)
	}
	failed := false
	for _, name := range cases {
		c, v := run(src, dst, name)
		out, err := json.MarshalIndent(v, "", "  ")
		must(err)
		must(os.WriteFile(filepath.Join(dst, name+".json"), append(out, '\n'), 0o644))
		count := map[string]int{}
		for _, m := range v.Messages {
			count[m.Exchange]++
		}
		status := "OK"
		if c.fails > 0 {
			status = "FAIL"
			failed = true
		}
		fmt.Printf("%-4s %s: %d IKE messages %v, %d ESP packets, auth_data %d/%d\n", status, name,
			len(v.Messages), count, len(v.ESP), countAuthData(v), len(v.Auth))
		for _, n := range c.notes {
			fmt.Printf("     note: %s\n", n)
		}
	}
	if failed {
		os.Exit(1)
	}
}

func countAuthData(v *Vector) int {
	n := 0
	for _, a := range v.Auth {
		if a.AuthData != "" {
			n++
		}
	}
	return n
}
