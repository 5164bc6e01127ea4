package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"
)

func TestRecordWritesOneStructuredRecord(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewJSONHandler(&buf, nil)))
	l.Record(context.Background(), Event{Action: "token.refuse", Target: "user:bob", Outcome: Failure, Reason: "invalid credentials", Source: "10.0.0.9"})
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("record is not one JSON object: %v: %q", err, buf.String())
	}
	want := map[string]any{"audit": true, "action": "token.refuse", "outcome": "failure", "target": "user:bob", "reason": "invalid credentials", "source": "10.0.0.9"}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("%s = %v, want %v", k, rec[k], v)
		}
	}
	if _, ok := rec["actor"]; ok {
		t.Errorf("empty actor should be omitted: %v", rec)
	}
	buf.Reset()
	l.Record(context.Background(), Event{Action: "user.create", Actor: "user:admin", Target: "user:carol"})
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["outcome"] != "success" {
		t.Fatalf("default outcome: %v %v", rec, err)
	}
}
