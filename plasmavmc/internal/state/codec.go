package state

import (
	"encoding/json"
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// Sentinel errors of the package; returned errors wrap them with the key or object.
var (
	ErrNotFound    = errors.New("state: not found")
	ErrConflict    = errors.New("state: changed concurrently")
	ErrUnavailable = errors.New("state: chainfire unavailable")
	ErrCorrupt     = errors.New("state: corrupt value")
)

// Encode is the stored form of m (protojson).
func Encode(m proto.Message) string {
	b, err := protojson.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("state: encode %T: %v", m, err)) // only invalid UTF-8, which validation refuses
	}
	return string(b)
}

// Decode parses the stored form of a message into m, ignoring unknown fields (newer
// writers). key only names the value in the error.
func Decode(key string, data []byte, m proto.Message) error {
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, m); err != nil {
		return fmt.Errorf("%w at %s: %w", ErrCorrupt, key, err)
	}
	return nil
}

// DecodeVM decodes a /vms/ or /assigned/ value.
func DecodeVM(key string, data []byte) (*pb.VM, error) {
	vm := &pb.VM{}
	return vm, Decode(key, data, vm)
}

// DecodeStatus decodes a /status/ value.
func DecodeStatus(key string, data []byte) (*pb.VMStatus, error) {
	s := &pb.VMStatus{}
	return s, Decode(key, data, s)
}

// DecodeHost decodes a /hosts/ value.
func DecodeHost(key string, data []byte) (*pb.Host, error) {
	h := &pb.Host{}
	return h, Decode(key, data, h)
}

// DecodeResources decodes an /alloc/ value (empty: zero).
func DecodeResources(key string, data []byte) (*pb.Resources, error) {
	r := &pb.Resources{}
	if len(data) == 0 {
		return r, nil
	}
	return r, Decode(key, data, r)
}

// DecodeOperation decodes an /operations/ value.
func DecodeOperation(key string, data []byte) (*pb.Operation, error) {
	o := &pb.Operation{}
	return o, Decode(key, data, o)
}

// DecodeImage decodes an /images/ value.
func DecodeImage(key string, data []byte) (*pb.Image, error) {
	i := &pb.Image{}
	return i, Decode(key, data, i)
}

// RequestRecord is the value of /requests/<request_id>.
type RequestRecord struct {
	VMID        string `json:"vm_id"`
	OperationID string `json:"operation_id"`
}

// EncodeRequest is the stored form of r.
func EncodeRequest(r RequestRecord) string {
	b, _ := json.Marshal(r)
	return string(b)
}

// DecodeRequest decodes a /requests/ value.
func DecodeRequest(key string, data []byte) (RequestRecord, error) {
	var r RequestRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("%w at %s: %w", ErrCorrupt, key, err)
	}
	return r, nil
}

// StoredVM is the VM record as stored: status cleared (it lives in /status/<id>).
func StoredVM(vm *pb.VM) *pb.VM {
	c := proto.Clone(vm).(*pb.VM)
	c.Status = nil
	return c
}
