package server

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// flushCounter is a ResponseWriter that counts flushes and write-deadline calls.
type flushCounter struct {
	*httptest.ResponseRecorder
	flushes   int
	deadlines int
}

func (f *flushCounter) Flush() { f.flushes++ }

func (f *flushCounter) SetWriteDeadline(time.Time) error { f.deadlines++; return nil }

// TestStreamControl: the handler's writer passes flushes on unless held, Connect still
// sees an http.Flusher, and abort reaches the server's writer through the gate (only
// while the handler runs).
func TestStreamControl(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		holds       []bool // hold state before each Flush
		wantFlushes int
	}{
		{name: "unheld", holds: []bool{false, false, false}, wantFlushes: 3},
		{name: "run of three", holds: []bool{true, true, false}, wantFlushes: 1},
		{name: "held twice then released twice", holds: []bool{true, true, false, false}, wantFlushes: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fc := &flushCounter{ResponseRecorder: httptest.NewRecorder()}
			var sc *streamControl
			h := withStreamControl(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				sc = r.Context().Value(streamControlKey{}).(*streamControl)
				f, ok := w.(http.Flusher)
				if !ok {
					t.Fatal("handler's writer is not an http.Flusher")
				}
				for _, on := range tc.holds {
					sc.gate.hold(on)
					f.Flush()
				}
				sc.abort()
			}))
			h.ServeHTTP(fc, httptest.NewRequest("POST", "/", nil))
			if fc.flushes != tc.wantFlushes {
				t.Fatalf("%d flushes, want %d", fc.flushes, tc.wantFlushes)
			}
			if fc.deadlines != 1 {
				t.Fatalf("abort during the handler set %d deadlines, want 1", fc.deadlines)
			}
			sc.abort() // after the handler returned: nothing
			if fc.deadlines != 1 {
				t.Fatal("abort after the handler returned reached the writer")
			}
		})
	}
}
