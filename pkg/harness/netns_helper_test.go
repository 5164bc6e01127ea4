package harness_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"plasmacloud.dev/pkg/harness"
)

// netHelperEnv switches TestNetnsHelperProcess into one of the helper programs of the
// network tests, run as `<test binary> -test.run=^TestNetnsHelperProcess$` with
// HARNESS_NETNS_HELPER="<mode> [arg]":
//
//	serve IP       the probe server below, on IP:8080 (HTTP) and IP:8081 (UDP)
//	fail           creates a 2-host network, prints its names, fails the test
//	panic          the same, then panics
//	hang           the same, then blocks until killed
const netHelperEnv = "HARNESS_NETNS_HELPER"

// Ports of the probe server.
const (
	probeHTTP = 8080
	probeUDP  = 8081
)

// TestNetnsHelperProcess is not a test: it is the body of the helper processes of the
// network tests (see netHelperEnv), and returns at once when run as a test.
func TestNetnsHelperProcess(t *testing.T) {
	mode, arg, _ := strings.Cut(os.Getenv(netHelperEnv), " ")
	switch mode {
	case "":
		return
	case "serve":
		os.Exit(probeServer(arg))
	case "fail", "panic", "hang":
		nw := harness.NewNetwork(t, 2)
		var names []string
		for _, h := range nw.Hosts() {
			names = append(names, h.Name)
		}
		fmt.Printf("NETWORK %s\n", strings.Join(names, " "))
		switch mode {
		case "fail":
			t.Fatal("failing on purpose")
		case "panic":
			panic("panicking on purpose")
		default:
			select {}
		}
	default:
		t.Fatalf("unknown helper mode %q", mode)
	}
}

// probeServer serves, on ip, the endpoints through which the tests observe the network
// from inside a host:
//
//	GET /ping              "pong"
//	GET /fetch?url=U       GETs U over a fresh connection (1 s timeout): 200, or 502 with the error
//	GET /send?to=A&msg=M   sends the UDP datagram M to A
//	GET /received          the UDP datagrams received so far, one per line
//	GET /stream            a line every 20 ms, forever, over one response
//	GET /follow?url=U      starts reading U's lines in the background; /count tells how many came
func probeServer(ip string) int {
	var (
		mu       sync.Mutex
		received []string
		lines    atomic.Int64
	)
	pc, err := net.ListenPacket("udp4", fmt.Sprintf("%s:%d", ip, probeUDP))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			received = append(received, string(buf[:n]))
			mu.Unlock()
		}
	}()
	fetch := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	stream := &http.Client{Transport: &http.Transport{Proxy: nil}}
	mux := http.NewServeMux()
	mux.HandleFunc("/ping", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "pong") })
	mux.HandleFunc("/fetch", func(w http.ResponseWriter, r *http.Request) {
		resp, err := fetch.Get(r.FormValue("url"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		_, _ = io.Copy(w, resp.Body)
	})
	mux.HandleFunc("/send", func(w http.ResponseWriter, r *http.Request) {
		c, err := net.Dial("udp4", r.FormValue("to"))
		if err == nil {
			_, err = c.Write([]byte(r.FormValue("msg")))
			_ = c.Close()
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("/received", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range received {
			fmt.Fprintln(w, m)
		}
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if _, err := fmt.Fprintln(w, "tick"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
		}
	})
	mux.HandleFunc("/follow", func(_ http.ResponseWriter, r *http.Request) {
		url := r.FormValue("url")
		go func() {
			resp, err := stream.Get(url)
			if err != nil {
				fmt.Fprintln(os.Stderr, "follow:", err)
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				lines.Add(1)
			}
			fmt.Fprintln(os.Stderr, "follow ended:", sc.Err())
		}()
	})
	mux.HandleFunc("/count", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, lines.Load()) })
	fmt.Println("serving on", ip)
	if err := http.ListenAndServe(fmt.Sprintf("%s:%d", ip, probeHTTP), mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startProbes starts a probe server in every host of nw and waits until the test
// process reaches each.
func startProbes(t *testing.T, nw *harness.Network) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := harness.NewCluster(t)
	for i, h := range nw.Hosts() {
		c.Add(harness.ProcessConfig{
			Name:     fmt.Sprintf("probe%d", i),
			Path:     exe,
			Args:     []string{"-test.run=^TestNetnsHelperProcess$"},
			Env:      []string{netHelperEnv + "=serve " + h.IP, "GORACE=atexit_sleep_ms=0"},
			ReadyURL: probeURL(h, "/ping"),
			Wrap:     nw.Wrap(i),
		})
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// probeURL is the URL of path on h's probe server.
func probeURL(h harness.Host, path string) string {
	return fmt.Sprintf("http://%s:%d%s", h.IP, probeHTTP, path)
}

// rootClient is how the test process talks to the probes; no proxy, short timeout.
var rootClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}

// get GETs url from the test process and returns the status and body.
func get(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := rootClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
