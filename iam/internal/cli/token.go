package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/cliout"
	"plasmacloud.dev/pkg/iamclient"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// maxTokenBytes bounds a token read for inspection.
const maxTokenBytes = 16 << 10

// allowedAlgs are the JWS algorithms IAM signs with; --verify accepts no other.
var allowedAlgs = []string{"EdDSA", "ES256"}

// decodeJWT decodes a compact JWS's header and claims without verifying anything.
func decodeJWT(raw string) (header, claims map[string]any, err error) {
	raw = strings.TrimSpace(raw)
	if len(raw) > maxTokenBytes {
		return nil, nil, fmt.Errorf("token is %d bytes, more than %d", len(raw), maxTokenBytes)
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, nil, fmt.Errorf("not a JWT: %d dot-separated parts, want 3", len(parts))
	}
	decode := func(what, s string) (map[string]any, error) {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("JWT %s: %w", what, err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("JWT %s: %w", what, err)
		}
		return m, nil
	}
	if header, err = decode("header", parts[0]); err != nil {
		return nil, nil, err
	}
	if claims, err = decode("claims", parts[1]); err != nil {
		return nil, nil, err
	}
	return header, claims, nil
}

// tokenCommand is `iam token inspect|revoke`.
func tokenCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "token",
		Short: "Inspect and revoke tokens",
	})
	cmd.AddCommand(tokenInspectCommand(g), tokenRevokeCommand(g))
	return cmd
}

// tokenInspectCommand is `iam token inspect [TOKEN|-]`.
func tokenInspectCommand(g *globals) *cobra.Command {
	var verify bool
	var issuer, audience string
	cmd := &cobra.Command{
		Use:   "inspect [TOKEN|-]",
		Short: "Decode an access token's header and claims (--verify: check it against IAM's JWKS)",
		Long: "Inspect decodes TOKEN (\"-\": read from standard input; omitted: the saved token) and\n" +
			"prints its header and claims. Nothing is verified unless --verify is given: then the\n" +
			"signature is checked against the keys the endpoints publish at /.well-known/jwks.json\n" +
			"(EdDSA or ES256 only), and exp/nbf (30 s of skew), typ at+jwt, and --issuer/--audience\n" +
			"when given. --verify does not know about revocations.",
		Args: cobra.MaximumNArgs(1),
	}
	cmd.Flags().BoolVar(&verify, "verify", false, "verify the signature and time claims against the endpoints' JWKS")
	cmd.Flags().StringVar(&issuer, "issuer", "", "with --verify: require this iss")
	cmd.Flags().StringVar(&audience, "audience", "", "with --verify: require this audience")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := g.validate(); err != nil {
			return err
		}
		if !verify && (issuer != "" || audience != "") {
			return errors.New("--issuer and --audience need --verify")
		}
		ctx, cancel := g.bound(cmd)
		defer cancel()
		raw, err := tokenArg(ctx, cmd, g, args)
		if err != nil {
			return err
		}
		header, claims, err := decodeJWT(raw)
		if err != nil {
			return err
		}
		out := map[string]any{"header": header, "claims": claims}
		var verr error
		if verify {
			verr = verifyToken(ctx, g, raw, issuer, audience)
			out["verified"] = verr == nil
			if verr != nil {
				out["error"] = verr.Error()
			}
		}
		if err := g.printer(cmd).Value(out, func(w io.Writer) { printToken(w, header, claims, verify, verr) }); err != nil {
			return err
		}
		if verr != nil {
			return fmt.Errorf("token does not verify: %w", verr)
		}
		return nil
	}
	return cmd
}

