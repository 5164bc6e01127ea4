package policy

import (
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/iam/internal/keys"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// ChainFire prefixes the policy stream carries; everything else under Prefix is ignored.
const (
	Prefix           = "/iam/"
	prefixRoles      = "/iam/roles/"
	prefixBindings   = "/iam/bindings/"
	prefixWatermarks = "/iam/watermarks/"
	prefixRevoked    = "/iam/revoked/"
	prefixKeys       = keys.Prefix
)

var unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}

// putChange decodes the value at key into a PUT change; nil for keys the stream does not
// carry or values it cannot decode.
func putChange(key string, value []byte) *iamv1.PolicyChange {
	ch := &iamv1.PolicyChange{Op: iamv1.PolicyChange_OP_PUT}
	var m proto.Message
	switch {
	case strings.HasPrefix(key, prefixRoles):
		r := &iamv1.Role{}
		ch.Object, m = &iamv1.PolicyChange_Role{Role: r}, r
	case strings.HasPrefix(key, prefixBindings):
		b := &iamv1.Binding{}
		ch.Object, m = &iamv1.PolicyChange_Binding{Binding: b}, b
	case strings.HasPrefix(key, prefixWatermarks):
		w := &iamv1.Watermark{}
		ch.Object, m = &iamv1.PolicyChange_Watermark{Watermark: w}, w
	case strings.HasPrefix(key, prefixRevoked):
		r := &iamv1.RevokedToken{}
		ch.Object, m = &iamv1.PolicyChange_RevokedToken{RevokedToken: r}, r
	case strings.HasPrefix(key, prefixKeys):
		k, err := keys.DecodePublic(key, value)
		if err != nil {
			return nil
		}
		ch.Object = &iamv1.PolicyChange_SigningKey{SigningKey: k}
		return ch
	default:
		return nil
	}
	if err := unmarshal.Unmarshal(value, m); err != nil {
		return nil
	}
	return ch
}

// deleteChange is the DELETE change of key, carrying only identifying fields parsed from
// the key; nil for keys the stream does not carry.
func deleteChange(key string) *iamv1.PolicyChange {
	ch := &iamv1.PolicyChange{Op: iamv1.PolicyChange_OP_DELETE}
	switch {
	case strings.HasPrefix(key, prefixRoles):
		ch.Object = &iamv1.PolicyChange_Role{Role: &iamv1.Role{Name: key[len(prefixRoles):]}}
	case strings.HasPrefix(key, prefixBindings):
		// <project or "-">/<principal>/<role>; principals contain ':' but never '/'.
		parts := strings.Split(key[len(prefixBindings):], "/")
		if len(parts) != 3 {
			return nil
		}
		project := parts[0]
		if project == "-" {
			project = ""
		}
		ch.Object = &iamv1.PolicyChange_Binding{Binding: &iamv1.Binding{Principal: parts[1], Role: parts[2], Project: project}}
	case strings.HasPrefix(key, prefixWatermarks):
		scope, name, ok := strings.Cut(key[len(prefixWatermarks):], "/")
		if !ok {
			return nil
		}
		w := &iamv1.Watermark{Name: name}
		switch scope {
		case "principal":
			w.Scope = iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL
		case "project":
			w.Scope = iamv1.WatermarkScope_WATERMARK_SCOPE_PROJECT
		case "global":
			w.Scope, w.Name = iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL, ""
		default:
			return nil
		}
		ch.Object = &iamv1.PolicyChange_Watermark{Watermark: w}
	case strings.HasPrefix(key, prefixRevoked):
		ch.Object = &iamv1.PolicyChange_RevokedToken{RevokedToken: &iamv1.RevokedToken{Jti: key[len(prefixRevoked):]}}
	case strings.HasPrefix(key, prefixKeys):
		ch.Object = &iamv1.PolicyChange_SigningKey{SigningKey: &iamv1.SigningKey{Kid: key[len(prefixKeys):]}}
	default:
		return nil
	}
	return ch
}

func equalChange(a, b *iamv1.PolicyChange) bool { return proto.Equal(a, b) }
