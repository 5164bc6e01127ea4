package token

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/iam/internal/store"
	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// refreshRecord is the value at /iam/refresh/<sha256 hex of the token>, on a lease that
// ends at ExpireTime. The token itself is never stored.
type refreshRecord struct {
	Family     string    `json:"family"`
	Principal  string    `json:"principal"`
	Project    string    `json:"project,omitempty"`
	ClientID   string    `json:"client_id"`
	Audience   []string  `json:"audience"`
	ExpireTime time.Time `json:"expire_time"`
	// Used is set, in the txn that creates its successor, when the token is redeemed.
	Used bool `json:"used"`
}

// familyRecord is the value at /iam/refresh-families/<id>: one login's chain of refresh
// tokens. It lives on the lease of the family's newest token.
type familyRecord struct {
	Principal string    `json:"principal"`
	Started   time.Time `json:"started"`
	Revoked   bool      `json:"revoked,omitempty"`
	Reason    string    `json:"reason,omitempty"`
}

// errConflict: a guarded refresh txn lost a race; re-read and decide again.
var errConflict = errors.New("token: concurrent refresh")

func hashRefresh(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

func newRefreshToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func newFamilyID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// grantLease returns a lease for a refresh token's lifetime.
func (s *Service) grantLease(ctx context.Context) (int64, time.Time, error) {
	ttl := int64((s.cfg.RefreshTTL + time.Second - 1) / time.Second)
	resp, err := s.cfg.Client.Grant(ctx, ttl)
	if err != nil {
		return 0, time.Time{}, unavailable("grant refresh lease", err)
	}
	return resp.ID, s.cfg.Now().Add(s.cfg.RefreshTTL), nil
}

// startFamily stores the first refresh token of a new family and returns the token.
func (s *Service) startFamily(ctx context.Context, fam *familyRecord, rec refreshRecord) (string, error) {
	lease, exp, err := s.grantLease(ctx)
	if err != nil {
		return "", err
	}
	tok := newRefreshToken()
	rec.Family = newFamilyID()
	rec.ExpireTime = exp
	_, err = s.cfg.Client.Txn(ctx).Then(
		chainfire.OpPut(PrefixRefresh+hashRefresh(tok), mustJSON(rec), chainfire.WithLease(lease)),
		chainfire.OpPut(PrefixFamilies+rec.Family, mustJSON(fam), chainfire.WithLease(lease)),
	).Commit()
	if err != nil {
		return "", unavailable("store refresh token", err)
	}
	return tok, nil
}

// readRefresh reads the record of a refresh token and its family in one read.
func (s *Service) readRefresh(ctx context.Context, key string) (rec *refreshRecord, recRev int64, fam *familyRecord, famRev int64, err error) {
	resp, err := s.cfg.Client.Get(ctx, key)
	if err != nil {
		return nil, 0, nil, 0, unavailable("read refresh token", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil, 0, nil
	}
	rec = &refreshRecord{}
	if err := json.Unmarshal(resp.Kvs[0].Value, rec); err != nil {
		return nil, 0, nil, 0, fmt.Errorf("%w: corrupt refresh record", ErrInvalidGrant)
	}
	recRev = resp.Kvs[0].ModRevision
	fresp, err := s.cfg.Client.Get(ctx, PrefixFamilies+rec.Family)
	if err != nil {
		return nil, 0, nil, 0, unavailable("read refresh family", err)
	}
	if len(fresp.Kvs) == 0 {
		return rec, recRev, nil, 0, nil
	}
	fam = &familyRecord{}
	if err := json.Unmarshal(fresp.Kvs[0].Value, fam); err != nil {
		return nil, 0, nil, 0, fmt.Errorf("%w: corrupt refresh family", ErrInvalidGrant)
	}
	return rec, recRev, fam, fresp.Kvs[0].ModRevision, nil
}

func (s *Service) refreshGrant(ctx context.Context, req *iamv1.TokenRequest, source string) (string, *issued, error) {
	if req.GetRefreshToken() == "" {
		return "", nil, fmt.Errorf("%w: refresh_token is required", ErrInvalidRequest)
	}
	if _, err := s.audience(req); err != nil {
		return "", nil, err
	}
	key := PrefixRefresh + hashRefresh(req.GetRefreshToken())
	for attempt := 0; ; attempt++ {
		principal, is, err := s.refreshOnce(ctx, req, key, source)
		if !errors.Is(err, errConflict) {
			return principal, is, err
		}
		if attempt >= 3 {
			return principal, nil, fmt.Errorf("%w: refresh token contended", ErrUnavailable)
		}
	}
}

func (s *Service) refreshOnce(ctx context.Context, req *iamv1.TokenRequest, key, source string) (string, *issued, error) {
	rec, recRev, fam, famRev, err := s.readRefresh(ctx, key)
	if err != nil {
		return "", nil, err
	}
	now := s.cfg.Now()
	switch {
	case rec == nil:
		return "", nil, fmt.Errorf("%w: unknown or expired refresh token", ErrInvalidGrant)
	case fam == nil:
		return rec.Principal, nil, fmt.Errorf("%w: refresh token family expired", ErrInvalidGrant)
	case !now.Before(rec.ExpireTime):
		return rec.Principal, nil, fmt.Errorf("%w: refresh token expired", ErrInvalidGrant)
	case req.GetClientId() != "" && req.GetClientId() != rec.ClientID:
		return rec.Principal, nil, fmt.Errorf("%w: refresh token was issued to another client", ErrInvalidGrant)
	case fam.Revoked:
		return rec.Principal, nil, fmt.Errorf("%w: refresh token family revoked (%s)", ErrInvalidGrant, fam.Reason)
	case rec.Used:
		// Reuse of a rotated token: someone else holds the family. Revoke it all.
		if err := s.revokeFamily(ctx, rec.Family, "reuse of a rotated refresh token"); err != nil {
			return rec.Principal, nil, err
		}
		s.audit.Record(ctx, audit.Event{Action: "token.revoke", Target: rec.Principal, Reason: "refresh token reuse detected: family revoked",
			Source: source, Attrs: []slog.Attr{slog.String("family", rec.Family)}})
		return rec.Principal, nil, fmt.Errorf("%w: refresh token was already used; its whole family is revoked", ErrInvalidGrant)
	}
	if err := s.cfg.Directory.PrincipalActive(ctx, rec.Principal); err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			return rec.Principal, nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		return rec.Principal, nil, fmt.Errorf("%w: %s is disabled or deleted", ErrInvalidGrant, rec.Principal)
	}
	project := rec.Project
	if req.GetProject() != "" {
		project = req.GetProject()
	}
	w, err := s.Watermark(ctx, rec.Principal, project)
	if err != nil {
		return rec.Principal, nil, err
	}
	if fam.Started.Before(w) {
		return rec.Principal, nil, fmt.Errorf("%w: refresh token family revoked by a watermark (%s)", ErrInvalidGrant, w.Format(time.RFC3339))
	}
	if err := s.scope(ctx, rec.Principal, project); err != nil {
		return rec.Principal, nil, err
	}
	aud := rec.Audience
	if len(req.GetAudience()) > 0 {
		aud = req.GetAudience()
	}
	// Mint first: a refresh token is only rotated when the new access token exists.
	is, err := s.issue(ctx, Claims{Subject: rec.Principal, Audience: aud, ClientID: rec.ClientID, Project: project})
	if err != nil {
		return rec.Principal, nil, err
	}
	lease, exp, err := s.grantLease(ctx)
	if err != nil {
		return rec.Principal, nil, err
	}
	tok := newRefreshToken()
	used := *rec
	used.Used = true
	next := refreshRecord{Family: rec.Family, Principal: rec.Principal, Project: project, ClientID: rec.ClientID,
		Audience: aud, ExpireTime: exp}
	resp, err := s.cfg.Client.Txn(ctx).If(
		chainfire.Compare(chainfire.ModRevision(key), "=", recRev),
		chainfire.Compare(chainfire.ModRevision(PrefixFamilies+rec.Family), "=", famRev),
	).Then(
		chainfire.OpPut(key, mustJSON(used), chainfire.WithIgnoreLease()),
		chainfire.OpPut(PrefixRefresh+hashRefresh(tok), mustJSON(next), chainfire.WithLease(lease)),
		chainfire.OpPut(PrefixFamilies+rec.Family, mustJSON(fam), chainfire.WithLease(lease)),
	).Commit()
	if err != nil {
		return rec.Principal, nil, unavailable("rotate refresh token", err)
	}
	if !resp.Succeeded {
		_, _ = s.cfg.Client.Revoke(context.WithoutCancel(ctx), lease)
		return rec.Principal, nil, errConflict
	}
	is.refresh = tok
	return rec.Principal, is, nil
}

// revokeFamily marks a family revoked (keeping its lease), so every token of it is refused.
func (s *Service) revokeFamily(ctx context.Context, family, reason string) error {
	key := PrefixFamilies + family
	for range 5 {
		resp, err := s.cfg.Client.Get(ctx, key)
		if err != nil {
			return unavailable("read refresh family", err)
		}
		if len(resp.Kvs) == 0 {
			return nil // expired: nothing left to revoke
		}
		var fam familyRecord
		if err := json.Unmarshal(resp.Kvs[0].Value, &fam); err != nil {
			return fmt.Errorf("%w: corrupt refresh family", ErrInvalidGrant)
		}
		if fam.Revoked {
			return nil
		}
		fam.Revoked, fam.Reason = true, reason
		tr, err := s.cfg.Client.Txn(ctx).If(chainfire.Compare(chainfire.ModRevision(key), "=", resp.Kvs[0].ModRevision)).
			Then(chainfire.OpPut(key, mustJSON(fam), chainfire.WithIgnoreLease())).Commit()
		if err != nil {
			return unavailable("revoke refresh family", err)
		}
		if tr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: refresh family contended", ErrUnavailable)
}
