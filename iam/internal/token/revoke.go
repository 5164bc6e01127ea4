package token

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/lestrrat-go/jwx/v3/jws"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

var jtiRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// WatermarkKey is the ChainFire key of the watermark of scope and name.
func WatermarkKey(scope iamv1.WatermarkScope, name string) string {
	switch scope {
	case iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL:
		return PrefixWatermarks + "principal/" + name
	case iamv1.WatermarkScope_WATERMARK_SCOPE_PROJECT:
		return PrefixWatermarks + "project/" + name
	default:
		return PrefixWatermarks + "global/-"
	}
}

// CeilSecond rounds t up to a whole second.
func CeilSecond(t time.Time) time.Time {
	w := t.Truncate(time.Second)
	if w.Before(t) {
		w = w.Add(time.Second)
	}
	return w
}

// Watermark returns the newest watermark applicable to a token of principal scoped to
// project ("" unscoped): the latest not_before among the principal's, the project's and
// the global watermark, read linearizably from ChainFire (zero time when none).
func (s *Service) Watermark(ctx context.Context, principal, project string) (time.Time, error) {
	ops := []chainfire.Op{
		chainfire.OpGet(WatermarkKey(iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL, "")),
		chainfire.OpGet(WatermarkKey(iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, principal)),
	}
	if project != "" {
		ops = append(ops, chainfire.OpGet(WatermarkKey(iamv1.WatermarkScope_WATERMARK_SCOPE_PROJECT, project)))
	}
	resp, err := s.cfg.Client.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return time.Time{}, unavailable("read watermarks", err)
	}
	var w time.Time
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().GetKvs() {
			var wm iamv1.Watermark
			if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(kv.Value, &wm); err != nil {
				s.log.Error("ignoring corrupt watermark", "key", string(kv.Key), "err", err)
				continue
			}
			if t := wm.GetNotBefore().AsTime(); t.After(w) {
				w = t
			}
		}
	}
	return w, nil
}

// Revoke performs a RevokeRequest for actor (the authenticated caller, "" if none) and
// records it in the audit trail. Revoking an unknown refresh token succeeds (RFC 7009 §2.2).
func (s *Service) Revoke(ctx context.Context, req *iamv1.RevokeRequest, actor, source string) error {
	var (
		target, what string
		err          error
	)
	switch t := req.GetTarget().(type) {
	case *iamv1.RevokeRequest_RefreshToken:
		what = "refresh_token"
		target, err = s.RevokeRefresh(ctx, t.RefreshToken)
	case *iamv1.RevokeRequest_AccessToken:
		what = "access_token"
		target, err = s.RevokeAccess(ctx, t.AccessToken)
	case *iamv1.RevokeRequest_Jti:
		what, target = "jti", t.Jti
		err = s.RevokeJTI(ctx, t.Jti, time.Time{})
	case *iamv1.RevokeRequest_Watermark:
		what = "watermark"
		var wm *iamv1.Watermark
		wm, err = s.RevokeWatermark(ctx, t.Watermark)
		if wm != nil {
			target = WatermarkKey(wm.Scope, wm.Name)
		}
	default:
		err = fmt.Errorf("%w: one of refresh_token, access_token, jti or watermark is required", ErrInvalidRequest)
	}
	ev := audit.Event{Action: "token.revoke", Actor: actor, Target: target, Source: source,
		Attrs: []slog.Attr{slog.String("kind", what)}}
	if err != nil {
		ev.Outcome, ev.Reason = audit.Failure, err.Error()
	}
	s.audit.Record(ctx, ev)
	return err
}

// RevokeRefresh revokes the family of a refresh token and returns its principal ("" for
// an unknown token, which is not an error).
func (s *Service) RevokeRefresh(ctx context.Context, tok string) (string, error) {
	if tok == "" {
		return "", fmt.Errorf("%w: refresh_token is empty", ErrInvalidRequest)
	}
	rec, _, _, _, err := s.readRefresh(ctx, PrefixRefresh+hashRefresh(tok))
	if err != nil || rec == nil {
		return "", err
	}
	return rec.Principal, s.revokeFamily(ctx, rec.Family, "revoked")
}

// RefreshOwner returns the principal a refresh token belongs to ("" when unknown).
func (s *Service) RefreshOwner(ctx context.Context, tok string) (string, error) {
	rec, _, _, _, err := s.readRefresh(ctx, PrefixRefresh+hashRefresh(tok))
	if err != nil || rec == nil {
		return "", err
	}
	return rec.Principal, nil
}

