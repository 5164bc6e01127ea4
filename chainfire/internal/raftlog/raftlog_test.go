package raftlog

import (
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
)

func TestRoundTrip(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(kind, dir)
			if err != nil {
				t.Fatal(err)
			}
			logs := make([]*raft.Log, 10)
			for i := range logs {
				logs[i] = &raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: []byte(fmt.Sprint(i))}
			}
			if err := s.StoreLogs(logs); err != nil {
				t.Fatal(err)
			}
			if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s, err = Open(kind, dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			last, _ := s.LastIndex()
			var l raft.Log
			if err := s.GetLog(7, &l); err != nil || string(l.Data) != "6" || last != 10 {
				t.Fatalf("after reopen: last %d, log 7 %q, %v", last, l.Data, err)
			}
			if term, _ := s.GetUint64([]byte("CurrentTerm")); term != 7 {
				t.Fatalf("term %d", term)
			}
		})
	}
	if _, err := Open("nope", t.TempDir()); err == nil {
		t.Fatal("unknown kind accepted")
	}
}

// BenchmarkStoreLogs appends batches of 1 and 64 entries of 256 bytes — an idle and a busy
// leader; each call fsyncs.
func BenchmarkStoreLogs(b *testing.B) {
	for _, kind := range Kinds {
		for _, size := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/batch=%d", kind, size), func(b *testing.B) {
				s, err := Open(kind, b.TempDir())
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				data := make([]byte, 256)
				idx := uint64(1)
				batch := make([]*raft.Log, size)
				b.SetBytes(int64(len(batch) * len(data)))
				b.ResetTimer()
				for range b.N {
					for j := range batch {
						batch[j] = &raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: data}
						idx++
					}
					if err := s.StoreLogs(batch); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "entries/s")
			})
		}
	}
}

// TestReopenAfterTailTruncation: a follower truncates its log's tail when a new leader
// overwrites uncommitted entries (raft's DeleteRange of a suffix), and the member must still
// restart afterwards. raft-wal v0.4.0 could not (hashicorp/raft-wal#31, found by the chaos
// suite); v0.4.2 seals the truncated segment properly.
func TestReopenAfterTailTruncation(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(kind, dir)
			if err != nil {
				t.Fatal(err)
			}
			for i := uint64(1); i <= 10; i++ {
				if err := s.StoreLog(&raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: []byte("x")}); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.DeleteRange(8, 10); err != nil {
				t.Fatal(err)
			}
			if err := s.StoreLog(&raft.Log{Index: 8, Term: 2, Type: raft.LogCommand, Data: []byte("y")}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s, err = Open(kind, dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var l raft.Log
			for i := uint64(1); i <= 8; i++ {
				if err := s.GetLog(i, &l); err != nil {
					t.Fatalf("log %d after tail truncation and reopen: %v", i, err)
				}
			}
			if l.Term != 2 || string(l.Data) != "y" {
				t.Fatalf("log 8 after reopen: term %d data %q, want the rewritten entry", l.Term, l.Data)
			}
			if last, _ := s.LastIndex(); last != 8 {
				t.Fatalf("last index %d, want 8", last)
			}
		})
	}
}
