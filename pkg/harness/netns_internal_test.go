package harness

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
)

func TestDropSources(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		n        int
		cuts     [][2]int
		isolated []int
		want     string // per host, the hosts it drops from
	}{
		{"none", 3, nil, nil, "[[] [] []]"},
		{"one way", 3, [][2]int{{0, 1}}, nil, "[[] [0] []]"},
		{"both ways", 2, [][2]int{{0, 1}, {1, 0}}, nil, "[[1] [0]]"},
		{"isolated", 3, nil, []int{1}, "[[1] [0 2] [1]]"},
		{"isolated and cut", 3, [][2]int{{2, 0}}, []int{1}, "[[1 2] [0 2] [1]]"},
		{"isolated beyond n", 2, nil, []int{5}, "[[] []]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cuts := make(map[[2]int]bool)
			for _, c := range tt.cuts {
				cuts[c] = true
			}
			iso := make(map[int]bool)
			for _, i := range tt.isolated {
				iso[i] = true
			}
			if got := fmt.Sprint(dropSources(tt.n, cuts, iso)); got != tt.want {
				t.Errorf("dropSources = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestSubnetConflict(t *testing.T) {
	t.Parallel()
	routes := `default via 192.0.2.1 dev eth0
10.0.0.0/8 via 192.0.2.9 dev eth0
172.17.0.0/16 dev docker0 proto kernel scope link src 172.17.0.1 linkdown
10.77.3.0/24 dev pch3 proto kernel scope link src 10.77.3.254
local 10.77.4.254 dev foo table local proto kernel scope host src 10.77.4.254
broadcast 10.77.5.255 dev bar table local proto kernel scope link src 10.77.5.1
unreachable 10.77.8.0/22
`
	tests := []struct {
		k    int
		want bool
	}{
		{0, false}, {3, true}, {4, true}, {5, true}, {6, false},
		{8, true}, {11, true}, {12, false}, {255, false},
	}
	for _, tt := range tests {
		if got := subnetConflict(routes, tt.k) != ""; got != tt.want {
			t.Errorf("subnet %d: conflict %v, want %v", tt.k, got, tt.want)
		}
	}
	if r := subnetConflict("10.77.0.0/16 dev wg0\n", 200); r != "10.77.0.0/16 dev wg0" {
		t.Errorf("a route to all of 10.77.0.0/16 must conflict with every subnet, got %q", r)
	}
}

func TestNetName(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]string{
		"pch12": "12", "pch12-hub": "12", "pch0-h3": "0", "pch255-h252": "255",
		"pchx": "", "pch-1": "", "pch1234": "", "eth0": "", "xpch1": "",
	} {
		got := ""
		if m := netName.FindStringSubmatch(name); m != nil {
			got = m[1]
		}
		if got != want {
			t.Errorf("%s: subnet %q, want %q", name, got, want)
		}
	}
}

func TestNetlinkEncoding(t *testing.T) {
	t.Parallel()
	a := nlattr(7, []byte{1, 2, 3})
	if len(a) != 8 || a[4] != 1 || a[6] != 3 || a[7] != 0 {
		t.Fatalf("nlattr = %v, want 8 bytes, padded", a)
	}
	attrs := append(nlattr(1, []byte{0xaa, 0xbb, 0xcc, 0xdd}), a...)
	if got := findAttr(attrs, 7); string(got) != string([]byte{1, 2, 3}) {
		t.Errorf("findAttr(7) = %v", got)
	}
	if got := findAttr(attrs, 9); got != nil {
		t.Errorf("findAttr(9) = %v, want nil", got)
	}
	if got := findAttr([]byte{200, 0, 1, 0}, 1); got != nil {
		t.Errorf("findAttr on a truncated attribute = %v, want nil", got)
	}
	// Two messages back to back, then a truncated one that must be ignored.
	msg := func(typ uint16, payload []byte) []byte {
		b := make([]byte, 16+len(payload))
		b[0] = byte(len(b))
		b[4], b[5] = byte(typ), byte(typ>>8)
		copy(b[16:], payload)
		return b
	}
	buf := append(msg(nfqnlMsgPacket, append([]byte{0, 0, 1, 2}, attrs...)), msg(5, nil)...)
	buf = append(buf, 99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	var types []uint16
	for m := range netlinkMessages(buf) {
		types = append(types, uint16(m[4])|uint16(m[5])<<8)
	}
	if fmt.Sprint(types) != fmt.Sprint([]uint16{nfqnlMsgPacket, 5}) {
		t.Errorf("message types %v", types)
	}
	v := verdictAttr(0x01020304)
	if len(v) != 12 || v[7] != nfAccept || v[8] != 1 || v[11] != 4 {
		t.Errorf("verdictAttr = %v", v)
	}
}

// TestQueueDelay runs the user-space delay that stands in for tc netem on kernels without
// it, on every kernel: a round trip to a delayed host takes at least twice the delay, and
// none once it is cleared.
func TestQueueDelay(t *testing.T) {
	t.Parallel()
	nw := NewNetwork(t, 1)
	nw.mu.Lock()
	nw.forceQueueDelay = true
	nw.mu.Unlock()
	// Dialing a port nobody listens on takes one round trip: SYN out, RST back.
	dial := func() time.Duration {
		best := time.Hour
		for range 3 {
			start := time.Now()
			c, err := net.DialTimeout("tcp", nw.Host(0).IP+":9", 5*time.Second)
			if err == nil {
				c.Close()
				t.Fatal("something listens on port 9 of a fresh host")
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatal(err)
			}
			best = min(best, time.Since(start))
		}
		return best
	}
	const delay = 80 * time.Millisecond
	if err := nw.Netem(0, delay, 0); err != nil {
		t.Fatal(err)
	}
	if rtt := dial(); rtt < 2*delay-5*time.Millisecond {
		t.Errorf("round trip with %v each way: %v", delay, rtt)
	}
	if err := nw.ClearNetem(0); err != nil {
		t.Fatal(err)
	}
	if rtt := dial(); rtt >= delay {
		t.Errorf("round trip after ClearNetem: %v", rtt)
	}
	if err := nw.Netem(0, delay, 0); err != nil { // again, and left for cleanup to remove
		t.Fatal(err)
	}
	if rtt := dial(); rtt < 2*delay-5*time.Millisecond {
		t.Errorf("round trip with %v each way, second time: %v", delay, rtt)
	}
}
