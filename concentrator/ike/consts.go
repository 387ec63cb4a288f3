package ike

import "strconv"

// Protocol constants (IANA "Internet Key Exchange Version 2 (IKEv2)
// Parameters"). Implementation limits live in limits.go.

// ExchangeType is the IKE header's exchange type.
type ExchangeType uint8

const (
	IKE_SA_INIT        ExchangeType = 34
	IKE_AUTH           ExchangeType = 35
	CREATE_CHILD_SA    ExchangeType = 36
	INFORMATIONAL      ExchangeType = 37
	IKE_SESSION_RESUME ExchangeType = 38
	IKE_INTERMEDIATE   ExchangeType = 43
	IKE_FOLLOWUP_KE    ExchangeType = 44 // RFC 9370
)

func (e ExchangeType) String() string {
	switch e {
	case IKE_SA_INIT:
		return "IKE_SA_INIT"
	case IKE_AUTH:
		return "IKE_AUTH"
	case CREATE_CHILD_SA:
		return "CREATE_CHILD_SA"
	case INFORMATIONAL:
		return "INFORMATIONAL"
	case IKE_SESSION_RESUME:
		return "IKE_SESSION_RESUME"
	case IKE_INTERMEDIATE:
		return "IKE_INTERMEDIATE"
	case IKE_FOLLOWUP_KE:
		return "IKE_FOLLOWUP_KE"
	}
	return "EXCHANGE(" + strconv.Itoa(int(e)) + ")"
}

// PayloadType is the "Next Payload" value naming a payload.
type PayloadType uint8

const (
	PayloadNone    PayloadType = 0
	PayloadSA      PayloadType = 33
	PayloadKE      PayloadType = 34
	PayloadIDi     PayloadType = 35
	PayloadIDr     PayloadType = 36
	PayloadCERT    PayloadType = 37
	PayloadCERTREQ PayloadType = 38
	PayloadAUTH    PayloadType = 39
	PayloadNonce   PayloadType = 40
	PayloadNotify  PayloadType = 41
	PayloadDelete  PayloadType = 42
	PayloadVendor  PayloadType = 43
	PayloadTSi     PayloadType = 44
	PayloadTSr     PayloadType = 45
	PayloadSK      PayloadType = 46
	PayloadCP      PayloadType = 47
	PayloadEAP     PayloadType = 48
	PayloadSKF     PayloadType = 53
)

var payloadNames = map[PayloadType]string{
	PayloadNone: "NONE", PayloadSA: "SA", PayloadKE: "KE", PayloadIDi: "IDi", PayloadIDr: "IDr",
	PayloadCERT: "CERT", PayloadCERTREQ: "CERTREQ", PayloadAUTH: "AUTH", PayloadNonce: "Nonce",
	PayloadNotify: "N", PayloadDelete: "D", PayloadVendor: "V", PayloadTSi: "TSi", PayloadTSr: "TSr",
	PayloadSK: "SK", PayloadCP: "CP", PayloadEAP: "EAP", PayloadSKF: "SKF",
}

func (p PayloadType) String() string {
	if s, ok := payloadNames[p]; ok {
		return s
	}
	return "PAYLOAD(" + strconv.Itoa(int(p)) + ")"
}

// Header flags.
const (
	FlagInitiator uint8 = 0x08
	FlagVersion   uint8 = 0x10
	FlagResponse  uint8 = 0x20
)

// Version is IKEv2 major 2, minor 0.
const Version uint8 = 0x20

// ProtocolID names the protocol of a proposal, notify or delete.
type ProtocolID uint8

const (
	ProtoNone ProtocolID = 0
	ProtoIKE  ProtocolID = 1
	ProtoAH   ProtocolID = 2
	ProtoESP  ProtocolID = 3
)

// NotifyType is a Notify message type. Values below 16384 are errors.
type NotifyType uint16