// tokenArg returns the token named by args: the argument, standard input for "-", or the
// saved access token.
func tokenArg(ctx context.Context, cmd *cobra.Command, g *globals, args []string) (string, error) {
	if len(args) == 1 && args[0] != "-" {
		return args[0], nil
	}
	if len(args) == 1 {
		b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxTokenBytes+1))
		if err != nil {
			return "", fmt.Errorf("read token from standard input: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	c, err := g.baseClient()
	if err != nil {
		return "", err
	}
	defer c.Close()
	tok, err := g.accessToken(ctx, c)
	if err != nil {
		return "", err
	}
	if tok == "" {
		return "", fmt.Errorf("no token given and none saved (%s); log in with `iam login` or pass TOKEN", g.tokenFile)
	}
	return tok, nil
}

// printToken prints a decoded token for people.
func printToken(w io.Writer, header, claims map[string]any, verify bool, verr error) {
	var kv []string
	for _, k := range []string{"alg", "typ", "kid"} {
		kv = append(kv, "header."+k, fmt.Sprint(orNil(header[k])))
	}
	for k, v := range header {
		if k != "alg" && k != "typ" && k != "kid" {
			kv = append(kv, "header."+k, fmt.Sprint(v))
		}
	}
	keys := make([]string, 0, len(claims))
	for k := range claims {
		keys = append(keys, k)
	}
	order := []string{"iss", "sub", "aud", "project", "client_id", "jti", "iat", "nbf", "exp"}
	slices.SortFunc(keys, func(a, b string) int {
		ia, ib := slices.Index(order, a), slices.Index(order, b)
		if ia < 0 {
			ia = len(order)
		}
		if ib < 0 {
			ib = len(order)
		}
		if ia != ib {
			return ia - ib
		}
		return strings.Compare(a, b)
	})
	for _, k := range keys {
		v := claims[k]
		s := fmt.Sprint(v)
		if f, ok := v.(float64); ok && (k == "exp" || k == "iat" || k == "nbf") {
			t := time.Unix(int64(f), 0)
			s = fmt.Sprintf("%s (%s)", t.UTC().Format(time.RFC3339), relTime(t))
		}
		if a, ok := v.([]any); ok {
			parts := make([]string, len(a))
			for i, x := range a {
				parts[i] = fmt.Sprint(x)
			}
			s = strings.Join(parts, ",")
		}
		kv = append(kv, k, s)
	}
	switch {
	case !verify:
		kv = append(kv, "verified", "no (decoded only; use --verify)")
	case verr == nil:
		kv = append(kv, "verified", "yes (signature, exp/nbf, typ)")
	default:
		kv = append(kv, "verified", "NO: "+verr.Error())
	}
	cliout.Fields(w, kv...)
}

func orNil(v any) any {
	if v == nil {
		return "-"
	}
	return v
}

// relTime says how far t is from now ("in 9m0s", "3m0s ago").
func relTime(t time.Time) string {
	d := time.Until(t).Round(time.Second)
	if d >= 0 {
		return "in " + d.String()
	}
	return (-d).String() + " ago"
}

// verifyToken verifies raw's signature against the endpoints' JWKS and its time and type
// claims. The JWKS is fetched from the endpoints in order until one answers.
func verifyToken(ctx context.Context, g *globals, raw, issuer, audience string) error {
	c, err := g.baseClient()
	if err != nil {
		return err
	}
	defer c.Close()
	set, err := fetchJWKS(ctx, c)
	if err != nil {
		return err
	}
	msg, err := jws.Parse([]byte(raw))
	if err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	if len(msg.Signatures()) != 1 {
		return errors.New("want exactly one signature")
	}
	h := msg.Signatures()[0].ProtectedHeaders()
	alg, _ := h.Algorithm()
	if !slices.Contains(allowedAlgs, alg.String()) {
		return fmt.Errorf("algorithm %q not allowed (want one of %v)", alg.String(), allowedAlgs)
	}
	if typ, _ := h.Type(); typ != "at+jwt" {
		return fmt.Errorf("typ %q, want at+jwt", typ)
	}
	opts := []jwt.ParseOption{
		jwt.WithKeySet(set, jws.WithInferAlgorithmFromKey(true)),
		jwt.WithValidate(true),
		jwt.WithAcceptableSkew(30 * time.Second),
	}
	if issuer != "" {
		opts = append(opts, jwt.WithIssuer(issuer))
	}
	if audience != "" {
		opts = append(opts, jwt.WithAudience(audience))
	}
	if _, err := jwt.Parse([]byte(raw), opts...); err != nil {
		return err
	}
	return nil
}

// fetchJWKS reads /.well-known/jwks.json from the first endpoint that serves it.
func fetchJWKS(ctx context.Context, c *iamclient.Client) (jwk.Set, error) {
	var errs []error
	for _, ep := range c.Endpoints() {
		url := ep + "/.well-known/jwks.json"
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := c.HTTPClient(ep).Do(req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			errs = append(errs, fmt.Errorf("GET %s: status %d %v", url, resp.StatusCode, err))
			continue
		}
		set, err := jwk.Parse(body)
		if err != nil {
			errs = append(errs, fmt.Errorf("GET %s: %w", url, err))
			continue
		}
		return set, nil
	}
	return nil, fmt.Errorf("fetch JWKS: %w", errors.Join(errs...))
}

// tokenRevokeCommand is `iam token revoke ...`.
func tokenRevokeCommand(g *globals) *cobra.Command {
	var (
		refresh, jti, access, principal, project, before string
		all                                              bool
	)
	cmd := &cobra.Command{
		Use:   "revoke (--refresh-token T | --jti J | --access-token T | --principal P | --project P | --all) [--before TIME]",
		Short: "Revoke a refresh token, an access token, or everything issued before a time",
		Long: "Revoke exactly one target:\n" +
			"  --refresh-token T   a refresh token and its whole family (\"-\": standard input);\n" +
			"                      revoking one's own needs no permission\n" +
			"  --access-token T    an access token (\"-\": standard input; its signature must verify)\n" +
			"  --jti J             an access token by its jti\n" +
			"  --principal P       every token of user:NAME or serviceaccount:NAME issued before --before\n" +
			"  --project P         every token scoped to project P issued before --before\n" +
			"  --all               every token of everyone issued before --before\n" +
			"--before (RFC 3339, default now) applies to the last three (watermarks). Verifiers learn\n" +
			"of a revocation within about a second.",
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	fs.StringVar(&refresh, "refresh-token", "", "revoke this refresh token and its family")
	fs.StringVar(&access, "access-token", "", "revoke this access token")
	fs.StringVar(&jti, "jti", "", "revoke the access token with this jti")
	fs.StringVar(&principal, "principal", "", "revoke every token of this principal issued before --before")
	fs.StringVar(&project, "project", "", "revoke every token scoped to this project issued before --before")
	fs.BoolVar(&all, "all", false, "revoke every token issued before --before")
	fs.StringVar(&before, "before", "", "with --principal/--project/--all: revoke tokens issued before this RFC 3339 time (default now)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		n := 0
		for _, set := range []bool{refresh != "", access != "", jti != "", principal != "", project != "", all} {
			if set {
				n++
			}
		}
		if n != 1 {
			return errors.New("give exactly one of --refresh-token, --access-token, --jti, --principal, --project, --all")
		}
		var notBefore *timestamppb.Timestamp
		if before != "" {
			if refresh != "" || access != "" || jti != "" {
				return errors.New("--before goes with --principal, --project or --all")
			}
			t, err := time.Parse(time.RFC3339, before)
			if err != nil {
				return fmt.Errorf("--before %q: want an RFC 3339 time such as 2025-01-02T15:04:05Z", before)
			}
			notBefore = timestamppb.New(t)
		}
		if principal != "" {
			if err := checkPrincipal(principal); err != nil {
				return err
			}
		}
		if project != "" {
			if err := checkName("project", project); err != nil {
				return err
			}
		}
		stdin := func(v string) (string, error) {
			if v != "-" {
				return v, nil
			}
			b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxTokenBytes+1))
			if err != nil {
				return "", err
			}
			return strings.TrimSpace(string(b)), nil
		}
		return clientCommand(g, nil, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, _ []string) error {
			req := &iamv1.RevokeRequest{}
			what := ""
			switch {
			case refresh != "":
				t, err := stdin(refresh)
				if err != nil {
					return err
				}
				req.Target, what = &iamv1.RevokeRequest_RefreshToken{RefreshToken: t}, "refresh token family"
			case access != "":
				t, err := stdin(access)
				if err != nil {
					return err
				}
				req.Target, what = &iamv1.RevokeRequest_AccessToken{AccessToken: t}, "access token"
			case jti != "":
				req.Target, what = &iamv1.RevokeRequest_Jti{Jti: jti}, "access token "+jti
			case principal != "":
				req.Target = &iamv1.RevokeRequest_Watermark{Watermark: &iamv1.Watermark{
					Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, Name: principal, NotBefore: notBefore}}
				what = "every token of " + principal
			case project != "":
				req.Target = &iamv1.RevokeRequest_Watermark{Watermark: &iamv1.Watermark{
					Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_PROJECT, Name: project, NotBefore: notBefore}}
				what = "every token scoped to project " + project
			default:
				req.Target = &iamv1.RevokeRequest_Watermark{Watermark: &iamv1.Watermark{
					Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL, NotBefore: notBefore}}
				what = "every token"
			}
			if _, err := c.Revoke(ctx, req); err != nil {
				return err
			}
			when := "now"
			if notBefore != nil {
				when = notBefore.AsTime().UTC().Format(time.RFC3339)
			}
			return p.Value(map[string]any{"revoked": what, "before": when}, func(w io.Writer) {
				if req.GetWatermark() != nil {
					fmt.Fprintf(w, "Revoked %s issued before %s\n", what, when)
					return
				}
				fmt.Fprintf(w, "Revoked %s\n", what)
			})
		})(cmd, nil)
	}
	return cmd
}

