package e2e

import (
	"fmt"
	"strings"
)

// Addresses of the topology built by NewTopology.
const (
	GWAddr        = "10.10.1.2"     // gw's WAN address, behind the NAT
	NATInsideAddr = "10.10.1.1"     // the NAT on the gateway side (gw's default route)
	NATPublicAddr = "192.168.100.1" // the NAT's public address: the peer address conc sees
	ConcAddr      = "192.168.100.2" // the concentrator's public address
	GWLANAddr     = "10.20.0.1"     // gw's inner LAN address
	ConcLANAddr   = "10.30.0.1"     // conc's inner (core) address
	GWLAN         = "10.20.0.0/24"  // gw's inner LAN
	ConcLAN       = "10.30.0.0/24"  // conc's inner LAN
)

// Identities and secrets shared by the interop tests.
const (
	ConcID    = "conc.example"                                 // the concentrator's IKE identity (FQDN)
	GWPSKID   = "gw1@iot.example"                              // gw1's identity with PSK auth (user@fqdn)
	GWCertID  = "gw1.iot.example"                              // gw1's identity with certificates (FQDN = SAN DNS of its cert)
	TestPSK   = "interop-test-psk-0123456789abcdef"            // gw1's pre-shared key
	IKEProp   = "aes256gcm16-prfsha256-x25519"                 // IKE proposal, strongSwan syntax
	ESPProp   = "aes256gcm16"                                  // ESP proposal, strongSwan syntax
	IKEPropSS = "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519" // IKEProp as swanctl --list-sas prints it
)

// Auth selects how the strongSwan configs authenticate.
type Auth int

const (
	AuthPSK         Auth = iota // pre-shared key, identities GWPSKID / ConcID
	AuthECDSA                   // certificates from a PKI, identities GWCertID / ConcID
	AuthRawKey                  // raw public keys (RFC 7670), no certificates, identities GWCertID / ConcID
	AuthEAPMSCHAPv2             // gw1 by EAP-MSCHAPv2 (identity GWEAPID, password GWEAPPassword) through RADIUS; conc by certificate
	AuthEAPTLS                  // gw1 by EAP-TLS (identity GWCertID, its certificate) through RADIUS; conc by certificate
)

// gw1's EAP-MSCHAPv2 credentials (the RADIUS server's users file) and the
// identity of the RADIUS server's certificate (EAP-TLS; it names ConcID
// too).
const (
	GWEAPID       = "gw1@eap.example"
	GWEAPPassword = "device-password-1"
	RADIUSID      = "radius.example"
)

func (a Auth) String() string {
	switch a {
	case AuthECDSA:
		return "ecdsa"
	case AuthRawKey:
		return "rawkey"
	case AuthEAPMSCHAPv2:
		return "eap-mschapv2"
	case AuthEAPTLS:
		return "eap-tls"
	}
	return "psk"
}

