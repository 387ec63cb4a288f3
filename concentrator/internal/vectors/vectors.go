// Package vectors loads the IKEv2 exchanges recorded from strongSwan 5.9.8
// with every key logged (concentrator/ike/testdata/strongswan, see its
// README): known answers for the codec, key schedule, AUTH and ESP tests.
package vectors

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Hex is a byte string written as lowercase hex in the JSON files.
type Hex []byte

func (h *Hex) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	*h = d
	return err
}

// Case is one recorded exchange.
type Case struct {
	Case        string            `json:"case"`
	PSK         string            `json:"psk"`
	InitiatorID string            `json:"initiator_id"`
	ResponderID string            `json:"responder_id"`
	Proposal    string            `json:"proposal"`
	ESPProposal string            `json:"esp_proposal"`
	Messages    []Message         `json:"messages"`
	ESP         []ESPPacket       `json:"esp"`
	Keys        map[string]Hex    `json:"keys"`
	Auth        []Auth            `json:"auth"`
	Child       map[string]Hex    `json:"child"`
	Certs       map[string]string `json:"certs"`
}

// Message is one IKE message of the exchange.
type Message struct {
	Dir         string `json:"dir"` // i2r or r2i
	Exchange    string `json:"exchange"`
	IKE         Hex    `json:"ike"`          // without the non-ESP marker
	SKPlaintext Hex    `json:"sk_plaintext"` // the decrypted inner payloads, if encrypted
}

// ESPPacket is one ESP-in-UDP packet of the ping through the tunnel.
type ESPPacket struct {
	Dir        string `json:"dir"`
	UDPPayload Hex    `json:"udp_payload"`
	SPI        string `json:"spi"`
	Seq        uint32 `json:"seq"`
	Inner      Hex    `json:"inner"` // the decrypted inner packet
}

// Auth is one side's AUTH payload and the octets it signs.
type Auth struct {
	Who    string `json:"who"` // initiator or responder
	Octets Hex    `json:"octets"`
	Data   Hex    `json:"auth_data"`
	Method int    `json:"auth_method"`
}

// Load reads every case in dir.
func Load(dir string) ([]*Case, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no recorded exchanges in %s", dir)
	}
	var out []*Case
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		c := &Case{}
		if err := json.Unmarshal(b, c); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, c)
	}
	return out, nil
}