var keyHeader = []string{"KID", "ALG", "STATE", "CREATED", "ACTIVATED", "RETIRED", "REMOVED AT"}

func keyRow(k *iamv1.SigningKey) []string {
	state := strings.ToLower(strings.TrimPrefix(k.GetState().String(), "KEY_STATE_"))
	return []string{k.GetKid(), k.GetAlg(), state, ts(k.GetCreateTime()), ts(k.GetActivateTime()), ts(k.GetRetireTime()), ts(k.GetRemoveTime())}
}

// keysCommand is `iam keys list|rotate`.
func keysCommand() *cobra.Command {
	cmd, g := topLevel(&cobra.Command{
		Use:   "keys",
		Short: "List and rotate IAM's signing keys",
	})
	list := &cobra.Command{Use: "list", Short: "List signing keys and their lifecycle", Args: cobra.NoArgs}
	list.RunE = clientCommand(g, nil, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, _ []string) error {
		resp, err := c.ListKeys(ctx, &iamv1.ListKeysRequest{})
		if err != nil {
			return err
		}
		return cliout.Messages(p, resp.GetKeys(), keyHeader, keyRow)
	})
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Create a new signing key (pending: published first, active once verifiers can have it)",
		Args:  cobra.NoArgs,
	}
	rotate.RunE = clientCommand(g, nil, func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, _ []string) error {
		resp, err := c.RotateKey(ctx, &iamv1.RotateKeyRequest{})
		if err != nil {
			return err
		}
		return cliout.Messages(p, []*iamv1.SigningKey{resp.GetKey()}, keyHeader, keyRow)
	})
	cmd.AddCommand(list, rotate)
	return cmd
}
