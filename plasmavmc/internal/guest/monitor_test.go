package guest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

const (
	bootA = "0b7e1c6a-1f7a-4d55-9a4e-7f7d4b0b2a11"
	bootB = "5c2d9e0f-3a1b-4c6d-8e7f-9a0b1c2d3e4f"
)

func TestParseHeartbeat(t *testing.T) {
	tests := []struct {
		name string
		line string
		want Heartbeat
		err  bool
	}{
		{"full", "PLASMA-HB seq=7 boot=" + bootA + " up=3.51\n", Heartbeat{Seq: 7, Boot: bootA, Uptime: 3510 * time.Millisecond}, false},
		{"crlf and console noise", "[    3.1] foo PLASMA-HB seq=1 boot=" + bootA + " up=0.00\r\n", Heartbeat{Seq: 1, Boot: bootA}, false},
		{"no uptime", "PLASMA-HB seq=2 boot=" + bootA, Heartbeat{Seq: 2, Boot: bootA}, false},
		{"booted line", "PLASMA-BOOTED boot=" + bootA + " up=2.9", Heartbeat{}, true},
		{"torn boot id", "PLASMA-HB seq=3 boot=0b7e1c6a-1f7a", Heartbeat{}, true},
		{"no seq", "PLASMA-HB boot=" + bootA, Heartbeat{}, true},
		{"seq zero", "PLASMA-HB seq=0 boot=" + bootA, Heartbeat{}, true},
		{"bad seq", "PLASMA-HB seq=x boot=" + bootA, Heartbeat{}, true},
		{"empty", "", Heartbeat{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHeartbeat([]byte(tt.line))
			if tt.err {
				if !errors.Is(err, ErrNotHeartbeat) {
					t.Fatalf("err = %v, want ErrNotHeartbeat", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func FuzzParseHeartbeat(f *testing.F) {
	f.Add([]byte("PLASMA-HB seq=7 boot=" + bootA + " up=3.51\n"))
	f.Add([]byte("PLASMA-HB seq=99999999999999999999 boot= up=-1"))
	f.Fuzz(func(t *testing.T, line []byte) {
		hb, err := ParseHeartbeat(line)
		if err == nil && (hb.Seq == 0 || len(hb.Boot) != 36) {
			t.Fatalf("accepted %q as %+v", line, hb)
		}
	})
}

func hbLine(seq int, boot string) string {
	return fmt.Sprintf("PLASMA-HB seq=%d boot=%s up=%d.00\n", seq, boot, seq)
}

func waitSeq(t *testing.T, m *Monitor, seq uint64, boot string) Observation {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	o, err := m.Wait(ctx, func(o Observation) bool { return o.Seq == seq && o.Boot == boot })
	if err != nil {
		t.Fatalf("waiting for seq=%d boot=%s: %v (latest %+v)", seq, boot, err, o)
	}
	return o
}

func TestFileMonitor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	// A backlog from an earlier life of the VM: seen when written, not now.
	if err := os.WriteFile(path, []byte("SeaBIOS noise\n"+hbLine(1, bootA)+hbLine(2, bootA)), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	m := NewFileMonitor(path, 10*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()

	o := waitSeq(t, m, 2, bootA)
	if o.Fresh(time.Now(), time.Minute) {
		t.Fatalf("backlog heartbeat counted as fresh: %+v", o)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A torn write: the line counts only once complete.
	line := hbLine(3, bootA)
	f.WriteString(line[:10])
	time.Sleep(50 * time.Millisecond)
	if got := m.Latest().Seq; got != 2 {
		t.Fatalf("partial line observed: seq %d", got)
	}
	f.WriteString(line[10:])
	f.Close()
	o = waitSeq(t, m, 3, bootA)
	if !o.Fresh(time.Now(), time.Minute) || o.Boots != 1 {
		t.Fatalf("new heartbeat: %+v, want fresh, 1 boot", o)
	}
	// The VM starts again: QEMU truncates the log, a new boot begins.
	if err := os.WriteFile(path, []byte(hbLine(1, bootB)), 0o644); err != nil {
		t.Fatal(err)
	}
	o = waitSeq(t, m, 1, bootB)
	if o.Boots != 2 {
		t.Fatalf("boots = %d, want 2", o.Boots)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
}

func TestSocketMonitor(t *testing.T) {
	dir, err := os.MkdirTemp("", "hb") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "hb.sock")
	m := NewSocketMonitor(path, 10*time.Millisecond, nil)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go m.Run(ctx)

	serve := func(lines ...string) {
		t.Helper()
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range lines {
			c.Write([]byte(s))
		}
		c.Close()
		l.Close()
	}
	time.Sleep(30 * time.Millisecond) // the monitor retries while the socket is missing
	serve(hbLine(4, bootA), hbLine(5, bootA))
	waitSeq(t, m, 5, bootA)
	// QEMU restarted: a new listener, a new boot; the monitor reconnects by itself.
	serve(hbLine(1, bootB))
	if o := waitSeq(t, m, 1, bootB); o.Boots != 2 {
		t.Fatalf("boots = %d, want 2", o.Boots)
	}
}
