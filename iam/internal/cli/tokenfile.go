package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"plasmacloud.dev/pkg/iamclient"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// savedToken is what login writes to the token file (JSON, mode 0600). Other commands
// also accept a file holding a bare access token.
type savedToken struct {
	AccessToken  string    `json:"access_token"`
	TokenType    string    `json:"token_type,omitempty"`
	ExpiresAt    time.Time `json:"expires_at,omitzero"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	Project      string    `json:"project,omitempty"`
	Principal    string    `json:"principal,omitempty"`
}

// refreshBefore: a saved access token with less than this left is refreshed first.
const refreshBefore = 30 * time.Second

// readTokenFile reads a token file. A file that is not JSON is a bare access token.
func readTokenFile(path string) (*savedToken, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("token file %s is empty", path)
	}
	if b[0] != '{' {
		return &savedToken{AccessToken: string(b)}, nil
	}
	var t savedToken
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("token file %s: %w", path, err)
	}
	if t.AccessToken == "" && t.RefreshToken == "" {
		return nil, fmt.Errorf("token file %s holds no token", path)
	}
	return &t, nil
}

// writeTokenFile writes t to path with mode 0600 (its directory 0700), atomically: a
// reader sees the old file or the new one.
func writeTokenFile(path string, t *savedToken) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("token file directory: %w", err)
	}
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".token-*")
	if err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	defer os.Remove(f.Name()) // no-op once renamed
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	return nil
}

// savedFrom builds the file's content from a token response.
func savedFrom(resp *iamv1.TokenResponse, now time.Time) *savedToken {
	t := &savedToken{
		AccessToken:  resp.GetAccessToken(),
		TokenType:    resp.GetTokenType(),
		RefreshToken: resp.GetRefreshToken(),
		Project:      resp.GetProject(),
	}
	if resp.GetExpiresIn() > 0 {
		t.ExpiresAt = now.Add(time.Duration(resp.GetExpiresIn()) * time.Second).UTC().Truncate(time.Second)
	}
	if _, claims, err := decodeJWT(t.AccessToken); err == nil {
		if sub, ok := claims["sub"].(string); ok {
			t.Principal = sub
		}
	}
	return t
}

// accessToken returns the token to send: PLASMA_TOKEN (unless --token-file was given), or
// the token file's access token, refreshed first with its refresh token (and the file
// rewritten) when it has expired or is about to. "" means no token (no variable, no
// file): the call goes out without one and IAM's refusal is what the operator sees.
func (g *globals) accessToken(ctx context.Context, c *iamclient.Client) (string, error) {
	if env := strings.TrimSpace(os.Getenv(EnvToken)); env != "" && !g.tokenFileSet() {
		return env, nil
	}
	t, err := readTokenFile(g.tokenFile)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil // not logged in: calls go out without a token and IAM says so
	}
	if err != nil {
		return "", err
	}
	exp := t.ExpiresAt
	if exp.IsZero() {
		exp = jwtExpiry(t.AccessToken)
	}
	if t.AccessToken != "" && (exp.IsZero() || time.Until(exp) > refreshBefore) {
		return t.AccessToken, nil
	}
	if t.RefreshToken == "" {
		return t.AccessToken, nil // expired: IAM will say so
	}
	resp, err := c.Token(ctx, &iamv1.TokenRequest{
		GrantType:    iamclient.GrantRefreshToken,
		RefreshToken: t.RefreshToken,
		Project:      t.Project,
	})
	if err != nil {
		return "", fmt.Errorf("refreshing the saved token (log in again with `iam login`): %w", apiError(err))
	}
	if err := writeTokenFile(g.tokenFile, savedFrom(resp, time.Now())); err != nil {
		return "", err
	}
	return resp.GetAccessToken(), nil
}

// jwtExpiry returns a JWT's exp claim, or the zero time.
func jwtExpiry(raw string) time.Time {
	_, claims, err := decodeJWT(raw)
	if err != nil {
		return time.Time{}
	}
	if exp, ok := claims["exp"].(float64); ok {
		return time.Unix(int64(exp), 0)
	}
	return time.Time{}
}
