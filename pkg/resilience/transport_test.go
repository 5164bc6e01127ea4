package resilience

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
)

// newH2CServer starts an httptest server that accepts cleartext HTTP/2 only
// and reports the protocol each request used.
func newH2CServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func protoHandler(w http.ResponseWriter, r *http.Request) {
	fmt.Fprint(w, r.Proto)
}

func get(ctx context.Context, c *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusServiceUnavailable {
		return "", connect.NewError(connect.CodeUnavailable, errors.New(string(b)))
	}
	return string(b), err
}

func TestNewHTTPClientSpeaksHTTP2(t *testing.T) {
	t.Parallel()
	t.Run("h2c", func(t *testing.T) {
		t.Parallel()
		srv := newH2CServer(t, protoHandler)
		got, err := get(context.Background(), NewHTTPClient(TransportOptions{}), srv.URL)
		if err != nil || got != "HTTP/2.0" {
			t.Fatalf("got %q, %v; want HTTP/2.0", got, err)
		}
	})
	t.Run("tls", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewUnstartedServer(http.HandlerFunc(protoHandler))
		srv.EnableHTTP2 = true
		srv.StartTLS()
		t.Cleanup(srv.Close)
		tlsConf := srv.Client().Transport.(*http.Transport).TLSClientConfig
		got, err := get(context.Background(), NewHTTPClient(TransportOptions{TLS: tlsConf}), srv.URL)
		if err != nil || got != "HTTP/2.0" {
			t.Fatalf("got %q, %v; want HTTP/2.0", got, err)
		}
	})
}

func TestPingDetectsSilentPeer(t *testing.T) {
	t.Parallel()
	// A peer that accepts connections and then never says a word, like a
	// SIGSTOPped process: without pings the request would hang forever.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	c := NewHTTPClient(TransportOptions{PingInterval: 100 * time.Millisecond, PingTimeout: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err = get(ctx, c, "http://"+ln.Addr().String())
	if err == nil {
		t.Fatal("request to a silent peer succeeded")
	}
	if ctx.Err() != nil {
		t.Fatalf("request hung until the test deadline (%s): %v", time.Since(start), err)
	}
}

func TestPoolSharesClientPerTarget(t *testing.T) {
	t.Parallel()
	p := NewPool(TransportOptions{})
	defer p.Close()
	a := p.Client("http://127.0.0.1:2379")
	if b := p.Client("http://127.0.0.1:2379/"); a != b {
		t.Error("same target, different clients")
	}
	if b := p.Client("HTTP://127.0.0.1:2379/x"); a != b {
		t.Error("same target with path and upper-case scheme, different clients")
	}
	if b := p.Client("http://127.0.0.1:2380"); a == b {
		t.Error("different targets share a client")
	}
}

func TestPoolReusesConnection(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	remotes := map[string]bool{}
	srv := newH2CServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		remotes[r.RemoteAddr] = true
		mu.Unlock()
	})
	p := NewPool(TransportOptions{})
	defer p.Close()
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := get(context.Background(), p.Client(srv.URL), srv.URL); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(remotes) != 1 {
		t.Fatalf("20 concurrent requests used %d connections, want 1", len(remotes))
	}
}

func TestNormalizeURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
		bad      bool
	}{
		{in: "127.0.0.1:2379", want: "http://127.0.0.1:2379"},
		{in: " http://a:1/ ", want: "http://a:1"},
		{in: "https://a:1", want: "https://a:1"},
		{in: "", bad: true},
		{in: "unix:///tmp/x", bad: true},
		{in: "http://", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := NormalizeURL(tt.in)
			if tt.bad {
				if !errors.Is(err, ErrBadEndpoint) {
					t.Fatalf("NormalizeURL(%q) = %q, %v; want ErrBadEndpoint", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("NormalizeURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

// wrapUnavailable turns a plain HTTP transport error into the Unavailable a
// connect client would report.
func wrapUnavailable(err error) error {
	if connect.CodeOf(err) == connect.CodeUnavailable {
		return err
	}
	return connect.NewError(connect.CodeUnavailable, err)
}
