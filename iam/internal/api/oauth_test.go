package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"plasmacloud.dev/iam/internal/token"
)

func tokenRequest(method, ctype, body, authz string) *http.Request {
	r := httptest.NewRequest(method, "/oauth2/token", strings.NewReader(body))
	if ctype != "" {
		r.Header.Set("Content-Type", ctype)
	}
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	return r
}

func basic(id, secret string) string {
	r := httptest.NewRequest("POST", "/", nil)
	r.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	return r.Header.Get("Authorization")
}

func TestParseTokenRequest(t *testing.T) {
	const form = "application/x-www-form-urlencoded"
	for _, tc := range []struct {
		name                    string
		method, ctype, body, au string
		want                    error
		clientID, secret        string
	}{
		{name: "password", method: "POST", ctype: form, body: "grant_type=password&username=a&password=b"},
		{name: "charset param", method: "POST", ctype: form + "; charset=utf-8", body: "grant_type=password"},
		{name: "basic", method: "POST", ctype: form, body: "grant_type=client_credentials", au: basic("robot", "s3:cr/t"), clientID: "robot", secret: "s3:cr/t"},
		{name: "form client", method: "POST", ctype: form, body: "grant_type=client_credentials&client_id=robot&client_secret=x", clientID: "robot", secret: "x"},
		{name: "GET", method: "GET", ctype: form, want: token.ErrInvalidRequest},
		{name: "json body", method: "POST", ctype: "application/json", body: "{}", want: token.ErrInvalidRequest},
		{name: "repeated param", method: "POST", ctype: form, body: "grant_type=password&grant_type=password", want: token.ErrInvalidRequest},
		{name: "two auth methods", method: "POST", ctype: form, body: "client_secret=x", au: basic("robot", "y"), want: token.ErrInvalidRequest},
		{name: "basic id mismatch", method: "POST", ctype: form, body: "client_id=other", au: basic("robot", "y"), want: token.ErrInvalidClient},
		{name: "bearer not basic", method: "POST", ctype: form, body: "", au: "Bearer abc", want: token.ErrInvalidClient},
		{name: "malformed form", method: "POST", ctype: form, body: "a=%zz", want: token.ErrInvalidRequest},
		{name: "too large", method: "POST", ctype: form, body: "x=" + strings.Repeat("a", maxFormBytes+10), want: token.ErrInvalidRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseTokenRequest(tokenRequest(tc.method, tc.ctype, tc.body, tc.au))
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("err %v, want %v", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if req.ClientId != tc.clientID || req.ClientSecret != tc.secret {
				t.Fatalf("client %q/%q, want %q/%q", req.ClientId, req.ClientSecret, tc.clientID, tc.secret)
			}
		})
	}
}

func TestOAuthErrorShapes(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		code   string
	}{
		{token.ErrInvalidGrant, 400, "invalid_grant"},
		{token.ErrInvalidClient, 401, "invalid_client"},
		{token.ErrUnsupportedGrant, 400, "unsupported_grant_type"},
		{token.ErrInvalidScope, 400, "invalid_scope"},
		{token.ErrInvalidRequest, 400, "invalid_request"},
		{token.ErrUnavailable, 503, "temporarily_unavailable"},
		{errors.New("boom"), 500, "server_error"},
	} {
		t.Run(tc.code, func(t *testing.T) {
			w := httptest.NewRecorder()
			writeOAuthError(w, httptest.NewRequest("POST", "/oauth2/token", nil), tc.err)
			if w.Code != tc.status || !strings.Contains(w.Body.String(), `"error":"`+tc.code+`"`) || w.Header().Get("Cache-Control") != "no-store" {
				t.Fatalf("%d %s %v", w.Code, w.Body, w.Header())
			}
		})
	}
}

// FuzzParseTokenRequest feeds arbitrary bodies and Authorization headers to the
// /oauth2/token parser: it must never panic, and what it accepts round-trips.
func FuzzParseTokenRequest(f *testing.F) {
	f.Add("grant_type=password&username=a&password=b", "")
	f.Add("grant_type=client_credentials", "Basic cm9ib3Q6c2VjcmV0")
	f.Add("grant_type=refresh_token&refresh_token=x&audience=a+b", "Basic Og==")
	f.Add("a=%zz&&==", "Basic !!!")
	f.Fuzz(func(t *testing.T, body, authz string) {
		req, err := ParseTokenRequest(tokenRequest("POST", "application/x-www-form-urlencoded", body, authz))
		if err != nil {
			if !errors.Is(err, token.ErrInvalidRequest) && !errors.Is(err, token.ErrInvalidClient) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if authz != "" && req.ClientId == "" {
			t.Fatal("HTTP Basic accepted without a client id")
		}
	})
}
