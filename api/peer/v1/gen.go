// Package peerv1 is the node-to-node gRPC API of a concentrator cluster
// (peer.proto): SA hand-offs and forwarding of half-open exchanges.
// Regenerate with `make generate` (protoc from Debian's protobuf-compiler;
// protoc-gen-go and protoc-gen-go-grpc pinned as go.mod tools).
package peerv1

//go:generate sh -c "cd ../../.. && protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --plugin=protoc-gen-go-grpc=$(go tool -n protoc-gen-go-grpc) --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative api/peer/v1/peer.proto"
