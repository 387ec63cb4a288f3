package concentrator

import (
	"encoding/pem"
	"fmt"
	"os"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// validatePubKeys checks auth.pubkeys without reading the key files (they
// are read with the other credentials).
func (c *Config) validatePubKeys() error {
	seen := map[string]bool{}
	for i, p := range c.Auth.PubKeys {
		f := fmt.Sprintf("auth.pubkeys[%d]", i)
		if p.ID == "" {
			return fieldErr(f+".id", "required")
		}
		id, err := parseIdentity(p.ID)
		if err != nil {
			return fieldErr(f+".id", "%v", err)
		}
		if seen[id.String()] {
			return fieldErr(f+".id", "duplicate identity %q", p.ID)
		}
		seen[id.String()] = true
		if p.KeyFile == "" {
			return fieldErr(f+".key_file", "required")
		}
	}
	return nil
}

// rawKeyCredentials loads auth.pubkeys into ec.PublicKeys and, when
// identity.key is set without identity.cert, our own key: we then
// authenticate by raw public key (RFC 7670).
func (c *Config) rawKeyCredentials(ec *ike.Config) error {
	if c.Identity.Cert == "" && c.Identity.Key != "" {
		if err := checkPrivateKeyFile("identity.key", c.Identity.Key); err != nil {
			return err
		}
		kd, err := os.ReadFile(c.Identity.Key)
		if err != nil {
			return fieldErr("identity.key", "%v", err)
		}
		if ec.Local.Signer, err = sig.ParsePrivateKey(kd); err != nil {
			return fieldErr("identity.key", "%v", err)
		}
	}
	if len(c.Auth.PubKeys) == 0 {
		return nil
	}
	keys := ike.PublicKeyMap{}
	for i, p := range c.Auth.PubKeys {
		f := fmt.Sprintf("auth.pubkeys[%d].key_file", i)
		id, err := parseIdentity(p.ID)
		if err != nil {
			return fieldErr(fmt.Sprintf("auth.pubkeys[%d].id", i), "%v", err)
		}
		data, err := os.ReadFile(p.KeyFile)
		if err != nil {
			return fieldErr(f, "%v", err)
		}
		b, _ := pem.Decode(data)
		if b == nil || b.Type != "PUBLIC KEY" {
			return fieldErr(f, "%s holds no PEM \"PUBLIC KEY\" block", p.KeyFile)
		}
		pub, err := sig.ParseRawPublicKey(b.Bytes)
		if err != nil {
			return fieldErr(f, "%s: %v", p.KeyFile, err)
		}
		keys[id.String()] = pub
	}
	ec.PublicKeys = keys
	return nil
}
