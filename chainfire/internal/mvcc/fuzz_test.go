package mvcc

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// FuzzLoadSnapshot feeds arbitrary streams to the snapshot decoder: it must reject them
// with ErrBadSnapshot (or accept a valid one), never panic.
func FuzzLoadSnapshot(f *testing.F) {
	s := openTest(f)
	for i := 0; i < 5; i++ {
		s.put(fmt.Sprintf("k%d", i), "v")
	}
	snap, err := s.Snapshot()
	if err != nil {
		f.Fatal(err)
	}
	var good bytes.Buffer
	if _, err := snap.WriteTo(&good); err != nil {
		f.Fatal(err)
	}
	snap.Release()
	f.Add(good.Bytes())
	f.Add(good.Bytes()[:20])
	f.Add([]byte(snapMagic + "\x00\x00\x00\x01\x05"))
	f.Fuzz(func(t *testing.T, data []byte) {
		opts := pebbleOptions(Options{CacheBytes: 1 << 20, MemTableBytes: 1 << 20}, s.log)
		opts.FS = vfs.NewMem()
		db, err := pebble.Open("", opts)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		_ = loadSnapshot(bytes.NewReader(data), db)
	})
}