const (
	UNSUPPORTED_CRITICAL_PAYLOAD NotifyType = 1
	INVALID_IKE_SPI              NotifyType = 4
	INVALID_MAJOR_VERSION        NotifyType = 5
	INVALID_SYNTAX               NotifyType = 7
	INVALID_MESSAGE_ID           NotifyType = 9
	INVALID_SPI                  NotifyType = 11
	NO_PROPOSAL_CHOSEN           NotifyType = 14
	INVALID_KE_PAYLOAD           NotifyType = 17
	AUTHENTICATION_FAILED        NotifyType = 24
	SINGLE_PAIR_REQUIRED         NotifyType = 34
	NO_ADDITIONAL_SAS            NotifyType = 35
	INTERNAL_ADDRESS_FAILURE     NotifyType = 36
	FAILED_CP_REQUIRED           NotifyType = 37
	TS_UNACCEPTABLE              NotifyType = 38
	INVALID_SELECTORS            NotifyType = 39
	TEMPORARY_FAILURE            NotifyType = 43
	CHILD_SA_NOT_FOUND           NotifyType = 44
	STATE_NOT_FOUND              NotifyType = 47 // RFC 9370

	INITIAL_CONTACT                 NotifyType = 16384
	SET_WINDOW_SIZE                 NotifyType = 16385
	ADDITIONAL_TS_POSSIBLE          NotifyType = 16386
	IPCOMP_SUPPORTED                NotifyType = 16387
	NAT_DETECTION_SOURCE_IP         NotifyType = 16388
	NAT_DETECTION_DESTINATION_IP    NotifyType = 16389
	COOKIE                          NotifyType = 16390
	USE_TRANSPORT_MODE              NotifyType = 16391
	HTTP_CERT_LOOKUP_SUPPORTED      NotifyType = 16392
	REKEY_SA                        NotifyType = 16393
	ESP_TFC_PADDING_NOT_SUPPORTED   NotifyType = 16394
	NON_FIRST_FRAGMENTS_ALSO        NotifyType = 16395
	MOBIKE_SUPPORTED                NotifyType = 16396
	ADDITIONAL_IP4_ADDRESS          NotifyType = 16397
	ADDITIONAL_IP6_ADDRESS          NotifyType = 16398
	NO_ADDITIONAL_ADDRESSES         NotifyType = 16399
	UPDATE_SA_ADDRESSES             NotifyType = 16400
	COOKIE2                         NotifyType = 16401
	NO_NATS_ALLOWED                 NotifyType = 16402
	MULTIPLE_AUTH_SUPPORTED         NotifyType = 16404
	REDIRECT_SUPPORTED              NotifyType = 16406
	REDIRECT                        NotifyType = 16407
	REDIRECTED_FROM                 NotifyType = 16408
	EAP_ONLY_AUTHENTICATION         NotifyType = 16417
	CHILDLESS_IKEV2_SUPPORTED       NotifyType = 16418
	IKEV2_MESSAGE_ID_SYNC_SUPPORTED NotifyType = 16420
	IKEV2_MESSAGE_ID_SYNC           NotifyType = 16422 // RFC 6311
	IPSEC_REPLAY_COUNTER_SYNC       NotifyType = 16423 // RFC 6311
	IKEV2_FRAGMENTATION_SUPPORTED   NotifyType = 16430
	SIGNATURE_HASH_ALGORITHMS       NotifyType = 16431
	TICKET_LT_OPAQUE                NotifyType = 16409 // RFC 5723
	TICKET_REQUEST                  NotifyType = 16410
	TICKET_ACK                      NotifyType = 16411
	TICKET_NACK                     NotifyType = 16412
	TICKET_OPAQUE                   NotifyType = 16413
	INTERMEDIATE_EXCHANGE_SUPPORTED NotifyType = 16438 // RFC 9242
	ADDITIONAL_KEY_EXCHANGE         NotifyType = 16441 // RFC 9370
)

