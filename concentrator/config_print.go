package concentrator

import (
	"bytes"

	"go.yaml.in/yaml/v3"
)

// Redacted is the secret placeholder of Config.Redacted.
const Redacted = "REDACTED"

// Redacted returns a copy of c with PSK secrets replaced (secret_file
// names stay: they are paths, not keys).
func (c Config) Redacted() Config {
	c.Auth.PSKs = append([]PSKConfig(nil), c.Auth.PSKs...)
	for i := range c.Auth.PSKs {
		p := &c.Auth.PSKs[i]
		if p.Secret != "" {
			p.Secret = Redacted
		}
		if p.SecretHex != "" {
			p.SecretHex = Redacted
		}
	}
	return c
}

// MarshalConfig writes c as YAML in the configuration file's layout, every
// field present (durations as 1m30s).
func MarshalConfig(c Config) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
