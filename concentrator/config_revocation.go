package concentrator

import (
	"fmt"
	"net/url"
	"time"
)

// RevocationConfig (auth.revocation) says how the revocation of peer
// certificates is checked beyond the CRL files of auth.crls. The semantics
// follow strongSwan's revocation plugin: OCSP first, CRLs from the
// certificate's distribution points next; a certificate naming no source
// is accepted; a source that cannot be reached fails the authentication
// unless fail_open.
type RevocationConfig struct {
	OCSP     string        `yaml:"ocsp"`      // prefer | require | off
	CRL      string        `yaml:"crl"`       // fetch | files | off
	FailOpen bool          `yaml:"fail_open"` // accept (with a warning and a metric) when no answer can be obtained
	Timeout  time.Duration `yaml:"timeout"`   // per fetch, all attempts included
	Retries  int           `yaml:"retries"`   // attempts per fetch
	// CacheSize bounds the answers kept in memory (OCSP answers per
	// certificate, CRLs per URL); the least recently used go first.
	CacheSize int `yaml:"cache_size"`
	// MaxCRLBytes bounds a fetched CRL (an OCSP answer: 64 KiB).
	MaxCRLBytes int `yaml:"max_crl_bytes"`
	// RetryInterval: after a failed fetch, the failure stands this long
	// before a new fetch is tried.
	RetryInterval time.Duration `yaml:"retry_interval"`
	// OCSPURL is asked instead of the certificates' AIA responders.
	OCSPURL string `yaml:"ocsp_url"`
}

// Defaults of auth.revocation and auth.clock_skew.
const (
	DefaultClockSkew             = 5 * time.Minute
	DefaultRevocationTimeout     = 3 * time.Second
	DefaultRevocationRetries     = 2
	DefaultRevocationCacheSize   = 10000
	DefaultRevocationMaxCRLBytes = 8 << 20
	DefaultRevocationRetryAfter  = 30 * time.Second
)

// DefaultRevocationConfig is auth.revocation unless configured.
func DefaultRevocationConfig() RevocationConfig {
	return RevocationConfig{OCSP: "prefer", CRL: "fetch", Timeout: DefaultRevocationTimeout, Retries: DefaultRevocationRetries,
		CacheSize: DefaultRevocationCacheSize, MaxCRLBytes: DefaultRevocationMaxCRLBytes, RetryInterval: DefaultRevocationRetryAfter}
}

func (c *Config) validateRevocation() error {
	r := &c.Auth.Revocation
	switch r.OCSP {
	case "prefer", "require", "off":
	default:
		return fieldErr("auth.revocation.ocsp", "must be prefer, require or off, not %q", r.OCSP)
	}
	switch r.CRL {
	case "fetch", "files":
	case "off":
		if len(c.Auth.CRLs) > 0 {
			return fieldErr("auth.revocation.crl", "off, but auth.crls lists CRL files (use files, or remove them)")
		}
	default:
		return fieldErr("auth.revocation.crl", "must be fetch, files or off, not %q", r.CRL)
	}
	if r.Timeout <= 0 || r.Timeout > time.Minute {
		return fieldErr("auth.revocation.timeout", "must be > 0 and <= 1m, not %s", r.Timeout)
	}
	if r.Retries < 1 || r.Retries > 10 {
		return fieldErr("auth.revocation.retries", "must be 1..10, not %d", r.Retries)
	}
	if r.CacheSize < 1 {
		return fieldErr("auth.revocation.cache_size", "must be >= 1, not %d", r.CacheSize)
	}
	if r.MaxCRLBytes < 1024 {
		return fieldErr("auth.revocation.max_crl_bytes", "must be >= 1024, not %d", r.MaxCRLBytes)
	}
	if r.RetryInterval < 0 {
		return fieldErr("auth.revocation.retry_interval", "must not be negative")
	}
	if r.OCSPURL != "" {
		if err := checkHTTPURL(r.OCSPURL); err != nil {
			return fieldErr("auth.revocation.ocsp_url", "%v", err)
		}
	}
	if c.Auth.ClockSkew < 0 || c.Auth.ClockSkew > 24*time.Hour {
		return fieldErr("auth.clock_skew", "must be 0..24h, not %s", c.Auth.ClockSkew)
	}
	return nil
}

func checkHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if u.Scheme != "http" || u.Host == "" {
		return fmt.Errorf("must be an http:// URL (CRLs and OCSP answers are signed; https is not used), not %q", s)
	}
	return nil
}
