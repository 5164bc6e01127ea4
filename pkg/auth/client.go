package auth

import (
	"context"
	"errors"
	"net/http"

	"connectrpc.com/connect"
)

// TokenSource returns the access token to present on an outgoing call. It is
// called for every call, so it must be cheap when the token is cached (as
// pkg/iamclient's sources are) and safe for concurrent use. ctx is the
// call's context.
type TokenSource func(ctx context.Context) (string, error)

// BearerInterceptor returns a client-side Connect interceptor that sets
// "Authorization: Bearer <token>" from src on every outgoing call, unary
// and streaming. A TokenSource error fails the call (Unauthenticated unless
// the error is already a *connect.Error). On the handler side it does
// nothing.
func BearerInterceptor(src TokenSource) connect.Interceptor {
	return bearerInterceptor{src}
}

type bearerInterceptor struct{ src TokenSource }

func (b bearerInterceptor) token(ctx context.Context) (string, error) {
	tok, err := b.src(ctx)
	if err != nil {
		if ce := new(connect.Error); errors.As(err, &ce) {
			return "", err
		}
		return "", connect.NewError(connect.CodeUnauthenticated, err)
	}
	return "Bearer " + tok, nil
}

func (b bearerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if !req.Spec().IsClient {
			return next(ctx, req)
		}
		h, err := b.token(ctx)
		if err != nil {
			return nil, err
		}
		req.Header().Set("Authorization", h)
		return next(ctx, req)
	}
}

func (b bearerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		h, err := b.token(ctx)
		if err != nil {
			return &failedConn{StreamingClientConn: conn, err: err}
		}
		conn.RequestHeader().Set("Authorization", h)
		return conn
	}
}

func (b bearerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// failedConn fails a streaming call whose token could not be obtained. It
// never touches the wrapped conn's request or response, so no HTTP request
// is ever started for it.
type failedConn struct {
	connect.StreamingClientConn
	err error
}

func (f *failedConn) Send(any) error       { return f.err }
func (f *failedConn) Receive(any) error    { return f.err }
func (f *failedConn) CloseRequest() error  { return nil }
func (f *failedConn) CloseResponse() error { return nil }

// BearerTransport returns an http.RoundTripper that sets
// "Authorization: Bearer <token>" from src on every request it sends through
// base (nil: http.DefaultTransport). The request is cloned, never modified.
func BearerTransport(base http.RoundTripper, src TokenSource) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return bearerTransport{base, src}
}

type bearerTransport struct {
	base http.RoundTripper
	src  TokenSource
}

func (t bearerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	tok, err := t.src(req.Context())
	if err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+tok)
	return t.base.RoundTrip(req)
}