// GatewaySwanctlConf is the swanctl.conf of gw1, the initiator: connection
// "conc" from GWAddr to ConcAddr, NAT-T with forced encapsulation (userspace
// ESP needs it), CHILD_SA "lan" GWLAN === ConcLAN, started by
// swanctl --initiate --child lan. With AuthECDSA it expects x509ca/ca.crt,
// x509/gw.crt and private/gw.key (PKI.SwanctlFiles("gw", ...)).
func GatewaySwanctlConf(auth Auth) string {
	local := fmt.Sprintf("auth = psk\n      id = %s", GWPSKID)
	remote := fmt.Sprintf("auth = psk\n      id = %s", ConcID)
	extra, secrets := "", pskSecrets()
	if auth == AuthECDSA {
		local = fmt.Sprintf("auth = pubkey\n      certs = gw.crt\n      id = %s", GWCertID)
		remote = fmt.Sprintf("auth = pubkey\n      id = %s\n      cacerts = ca.crt", ConcID)
		extra, secrets = "send_cert = always\n    send_certreq = yes\n    ", ""
	}
	if auth == AuthRawKey {
		// pubkey/gw.pub and private/gw.key are ours, pubkey/conc.pub the
		// concentrator's (RawKeySwanctlFiles).
		local = fmt.Sprintf("auth = pubkey\n      pubkeys = gw.pub\n      id = %s", GWCertID)
		remote = fmt.Sprintf("auth = pubkey\n      pubkeys = conc.pub\n      id = %s", ConcID)
		extra, secrets = "send_cert = always\n    ", ""
	}
	if auth == AuthEAPMSCHAPv2 || auth == AuthEAPTLS {
		// The concentrator authenticates by certificate (x509ca/ca.crt);
		// gw1 runs EAP with the RADIUS server behind it.
		remote = fmt.Sprintf("auth = pubkey\n      id = %s\n      cacerts = ca.crt", ConcID)
		extra, secrets = "send_certreq = yes\n    ", ""
		if auth == AuthEAPMSCHAPv2 {
			local = fmt.Sprintf("auth = eap-mschapv2\n      eap_id = %s\n      id = %s", GWEAPID, GWEAPID)
			secrets = fmt.Sprintf("secrets {\n  eap-gw1 {\n    id = %s\n    secret = %q\n  }\n}\n", GWEAPID, GWEAPPassword)
		} else {
			// strongSwan checks the EAP-TLS server's certificate for the
			// responder's identity (no aaa_id): the RADIUS server's
			// certificate carries ConcID too.
			local = fmt.Sprintf("auth = eap-tls\n      certs = gw.crt\n      id = %s", GWCertID)
		}
	}
	return fmt.Sprintf(`# gw1 (IoT gateway, initiator), %[1]s
connections {
  conc {
    version = 2
    local_addrs = %[2]s
    remote_addrs = %[3]s
    proposals = %[4]s
    encap = yes
    mobike = no
    dpd_delay = 30s
    %[5]slocal {
      %[6]s
    }
    remote {
      %[7]s
    }
    children {
      lan {
        local_ts = %[8]s
        remote_ts = %[9]s
        esp_proposals = %[10]s
        start_action = none
      }
    }
  }
}
%[11]s`, auth, GWAddr, ConcAddr, IKEProp, extra, local, remote, GWLAN, ConcLAN, ESPProp, secrets)
}

// ConcSwanctlConf is the swanctl.conf of a strongSwan responder standing in
// for the concentrator: connection "gw" on ConcAddr for any remote address
// (peers are behind NAT), CHILD_SA "lan" ConcLAN === 10.20.0.0/16 (narrowed
// to what the gateway proposes). With AuthECDSA it accepts any peer
// certified by x509ca/ca.crt and presents x509/conc.crt + private/conc.key.
func ConcSwanctlConf(auth Auth) string {
	local := fmt.Sprintf("auth = psk\n      id = %s", ConcID)
	remote := fmt.Sprintf("auth = psk\n      id = %s", GWPSKID)
	extra, secrets := "", pskSecrets()
	if auth == AuthECDSA {
		local = fmt.Sprintf("auth = pubkey\n      certs = conc.crt\n      id = %s", ConcID)
		remote = "auth = pubkey\n      id = %any\n      cacerts = ca.crt"
		extra, secrets = "send_cert = always\n    ", ""
	}
	return fmt.Sprintf(`# conc (responder), %[1]s
connections {
  gw {
    version = 2
    local_addrs = %[2]s
    proposals = %[3]s
    encap = yes
    mobike = no
    %[4]slocal {
      %[5]s
    }
    remote {
      %[6]s
    }
    children {
      lan {
        local_ts = %[7]s
        remote_ts = 10.20.0.0/16
        esp_proposals = %[8]s
      }
    }
  }
}
%[9]s`, auth, ConcAddr, IKEProp, extra, local, remote, ConcLAN, ESPProp, secrets)
}

