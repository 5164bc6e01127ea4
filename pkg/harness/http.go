package harness

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Polling bounds of WaitHTTP: the first retry comes quickly so a fast server is seen
// fast, later ones back off so that a slow start does not flood its log.
const (
	pollMin     = 20 * time.Millisecond
	pollMax     = 500 * time.Millisecond
	probeTimout = 2 * time.Second
)

// WaitHTTP polls url with GET until it answers wantStatus, and returns nil then. It
// returns an error naming the last status or transport error when ctx ends first.
//
// Each probe uses a fresh connection with a short timeout, so a server that is paused
// (SIGSTOP) or killed mid-probe cannot hang the wait beyond ctx.
func WaitHTTP(ctx context.Context, url string, wantStatus int) error {
	return waitHTTP(ctx, url, wantStatus, nil)
}

// waitHTTP is WaitHTTP with an optional early-exit check: when gone returns a non-nil
// error the wait ends with it (used to stop waiting for a process that has exited).
func waitHTTP(ctx context.Context, url string, wantStatus int, gone func() error) error {
	client := &http.Client{
		Timeout:   probeTimout,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
	defer client.CloseIdleConnections()

	var last string
	delay := pollMin
	for {
		status, err := probe(ctx, client, url)
		switch {
		case err == nil && status == wantStatus:
			return nil
		case err != nil:
			last = err.Error()
		default:
			last = fmt.Sprintf("status %d", status)
		}
		if gone != nil {
			if err := gone(); err != nil {
				return fmt.Errorf("harness: waiting for %s to answer %d: %w (last: %s)", url, wantStatus, err, last)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("harness: %s did not answer %d: %w (last: %s)", url, wantStatus, ctx.Err(), last)
		case <-time.After(delay):
		}
		delay = min(delay*2, pollMax)
	}
}

// probe performs one GET and returns its status code, draining the body.
func probe(ctx context.Context, client *http.Client, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}
