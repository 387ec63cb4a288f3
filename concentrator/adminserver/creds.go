package adminserver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/ikefleet/ikefleet/api/admin/v1"
	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/statestore"
)

// ---- the credential store ----

var kindOf = map[adminv1.CredentialKind]statestore.CredentialKind{
	adminv1.CredentialKind_CREDENTIAL_KIND_PSK:    statestore.CredentialPSK,
	adminv1.CredentialKind_CREDENTIAL_KIND_PUBKEY: statestore.CredentialPubKey,
}

func (s *Server) PutCredentials(ctx context.Context, req *adminv1.PutCredentialsRequest) (*adminv1.PutCredentialsResponse, error) {
	cs := make([]statestore.Credential, len(req.GetCredentials()))
	for i, c := range req.GetCredentials() {
		kind, ok := kindOf[c.GetKind()]
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "credentials[%d] (%q): kind must be PSK or PUBKEY", i, c.GetId())
		}
		cs[i] = statestore.Credential{ID: c.GetId(), Kind: kind, Secret: c.GetSecret()}
	}
	n, err := s.node.PutCredentials(ctx, cs)
	if err != nil {
		s.log.Warn("credentials not stored", "err", err, "by", peerOf(ctx))
		return nil, credStatus(err)
	}
	s.log.Info("credentials stored", "count", n, "by", peerOf(ctx))
	return &adminv1.PutCredentialsResponse{Written: uint32(n)}, nil
}

func (s *Server) DeleteCredential(ctx context.Context, req *adminv1.DeleteCredentialRequest) (*adminv1.DeleteCredentialResponse, error) {
	ok, err := s.node.DeleteCredential(ctx, req.GetId())
	if err != nil {
		return nil, credStatus(err)
	}
	s.log.Info("credential revoked", "id", req.GetId(), "deleted", ok, "by", peerOf(ctx))
	return &adminv1.DeleteCredentialResponse{Deleted: ok}, nil
}

func (s *Server) ListCredentials(ctx context.Context, req *adminv1.ListCredentialsRequest) (*adminv1.ListCredentialsResponse, error) {
	size := int(req.GetPageSize())
	if size == 0 {
		size = 1000
	}
	if size > 10000 {
		return nil, status.Error(codes.InvalidArgument, "page_size: at most 10000")
	}
	cs, total, err := s.node.ListCredentials(ctx, req.GetPageToken(), size)
	if err != nil {
		return nil, credStatus(err)
	}
	out := &adminv1.ListCredentialsResponse{Total: uint64(total)}
	for _, c := range cs {
		k := adminv1.CredentialKind_CREDENTIAL_KIND_PSK
		if c.Kind == statestore.CredentialPubKey {
			k = adminv1.CredentialKind_CREDENTIAL_KIND_PUBKEY
		}
		out.Credentials = append(out.Credentials, &adminv1.Credential{Id: c.ID, Kind: k, Updated: timestamppb.New(c.Updated)})
	}
	if len(cs) == size {
		out.NextPageToken = cs[len(cs)-1].ID
	}
	p, k := s.node.CredentialCounts()
	out.NodePsks, out.NodePubkeys = uint64(p), uint64(k)
	return out, nil
}

func credStatus(err error) error {
	var in *concentrator.CredentialInputError
	var se *statestore.CredentialError
	switch {
	case errors.Is(err, concentrator.ErrNoCredentialStore):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.As(err, &in), errors.As(err, &se):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, statestore.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	}
	return statusOf(err)
}
