package agent

import (
	"testing"
	"time"
)

// TestWDTimer checks the watchdog's timing logic on a synthetic clock.
func TestWDTimer(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	type step struct {
		at      time.Duration
		pet     time.Duration // > 0 or negative: pet with this remaining validity; 0: check
		isPet   bool
		expired bool          // for checks
		left    time.Duration // for checks
	}
	pet := func(at, remaining time.Duration) step { return step{at: at, pet: remaining, isPet: true} }
	check := func(at time.Duration, expired bool, left time.Duration) step {
		return step{at: at, expired: expired, left: left}
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"idle until the first pet", []step{check(0, false, 0), check(time.Hour, false, 0)}},
		{"expires at pet + remaining", []step{
			pet(0, 8*time.Second), check(time.Second, false, 7*time.Second),
			check(8*time.Second-time.Millisecond, false, time.Millisecond), check(8*time.Second, true, 0)}},
		{"expiry disarms until the next pet", []step{
			pet(0, time.Second), check(2*time.Second, true, 0), check(3*time.Second, false, 0),
			pet(4*time.Second, time.Second), check(4500*time.Millisecond, false, 500*time.Millisecond),
			check(5*time.Second, true, 0)}},
		{"pets keep it quiet", []step{
			pet(0, 3*time.Second), check(2*time.Second, false, time.Second), pet(2*time.Second, 3*time.Second),
			check(4*time.Second, false, time.Second), pet(4*time.Second, 3*time.Second), check(6*time.Second, false, time.Second)}},
		{"a shorter pet shortens the deadline", []step{
			pet(0, 8*time.Second), pet(time.Second, time.Second), check(2*time.Second, true, 0)}},
		{"a pet with no validity left expires at once", []step{
			pet(0, 8*time.Second), pet(time.Second, -time.Second), check(time.Second, true, 0)}},
		{"agent restart: the new agent's pet before the old validity ends", []step{
			pet(0, 8*time.Second), check(6*time.Second, false, 2*time.Second),
			pet(7*time.Second, 8*time.Second), check(9*time.Second, false, 6*time.Second)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w wdTimer
			for i, s := range tt.steps {
				if s.isPet {
					if got := w.Pet(at(s.at), s.pet); got != max(s.pet, 0) {
						t.Fatalf("step %d: Pet returned %v", i, got)
					}
					continue
				}
				expired, left := w.Check(at(s.at))
				if expired != s.expired || left != s.left {
					t.Fatalf("step %d: Check(%v) = %v, %v; want %v, %v", i, s.at, expired, left, s.expired, s.left)
				}
			}
		})
	}
}
