package guest

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// ErrNotHeartbeat is returned by ParseHeartbeat for a line that is not a heartbeat.
var ErrNotHeartbeat = errors.New("guest: not a heartbeat line")

// heartbeatPrefix starts every heartbeat line.
const heartbeatPrefix = "PLASMA-HB "

// Heartbeat is one heartbeat line as the guest printed it.
type Heartbeat struct {
	// Seq counts heartbeats since the guest booted (1, 2, ...); it survives live migration.
	Seq uint64
	// Boot is the guest kernel's boot id; a new value means a new boot.
	Boot string
	// Uptime is the guest's uptime when it printed the line (0 when the line had none).
	Uptime time.Duration
}

// ParseHeartbeat parses one line (without or with its trailing newline or carriage return).
// Text before "PLASMA-HB " is ignored, so lines that share the console with kernel messages still
// parse. It returns ErrNotHeartbeat (wrapped, with the reason) when the line is not a complete
// heartbeat: a torn or partial line is never mistaken for one.
func ParseHeartbeat(line []byte) (Heartbeat, error) {
	i := bytes.Index(line, []byte(heartbeatPrefix))
	if i < 0 {
		return Heartbeat{}, ErrNotHeartbeat
	}
	line = bytes.TrimRight(line[i+len(heartbeatPrefix):], "\r\n")
	var hb Heartbeat
	var haveSeq bool
	for _, f := range bytes.Fields(line) {
		k, v, ok := bytes.Cut(f, []byte("="))
		if !ok {
			continue
		}
		switch string(k) {
		case "seq":
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil || n == 0 {
				return Heartbeat{}, fmt.Errorf("%w: bad seq %q", ErrNotHeartbeat, v)
			}
			hb.Seq, haveSeq = n, true
		case "boot":
			if len(v) != 36 { // a kernel boot id is a UUID
				return Heartbeat{}, fmt.Errorf("%w: bad boot id %q", ErrNotHeartbeat, v)
			}
			hb.Boot = string(v)
		case "up":
			s, err := strconv.ParseFloat(string(v), 64)
			if err != nil || s < 0 {
				return Heartbeat{}, fmt.Errorf("%w: bad uptime %q", ErrNotHeartbeat, v)
			}
			hb.Uptime = time.Duration(s * float64(time.Second))
		}
	}
	if !haveSeq || hb.Boot == "" {
		return Heartbeat{}, fmt.Errorf("%w: seq or boot missing", ErrNotHeartbeat)
	}
	return hb, nil
}

// String formats hb the way the guest prints it (without the newline).
func (hb Heartbeat) String() string {
	return fmt.Sprintf("PLASMA-HB seq=%d boot=%s up=%.2f", hb.Seq, hb.Boot, hb.Uptime.Seconds())
}