// RevokeAccess revokes an access token by its jti until its exp (plus skew). The token's
// signature must verify against a published key; its expiry is not checked (revoking an
// expired token is a no-op).
func (s *Service) RevokeAccess(ctx context.Context, raw string) (string, error) {
	if len(raw) > 8192 {
		return "", fmt.Errorf("%w: token too large", ErrInvalidToken)
	}
	payload, err := jws.Verify([]byte(raw), jws.WithKeySet(s.cfg.Keys.PublicKeys(), jws.WithRequireKid(true)))
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidToken, err)
	}
	var c Claims
	if err := json.Unmarshal(payload, &c); err != nil || c.JTI == "" || c.ExpiresAt == 0 {
		return "", fmt.Errorf("%w: no jti or exp claim", ErrInvalidToken)
	}
	return c.Subject, s.RevokeJTI(ctx, c.JTI, time.Unix(c.ExpiresAt, 0))
}

// RevokeJTI revokes the access token with id jti until exp plus the skew (zero exp: the
// longest lifetime a token issued now could have). The record lives on a ChainFire lease
// ending then.
func (s *Service) RevokeJTI(ctx context.Context, jti string, exp time.Time) error {
	if !jtiRE.MatchString(jti) {
		return fmt.Errorf("%w: jti %q is malformed", ErrInvalidRequest, jti)
	}
	now := s.cfg.Now()
	if exp.IsZero() {
		exp = now.Add(s.cfg.AccessTTL)
	}
	until := exp.Add(s.cfg.Skew)
	if !until.After(now) {
		return nil // it no longer verifies anyway
	}
	ttl := int64(until.Sub(now)/time.Second) + 1
	lease, err := s.cfg.Client.Grant(ctx, ttl)
	if err != nil {
		return unavailable("grant revocation lease", err)
	}
	rt := &iamv1.RevokedToken{Jti: jti, ExpireTime: timestamppb.New(until.Truncate(time.Second).Add(time.Second))}
	v, _ := protojson.Marshal(rt)
	if _, err := s.cfg.Client.Put(ctx, PrefixRevoked+jti, string(v), chainfire.WithLease(lease.ID)); err != nil {
		return unavailable("store revocation", err)
	}
	return nil
}

// RevokeWatermark raises the watermark of wm's scope to wm.not_before (default now),
// rounded up to a whole second; a newer existing watermark is kept. It returns the
// watermark in force. not_before may not lie in the future.
func (s *Service) RevokeWatermark(ctx context.Context, wm *iamv1.Watermark) (*iamv1.Watermark, error) {
	now := s.cfg.Now()
	name := wm.GetName()
	switch wm.GetScope() {
	case iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL:
		if !principalRE.MatchString(name) {
			return nil, fmt.Errorf("%w: watermark.name %q: want user:<name> or serviceaccount:<name>", ErrInvalidRequest, name)
		}
	case iamv1.WatermarkScope_WATERMARK_SCOPE_PROJECT:
		if !projectRE.MatchString(name) {
			return nil, fmt.Errorf("%w: watermark.name %q is not a project name", ErrInvalidRequest, name)
		}
	case iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL:
		if name != "" && name != "-" {
			return nil, fmt.Errorf("%w: watermark.name must be empty for the global scope", ErrInvalidRequest)
		}
		name = ""
	default:
		return nil, fmt.Errorf("%w: watermark.scope is required (principal, project or global)", ErrInvalidRequest)
	}
	nb := now
	if wm.GetNotBefore() != nil {
		nb = wm.GetNotBefore().AsTime()
		if nb.After(now.Add(time.Second)) {
			return nil, fmt.Errorf("%w: watermark.not_before lies in the future", ErrInvalidRequest)
		}
	}
	out := &iamv1.Watermark{Scope: wm.GetScope(), Name: name, NotBefore: timestamppb.New(CeilSecond(nb))}
	key := WatermarkKey(out.Scope, name)
	v, _ := protojson.Marshal(out)
	for range 5 {
		resp, err := s.cfg.Client.Get(ctx, key)
		if err != nil {
			return nil, unavailable("read watermark", err)
		}
		var rev int64
		if len(resp.Kvs) > 0 {
			rev = resp.Kvs[0].ModRevision
			var old iamv1.Watermark
			if protojson.Unmarshal(resp.Kvs[0].Value, &old) == nil && !old.GetNotBefore().AsTime().Before(out.NotBefore.AsTime()) {
				return &old, nil
			}
		}
		tr, err := s.cfg.Client.Txn(ctx).If(chainfire.Compare(chainfire.ModRevision(key), "=", rev)).
			Then(chainfire.OpPut(key, string(v))).Commit()
		if err != nil {
			return nil, unavailable("store watermark", err)
		}
		if tr.Succeeded {
			return out, nil
		}
	}
	return nil, fmt.Errorf("%w: watermark contended", ErrUnavailable)
}

var principalRE = regexp.MustCompile(`^(user|serviceaccount):[a-z][a-z0-9-]{0,62}$`)