func pskSecrets() string {
	return fmt.Sprintf(`secrets {
  ike-gw1 {
    id-1 = %s
    id-2 = %s
    secret = "%s"
  }
}
`, GWPSKID, ConcID, TestPSK)
}

// SwanctlFiles lays out the CA and one credential for a SWANCTL_DIR:
// x509ca/ca.crt, x509/<name>.crt, private/<name>.key.
func (p *PKI) SwanctlFiles(name string, c Credential) map[string][]byte {
	return map[string][]byte{
		"x509ca/ca.crt":            p.CAPEM,
		"x509/" + name + ".crt":    c.CertPEM,
		"private/" + name + ".key": c.KeyPEM,
	}
}

// RawKeySwanctlFiles lays out gw1's raw-key credentials for a SWANCTL_DIR:
// private/gw.key, pubkey/gw.pub, and the concentrator's pubkey/conc.pub.
func RawKeySwanctlFiles(gw Credential, concPub []byte) map[string][]byte {
	return map[string][]byte{
		"private/gw.key":  gw.KeyPEM,
		"pubkey/gw.pub":   PublicKeyPEM(gw),
		"pubkey/conc.pub": concPub,
	}
}

// ConcentratordConfig is the YAML configuration of concentratord for the
// interop tests (schema: deploy/examples/concentratord.yaml): listen on
// ConcAddr, identity ConcID, the memory data plane, JSON logs. With
// AuthPSK, gw1's PSK; with AuthECDSA, identity.cert/key and auth.cas name
// the files certPath, keyPath and caPath; with AuthRawKey, identity.key is
// keyPath and auth.pubkeys gives gw1 (GWCertID) the key in caPath.
func ConcentratordConfig(auth Auth, certPath, keyPath, caPath string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `node:
  id: conc-e2e
log:
  level: debug
  format: json
ike:
  listen: [%s]
  force_encap: true
  proposals: [%s]
  esp_proposals: [%s]
identity:
  id: %s
`, ConcAddr, IKEProp, ESPProp, ConcID)
	if auth == AuthECDSA {
		fmt.Fprintf(&b, "  cert: %s\n  key: %s\n  send_cert: always\nauth:\n  cas: [%s]\n", certPath, keyPath, caPath)
	} else if auth == AuthRawKey {
		// caPath holds gw1's public key here.
		fmt.Fprintf(&b, "  key: %s\nauth:\n  pubkeys:\n    - id: %s\n      key_file: %s\n", keyPath, GWCertID, caPath)
	} else {
		fmt.Fprintf(&b, "auth:\n  psks:\n    - id: %s\n      secret: %q\n", GWPSKID, TestPSK)
	}
	fmt.Fprintf(&b, `children:
  local_ts: [%s]
  remote_ts: [10.20.0.0/16]
dataplane:
  mode: memory
`, ConcLAN)
	return b.String()
}

// certGatewayConn is swanctl's connection gw<n> of a gateway that
// authenticates with its certificate gw<n>.crt as id, proposing localTS
// as its side and ConcLAN as ours (no automatic start).
func certGatewayConn(n int, id, localTS string) string {
	return fmt.Sprintf(`  gw%[1]d {
    version = 2
    local_addrs = %[2]s
    remote_addrs = %[3]s
    proposals = %[4]s
    encap = yes
    mobike = no
    send_cert = always
    send_certreq = yes
    local {
      auth = pubkey
      certs = gw%[1]d.crt
      id = %[5]s
    }
    remote {
      auth = pubkey
      id = %[6]s
      cacerts = ca.crt
    }
    children {
      lan%[1]d {
        local_ts = %[7]s
        remote_ts = %[8]s
        esp_proposals = %[9]s
        start_action = none
      }
    }
  }
`, n, GWAddr, ConcAddr, IKEProp, id, ConcID, localTS, ConcLAN, ESPProp)
}
