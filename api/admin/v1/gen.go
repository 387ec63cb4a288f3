// Package adminv1 is the operators' gRPC API of a concentrator node
// (admin.proto). Regenerate with `make generate` (protoc from Debian's
// protobuf-compiler; protoc-gen-go and protoc-gen-go-grpc pinned as go.mod
// tools).
package adminv1

//go:generate sh -c "cd ../../.. && protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --plugin=protoc-gen-go-grpc=$(go tool -n protoc-gen-go-grpc) --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative api/admin/v1/admin.proto"
