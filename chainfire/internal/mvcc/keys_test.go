package mvcc

import (
	"bytes"
	"math/rand/v2"
	"sort"
	"testing"
)

// TestKeyEncodingOrder checks that version keys sort by user key (bytewise, NUL bytes
// included), then newest revision first, and that the encoding round-trips.
func TestKeyEncodingOrder(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(5, 6))
	alphabet := []byte{0, 1, 0xff, 'a', 'b'}
	type kr struct {
		key []byte
		rev int64
	}
	var items []kr
	for i := 0; i < 2000; i++ {
		k := make([]byte, 1+rng.IntN(5))
		for j := range k {
			k[j] = alphabet[rng.IntN(len(alphabet))]
		}
		items = append(items, kr{k, rng.Int64N(1 << 40)})
	}
	enc := func(x kr) []byte { return appendVersionKey(nil, x.key, x.rev) }
	sort.Slice(items, func(i, j int) bool { return bytes.Compare(enc(items[i]), enc(items[j])) < 0 })
	for i := 1; i < len(items); i++ {
		a, b := items[i-1], items[i]
		c := bytes.Compare(a.key, b.key)
		if c > 0 || (c == 0 && a.rev < b.rev) {
			t.Fatalf("order broken: %q@%d before %q@%d", a.key, a.rev, b.key, b.rev)
		}
	}
	for _, x := range items {
		k := enc(x)
		prefix, rev, ok := splitVersionKey(k)
		if !ok || rev != x.rev || !bytes.Equal(appendUserKey(nil, prefix), x.key) || userKeyLen(prefix) != len(x.key) {
			t.Fatalf("round trip of %q@%d: %q %d", x.key, x.rev, appendUserKey(nil, prefix), rev)
		}
		if kvSplit(k) != len(prefix) || kvSplit(prefix) != len(prefix) {
			t.Fatalf("split of %q", k)
		}
		lower, upper, _ := rangeBounds(nil, x.key, nil)
		if bytes.Compare(k, lower) < 0 || bytes.Compare(k, upper) >= 0 {
			t.Fatalf("%q outside its own bounds", x.key)
		}
	}
}