var notifyNames = map[NotifyType]string{
	UNSUPPORTED_CRITICAL_PAYLOAD: "UNSUPPORTED_CRITICAL_PAYLOAD", INVALID_IKE_SPI: "INVALID_IKE_SPI",
	INVALID_MAJOR_VERSION: "INVALID_MAJOR_VERSION", INVALID_SYNTAX: "INVALID_SYNTAX",
	INVALID_MESSAGE_ID: "INVALID_MESSAGE_ID", INVALID_SPI: "INVALID_SPI",
	NO_PROPOSAL_CHOSEN: "NO_PROPOSAL_CHOSEN", INVALID_KE_PAYLOAD: "INVALID_KE_PAYLOAD",
	AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED", SINGLE_PAIR_REQUIRED: "SINGLE_PAIR_REQUIRED",
	NO_ADDITIONAL_SAS: "NO_ADDITIONAL_SAS", INTERNAL_ADDRESS_FAILURE: "INTERNAL_ADDRESS_FAILURE",
	FAILED_CP_REQUIRED: "FAILED_CP_REQUIRED", TS_UNACCEPTABLE: "TS_UNACCEPTABLE",
	INVALID_SELECTORS: "INVALID_SELECTORS", TEMPORARY_FAILURE: "TEMPORARY_FAILURE",
	CHILD_SA_NOT_FOUND: "CHILD_SA_NOT_FOUND", INITIAL_CONTACT: "INITIAL_CONTACT",
	SET_WINDOW_SIZE: "SET_WINDOW_SIZE", ADDITIONAL_TS_POSSIBLE: "ADDITIONAL_TS_POSSIBLE",
	IPCOMP_SUPPORTED: "IPCOMP_SUPPORTED", NAT_DETECTION_SOURCE_IP: "NAT_DETECTION_SOURCE_IP",
	NAT_DETECTION_DESTINATION_IP: "NAT_DETECTION_DESTINATION_IP", COOKIE: "COOKIE",
	USE_TRANSPORT_MODE: "USE_TRANSPORT_MODE", HTTP_CERT_LOOKUP_SUPPORTED: "HTTP_CERT_LOOKUP_SUPPORTED",
	REKEY_SA: "REKEY_SA", ESP_TFC_PADDING_NOT_SUPPORTED: "ESP_TFC_PADDING_NOT_SUPPORTED",
	NON_FIRST_FRAGMENTS_ALSO: "NON_FIRST_FRAGMENTS_ALSO", MOBIKE_SUPPORTED: "MOBIKE_SUPPORTED",
	ADDITIONAL_IP4_ADDRESS: "ADDITIONAL_IP4_ADDRESS", ADDITIONAL_IP6_ADDRESS: "ADDITIONAL_IP6_ADDRESS",
	NO_ADDITIONAL_ADDRESSES: "NO_ADDITIONAL_ADDRESSES", UPDATE_SA_ADDRESSES: "UPDATE_SA_ADDRESSES",
	COOKIE2: "COOKIE2", NO_NATS_ALLOWED: "NO_NATS_ALLOWED", MULTIPLE_AUTH_SUPPORTED: "MULTIPLE_AUTH_SUPPORTED",
	REDIRECT_SUPPORTED: "REDIRECT_SUPPORTED", REDIRECT: "REDIRECT", REDIRECTED_FROM: "REDIRECTED_FROM",
	EAP_ONLY_AUTHENTICATION: "EAP_ONLY_AUTHENTICATION", CHILDLESS_IKEV2_SUPPORTED: "CHILDLESS_IKEV2_SUPPORTED",
	IKEV2_MESSAGE_ID_SYNC_SUPPORTED: "IKEV2_MESSAGE_ID_SYNC_SUPPORTED",
	IKEV2_MESSAGE_ID_SYNC:           "IKEV2_MESSAGE_ID_SYNC",
	IPSEC_REPLAY_COUNTER_SYNC:       "IPSEC_REPLAY_COUNTER_SYNC",
	IKEV2_FRAGMENTATION_SUPPORTED:   "IKEV2_FRAGMENTATION_SUPPORTED",
	SIGNATURE_HASH_ALGORITHMS:       "SIGNATURE_HASH_ALGORITHMS",
	STATE_NOT_FOUND:                 "STATE_NOT_FOUND",
	TICKET_LT_OPAQUE:                "TICKET_LT_OPAQUE",
	TICKET_REQUEST:                  "TICKET_REQUEST",
	TICKET_ACK:                      "TICKET_ACK",
	TICKET_NACK:                     "TICKET_NACK",
	TICKET_OPAQUE:                   "TICKET_OPAQUE",
	INTERMEDIATE_EXCHANGE_SUPPORTED: "INTERMEDIATE_EXCHANGE_SUPPORTED",
	ADDITIONAL_KEY_EXCHANGE:         "ADDITIONAL_KEY_EXCHANGE",
}

func (n NotifyType) String() string {
	if s, ok := notifyNames[n]; ok {
		return s
	}
	return "NOTIFY(" + strconv.Itoa(int(n)) + ")"
}

// IsError reports whether n is an error notification (RFC 7296 §3.10.1).
func (n NotifyType) IsError() bool { return n != 0 && n < 16384 }

// ID types (RFC 7296 §3.5).
const (
	IDIPv4Addr   uint8 = 1
	IDFQDN       uint8 = 2
	IDRFC822Addr uint8 = 3
	IDIPv6Addr   uint8 = 5
	IDDERASN1DN  uint8 = 9
	IDKeyID      uint8 = 11
)

// Certificate encodings (RFC 7296 §3.6, RFC 7670).
const (
	CertX509Signature uint8 = 4
	CertRawPublicKey  uint8 = 15
)

// Traffic selector types (RFC 7296 §3.13.1).
const (
	TSIPv4AddrRange uint8 = 7
	TSIPv6AddrRange uint8 = 8
)

// Configuration payload types and attributes (RFC 7296 §3.15).
const (
	CFG_REQUEST uint8 = 1
	CFG_REPLY   uint8 = 2
	CFG_SET     uint8 = 3
	CFG_ACK     uint8 = 4

	INTERNAL_IP4_ADDRESS uint16 = 1
	INTERNAL_IP4_NETMASK uint16 = 2
	INTERNAL_IP4_DNS     uint16 = 3
	INTERNAL_IP6_ADDRESS uint16 = 8
	INTERNAL_IP6_DNS     uint16 = 10
	INTERNAL_IP4_SUBNET  uint16 = 13
)
