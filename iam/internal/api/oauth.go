package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"plasmacloud.dev/iam/internal/token"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// maxFormBytes bounds the body of the OAuth endpoints.
const maxFormBytes = 64 << 10

// errForm marks a request the OAuth endpoints cannot parse.
var errForm = token.ErrInvalidRequest

// ParseTokenRequest reads an RFC 6749 token request: a POST with an
// application/x-www-form-urlencoded body, the client authenticated by HTTP Basic
// (client_id and secret form-urlencoded, §2.3.1) or by client_id/client_secret in the
// body, never both. Parameters may not repeat (§3.2). "audience" may list several
// audiences separated by spaces. Errors wrap token.ErrInvalidRequest or
// token.ErrInvalidClient.
func ParseTokenRequest(r *http.Request) (*iamv1.TokenRequest, error) {
	form, err := parseForm(r)
	if err != nil {
		return nil, err
	}
	req := &iamv1.TokenRequest{
		GrantType:    form.Get("grant_type"),
		Username:     form.Get("username"),
		Password:     form.Get("password"),
		ClientId:     form.Get("client_id"),
		ClientSecret: form.Get("client_secret"),
		RefreshToken: form.Get("refresh_token"),
		Project:      form.Get("project"),
	}
	if a := strings.Fields(form.Get("audience")); len(a) > 0 {
		req.Audience = a
	}
	if h := r.Header.Get("Authorization"); h != "" {
		id, secret, err := parseBasic(h)
		if err != nil {
			return nil, err
		}
		if req.ClientSecret != "" {
			return nil, fmt.Errorf("%w: client authenticated both by HTTP Basic and in the body", token.ErrInvalidRequest)
		}
		if req.ClientId != "" && req.ClientId != id {
			return nil, fmt.Errorf("%w: client_id differs from the HTTP Basic user", token.ErrInvalidClient)
		}
		req.ClientId, req.ClientSecret = id, secret
	}
	return req, nil
}

// parseForm checks method and content type and parses the body, refusing repeated
// parameters.
func parseForm(r *http.Request) (url.Values, error) {
	if r.Method != http.MethodPost {
		return nil, fmt.Errorf("%w: method %s: use POST", errForm, r.Method)
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, fmt.Errorf("%w: Content-Type must be application/x-www-form-urlencoded", errForm)
	}
	if r.Body == nil {
		return nil, fmt.Errorf("%w: empty body", errForm)
	}
	body := make([]byte, 0, 512)
	buf := make([]byte, 4096)
	for {
		n, rerr := r.Body.Read(buf)
		body = append(body, buf[:n]...)
		if len(body) > maxFormBytes {
			return nil, fmt.Errorf("%w: body larger than %d bytes", errForm, maxFormBytes)
		}
		if rerr != nil {
			break
		}
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, fmt.Errorf("%w: malformed form body", errForm)
	}
	for k, v := range form {
		if len(v) > 1 {
			return nil, fmt.Errorf("%w: parameter %q repeated", errForm, k)
		}
	}
	return form, nil
}

// parseBasic decodes an HTTP Basic Authorization header whose user and password are
// form-urlencoded (RFC 6749 §2.3.1).
func parseBasic(h string) (id, secret string, err error) {
	r := http.Request{Header: http.Header{"Authorization": {h}}}
	u, p, ok := r.BasicAuth()
	if !ok {
		return "", "", fmt.Errorf("%w: Authorization header is not HTTP Basic", token.ErrInvalidClient)
	}
	if id, err = url.QueryUnescape(u); err != nil {
		return "", "", fmt.Errorf("%w: malformed client id in HTTP Basic", token.ErrInvalidClient)
	}
	if secret, err = url.QueryUnescape(p); err != nil {
		return "", "", fmt.Errorf("%w: malformed client secret in HTTP Basic", token.ErrInvalidClient)
	}
	if id == "" {
		return "", "", fmt.Errorf("%w: empty client id in HTTP Basic", token.ErrInvalidClient)
	}
	return id, secret, nil
}

// tokenJSON is the RFC 6749 §5.1 success body.
type tokenJSON struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Project      string `json:"project,omitempty"`
}

// ServeToken serves POST /oauth2/token.
func (t *Tokens) ServeToken(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	req, err := ParseTokenRequest(r)
	if err != nil {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
		}
		writeOAuthError(w, r, err)
		return
	}
	resp, err := t.svc.Token(r.Context(), req, peerHost(r.RemoteAddr))
	if err != nil {
		writeOAuthError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, tokenJSON{AccessToken: resp.AccessToken, TokenType: resp.TokenType,
		ExpiresIn: resp.ExpiresIn, RefreshToken: resp.RefreshToken, Project: resp.Project})
}

// ServeRevoke serves POST /oauth2/revoke (RFC 7009): parameter token, optional
// token_type_hint (refresh_token or access_token; without it a JWT is taken for an access
// token). Unknown tokens are "revoked" successfully (200, empty body).
func (t *Tokens) ServeRevoke(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	form, err := parseForm(r)
	if err != nil {
		writeOAuthError(w, r, err)
		return
	}
	tok := form.Get("token")
	if tok == "" {
		writeOAuthError(w, r, fmt.Errorf("%w: token is required", token.ErrInvalidRequest))
		return
	}
	msg := &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_RefreshToken{RefreshToken: tok}}
	hint := form.Get("token_type_hint")
	if hint == "access_token" || (hint == "" && strings.Count(tok, ".") == 2) {
		msg.Target = &iamv1.RevokeRequest_AccessToken{AccessToken: tok}
	} else if hint != "" && hint != "refresh_token" {
		writeOAuthError(w, r, &oauthError{Code: "unsupported_token_type", Description: "token_type_hint " + strconv.Quote(hint), status: http.StatusBadRequest})
		return
	}
	if err := t.revoke(r.Context(), msg, peerHost(r.RemoteAddr)); err != nil {
		writeOAuthError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
}

// writeOAuthError writes an RFC 6749 §5.2 error body with its status.
func writeOAuthError(w http.ResponseWriter, r *http.Request, err error) {
	var oe *oauthError
	if !errors.As(err, &oe) {
		oe = toOAuth(err)
	}
	if oe.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="iam"`)
	}
	if r.Method != http.MethodPost && oe.Code == "invalid_request" && strings.Contains(oe.Description, "use POST") {
		oe.status = http.StatusMethodNotAllowed
	}
	if oe.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((oe.retryAfter+time.Second-1)/time.Second)))
	}
	writeJSON(w, oe.status, oe)
}

func (e *oauthError) Error() string { return e.Code + ": " + e.Description }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json;charset=UTF-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
