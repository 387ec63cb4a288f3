// Package statestorev1 holds the protobuf records that package statestore
// keeps in etcd. Regenerate with `make generate` (protoc from Debian's
// protobuf-compiler; protoc-gen-go pinned as a go.mod tool).
package statestorev1

//go:generate sh -c "cd ../../.. && protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative api/statestore/v1/record.proto"
