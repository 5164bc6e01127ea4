package resilience

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"
)

func TestEndpointsRotation(t *testing.T) {
	t.Parallel()
	e, err := NewEndpoints([]string{"a:1", "http://b:2", "a:1", "https://c:3/"})
	if err != nil {
		t.Fatal(err)
	}
	if e.Len() != 3 {
		t.Fatalf("Len = %d, want 3 (duplicate dropped): %v", e.Len(), e.All())
	}
	steps := []struct {
		failed, want string
	}{
		{"http://a:1", "http://b:2"},
		{"http://a:1", "http://b:2"}, // stale report: no change
		{"http://nowhere:9", "http://b:2"},
		{"http://b:2", "https://c:3"},
		{"https://c:3", "http://a:1"}, // wraps around
	}
	for _, s := range steps {
		if got := e.Failed(s.failed); got != s.want || e.Pick() != s.want {
			t.Fatalf("Failed(%s) -> %s, Pick %s; want %s", s.failed, got, e.Pick(), s.want)
		}
	}
	if _, err := NewEndpoints(nil); !errors.Is(err, ErrBadEndpoint) {
		t.Fatalf("NewEndpoints(nil) err = %v", err)
	}
	if _, err := NewEndpoints([]string{"ftp://x"}); !errors.Is(err, ErrBadEndpoint) {
		t.Fatalf("NewEndpoints(ftp) err = %v", err)
	}
}

func TestEndpointsConcurrentFailuresRotateOnce(t *testing.T) {
	t.Parallel()
	e, _ := NewEndpoints([]string{"a:1", "b:1", "c:1"})
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.Failed("http://a:1")
			_ = e.Pick()
		}()
	}
	wg.Wait()
	if got := e.Pick(); got != "http://b:1" {
		t.Fatalf("after 50 concurrent failures of a, current = %s, want b", got)
	}
}

// TestRetryRotatesEndpoints runs the pattern the package documents: one
// endpoint refuses connections, one answers Unavailable, the third works.
func TestRetryRotatesEndpoints(t *testing.T) {
	t.Parallel()
	down := newH2CServer(t, protoHandler)
	downURL := down.URL
	down.Close() // connection refused from now on
	unavailable := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	})
	good := newH2CServer(t, protoHandler)

	e, err := NewEndpoints([]string{downURL, unavailable.URL, good.URL})
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(TransportOptions{DialTimeout: time.Second})
	defer pool.Close()
	p := fastPolicy()
	var mu sync.Mutex
	var tried []string
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got string
	err = Retry(ctx, p, func(ctx context.Context) error {
		url := e.Pick()
		mu.Lock()
		tried = append(tried, url)
		mu.Unlock()
		body, err := get(ctx, pool.Client(url), url)
		if err != nil {
			if !IsRetryable(err) && !IsTransportError(err) {
				return err
			}
			e.Failed(url)
			return wrapUnavailable(err)
		}
		got = body
		return nil
	})
	if err != nil {
		t.Fatalf("Retry: %v (tried %v)", err, tried)
	}
	if got != "HTTP/2.0" || len(tried) != 3 || tried[2] != good.URL {
		t.Fatalf("got %q after trying %v", got, tried)
	}
	if e.Pick() != good.URL {
		t.Fatalf("current endpoint = %s, want the good one to stick", e.Pick())
	}
}
