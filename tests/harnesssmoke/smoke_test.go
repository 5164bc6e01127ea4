package harnesssmoke_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"plasmacloud.dev/pkg/harness"
)

// TestPartitionAndHeal starts `busybox httpd` in two hosts, checks that each fetches the
// other's page, that a partition stops that both ways while the test process still
// reaches both, and that Heal restores it.
func TestPartitionAndHeal(t *testing.T) {
	busybox := harness.RequireCommand(t, "busybox")
	nw := harness.NewNetwork(t, 2) // before the processes, so they are killed first
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	for i, h := range nw.Hosts() {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte(page(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		p := harness.StartProcess(t, harness.ProcessConfig{
			Name:     fmt.Sprintf("httpd%d", i),
			Path:     busybox,
			Args:     []string{"httpd", "-f", "-p", h.IP + ":80", "-h", dir},
			ReadyURL: "http://" + h.IP + "/index.html",
			Wrap:     nw.Wrap(i),
		})
		if err := p.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// fetch reports whether host from gets host to's page, with busybox wget run inside
	// host from. Debian's wget has no working timeout option (-T crashes it): the
	// context kills it when the partition drops its SYN.
	fetch := func(from, to int) bool {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		url := "http://" + nw.Host(to).IP + "/index.html"
		out, err := nw.Command(wctx, from, busybox, "wget", "-q", "-O", "-", url).CombinedOutput()
		return err == nil && string(out) == page(to)
	}
	// fromTest reports whether the test process gets host i's page.
	fromTest := func(i int) bool {
		client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
		resp, err := client.Get("http://" + nw.Host(i).IP + "/index.html")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return err == nil && string(b) == page(i)
	}
	check := func(phase string, hostsReach bool) {
		t.Helper()
		for _, pair := range [][2]int{{0, 1}, {1, 0}} {
			if got := fetch(pair[0], pair[1]); got != hostsReach {
				t.Errorf("%s: host %d fetching from host %d: ok=%v, want %v", phase, pair[0], pair[1], got, hostsReach)
			}
		}
		for i := range 2 {
			if !fromTest(i) {
				t.Errorf("%s: the test process cannot fetch from host %d", phase, i)
			}
		}
	}

	check("before the partition", true)
	if err := nw.Partition([]int{0}, []int{1}); err != nil {
		t.Fatal(err)
	}
	check("partitioned", false)
	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	check("healed", true)
}

func page(i int) string { return strings.Repeat(fmt.Sprintf("host %d\n", i), 3) }
