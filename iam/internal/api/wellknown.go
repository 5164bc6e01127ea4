package api

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/iam/internal/token"
)

// JWKSMaxAge is the Cache-Control max-age of /.well-known/jwks.json, in seconds: short,
// well under the key publish delay, so verifiers see a new key long before it signs.
const JWKSMaxAge = 30

// WellKnown serves /.well-known/jwks.json and /.well-known/openid-configuration.
type WellKnown struct {
	keys      *keys.Manager
	issuer    string
	publicURL string
}

// NewWellKnown returns the discovery handlers. publicURL is the base URL clients reach
// this IAM at (for jwks_uri and token_endpoint); empty derives it from each request.
func NewWellKnown(m *keys.Manager, issuer, publicURL string) *WellKnown {
	return &WellKnown{keys: m, issuer: issuer, publicURL: strings.TrimSuffix(publicURL, "/")}
}

// ServeJWKS serves the JSON Web Key Set of the published keys.
func (k *WellKnown) ServeJWKS(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age="+strconv.Itoa(JWKSMaxAge))
	_, _ = w.Write(k.keys.JWKS())
}

// ServeDiscovery serves the OpenID Provider metadata (OpenID Connect Discovery 1.0 /
// RFC 8414) of the token service.
func (k *WellKnown) ServeDiscovery(w http.ResponseWriter, r *http.Request) {
	base := k.publicURL
	if base == "" {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		base = scheme + "://" + r.Host
	}
	doc := map[string]any{
		"issuer":                                    k.issuer,
		"jwks_uri":                                  base + "/.well-known/jwks.json",
		"token_endpoint":                            base + "/oauth2/token",
		"revocation_endpoint":                       base + "/oauth2/revoke",
		"grant_types_supported":                     []string{token.GrantPassword, token.GrantClientCredentials, token.GrantRefreshToken},
		"token_endpoint_auth_methods_supported":     []string{"client_secret_basic", "client_secret_post"},
		"response_types_supported":                  []string{"token"},
		"subject_types_supported":                   []string{"public"},
		"id_token_signing_alg_values_supported":     []string{keys.AlgEdDSA, keys.AlgES256},
		"access_token_signing_alg_values_supported": []string{keys.AlgEdDSA, keys.AlgES256},
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_ = json.NewEncoder(w).Encode(doc)
}

// Register mounts the well-known endpoints on mux.
func (k *WellKnown) Register(mux interface {
	Handle(string, http.Handler)
}) {
	mux.Handle("/.well-known/jwks.json", http.HandlerFunc(k.ServeJWKS))
	mux.Handle("/.well-known/openid-configuration", http.HandlerFunc(k.ServeDiscovery))
}
