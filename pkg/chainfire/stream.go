package chainfire

import (
	"context"
	"errors"
	"io"

	"connectrpc.com/connect"
)

// bidiStream is what abortOnDone needs of a client bidi stream.
type bidiStream interface {
	CloseRequest() error
	CloseResponse() error
}

// abortOnDone makes the end of ctx abort a bidi stream opened with ctx,
// and returns the function that releases the stream: it calls cancel
// (which must cancel ctx) and closes the response. Defer it right after
// opening the stream.
//
// net/http's HTTP/2 client notices a cancelled request context only once
// the request body is closed; a full-duplex stream whose body is still open
// would keep Receive blocked after its context ended. Closing the request
// side when ctx ends (a pipe close, safe concurrently with Send) makes
// cancellation take effect.
func abortOnDone(ctx context.Context, cancel context.CancelFunc, st bidiStream) (release func()) {
	stop := context.AfterFunc(ctx, func() { _ = st.CloseRequest() })
	return func() {
		cancel()
		if stop() {
			_ = st.CloseRequest()
		}
		_ = st.CloseResponse()
	}
}

// streamErr turns a bare io.EOF from a stream (the server ended it without
// an error) into a retryable error.
func streamErr(err error) error {
	if errors.Is(err, io.EOF) {
		return connect.NewError(connect.CodeUnavailable, errors.New("stream closed by server"))
	}
	return err
}
