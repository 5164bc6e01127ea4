package mvcc

import (
	"bytes"
	"encoding/binary"
	"errors"
)

// Storage layout. Everything lives in one pebble DB so that data and metadata are
// written by the same atomic batch.
//
//	k/<esc(key)>\x00\x01<^rev 8B BE>  -> record: one version of key (put or tombstone)
//	r/<rev 8B BE><sub 8B BE>          -> chunk of the by-revision index (watch history)
//	a/<lease 8B BE><key>              -> "": keys attached to a lease
//	l/<lease 8B BE>                   -> uvarint TTL: lease table
//	n/<member id 8B BE>               -> MemberPut proto
//	m/<name>                          -> metadata (applied index+term, revision, compaction)
//
// esc() escapes every 0x00 of the user key as 0x00 0xFF and the key ends with the
// terminator 0x00 0x01, so the encoding is prefix-free and preserves the byte order of
// user keys (keys may contain NUL bytes). The revision is stored complemented so that
// a key's newest version comes first: "newest version <= R" is one SeekGE to
// k/<esc(key)>\x00\x01<^R>. A record is either a tombstone (one byte, recTombstone) or
// recPut, uvarint create_revision, uvarint version, uvarint lease, value.
//
// The by-revision index lists every event (revision, key) in order. It is chunked to
// spare one pebble write per event: each Apply writes its events as one or more chunks
// of at most revChunkMax bytes, keyed by the revision and sub-index (position within its
// revision) of the chunk's first event. A chunk is a sequence of uvarint(revision delta
// from the previous event, the first relative to the key), uvarint(len(key)), key.
const (
	pfxKV       = "k/"
	pfxRev      = "r/"
	pfxLeaseKey = "a/"
	pfxLease    = "l/"
	pfxMember   = "n/"

	keyFormat      = "m/format"
	keyApplied     = "m/applied_index"
	keyRevision    = "m/revision"
	keyCompactRev  = "m/compact_revision"
	keyCompactDone = "m/compact_done"

	formatVersion = 1

	recTombstone = 0
	recPut       = 1

	revLen = 8
)

var (
	keyAppliedB    = []byte(keyApplied)
	keyRevisionB   = []byte(keyRevision)
	keyCompactRevB = []byte(keyCompactRev)

	kvLower    = []byte("k/")
	kvUpper    = []byte("k0") // '0' == '/'+1
	errCorrupt = errors.New("corrupt record")
)

// appendKeyPrefix appends k/<esc(key)>\x00\x01: the common prefix of all versions of key.
func appendKeyPrefix(dst, key []byte) []byte {
	dst = append(dst, pfxKV...)
	for {
		i := bytes.IndexByte(key, 0)
		if i < 0 {
			dst = append(dst, key...)
			break
		}
		dst = append(dst, key[:i+1]...)
		dst = append(dst, 0xff)
		key = key[i+1:]
	}
	return append(dst, 0x00, 0x01)
}

// appendVersionKey appends the pebble key of key's version at rev.
func appendVersionKey(dst, key []byte, rev int64) []byte {
	dst = appendKeyPrefix(dst, key)
	return binary.BigEndian.AppendUint64(dst, ^uint64(rev))
}

// appendRevSuffix appends the complemented revision suffix.
func appendRevSuffix(dst []byte, rev int64) []byte {
	return binary.BigEndian.AppendUint64(dst, ^uint64(rev))
}

// prefixSuccessor turns a key prefix (ending in 0x00 0x01) into the smallest pebble key
// above all versions of that key (ending in 0x00 0x02), in place.
func prefixSuccessor(prefix []byte) []byte {
	prefix[len(prefix)-1] = 0x02
	return prefix
}

// splitVersionKey splits a k/ pebble key into its prefix and revision.
func splitVersionKey(k []byte) (prefix []byte, rev int64, ok bool) {
	if len(k) < len(pfxKV)+2+revLen {
		return nil, 0, false
	}
	n := len(k) - revLen
	return k[:n], int64(^binary.BigEndian.Uint64(k[n:])), true
}

// userKeyLen returns the length of the user key encoded in a key prefix.
func userKeyLen(prefix []byte) int {
	body := prefix[len(pfxKV) : len(prefix)-2]
	return len(body) - bytes.Count(body, []byte{0x00, 0xff})
}

// appendUserKey appends the user key encoded in a key prefix (k/<esc(key)>\x00\x01).
func appendUserKey(dst, prefix []byte) []byte {
	body := prefix[len(pfxKV) : len(prefix)-2]
	for {
		i := bytes.IndexByte(body, 0)
		if i < 0 {
			return append(dst, body...)
		}
		dst = append(dst, body[:i+1]...)
		body = body[i+2:] // skip the 0xff escape
	}
}

// kvSplit is pebble's Comparer.Split: for version keys the prefix is everything up to
// and including the 0x00 0x01 terminator, so bloom filters and SeekPrefixGE work per
// user key. The check is O(1): in a version key the terminator sits exactly 10 bytes
// from the end, and 0x00 0x01 occurs nowhere else in an encoded key.
func kvSplit(k []byte) int {
	n := len(k)
	if n >= len(pfxKV)+2+revLen && k[0] == 'k' && k[1] == '/' && k[n-10] == 0 && k[n-9] == 1 {
		return n - revLen
	}
	return n
}

// rangeBounds returns pebble bounds [lower, upper) covering all versions of the user keys
// in [key, end) with etcd's conventions: end empty = just key; end "\x00" = every key >=
// key. ok is false when the range is empty (end <= key).
func rangeBounds(dst, key, end []byte) (lower, upper []byte, ok bool) {
	dst = appendKeyPrefix(dst, key)
	lower = dst
	switch {
	case len(end) == 0:
		upper = append(dst[len(dst):], lower...)
		upper = prefixSuccessor(upper)
	case len(end) == 1 && end[0] == 0:
		upper = kvUpper
	default:
		if bytes.Compare(end, key) <= 0 {
			return nil, nil, false
		}
		upper = appendKeyPrefix(dst[len(dst):], end)
	}
	return lower, upper, true
}

// inRange reports whether k is in [key, end) with etcd's conventions.
func inRange(k, key, end []byte) bool {
	switch {
	case len(end) == 0:
		return bytes.Equal(k, key)
	case len(end) == 1 && end[0] == 0:
		return bytes.Compare(k, key) >= 0
	default:
		return bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0
	}
}

// record is a decoded version. value aliases the buffer it was decoded from.
type record struct {
	tombstone bool
	create    int64
	version   int64
	lease     int64
	value     []byte
}

func appendRecord(dst []byte, create, version, lease int64, value []byte) []byte {
	dst = append(dst, recPut)
	dst = binary.AppendUvarint(dst, uint64(create))
	dst = binary.AppendUvarint(dst, uint64(version))
	dst = binary.AppendUvarint(dst, uint64(lease))
	return append(dst, value...)
}

var tombstoneRecord = []byte{recTombstone}

func decodeRecord(b []byte) (record, error) {
	if len(b) == 0 {
		return record{}, errCorrupt
	}
	switch b[0] {
	case recTombstone:
		return record{tombstone: true}, nil
	case recPut:
	default:
		return record{}, errCorrupt
	}
	b = b[1:]
	var r record
	var v uint64
	var n int
	if v, n = binary.Uvarint(b); n <= 0 {
		return record{}, errCorrupt
	}
	r.create, b = int64(v), b[n:]
	if v, n = binary.Uvarint(b); n <= 0 {
		return record{}, errCorrupt
	}
	r.version, b = int64(v), b[n:]
	if v, n = binary.Uvarint(b); n <= 0 {
		return record{}, errCorrupt
	}
	r.lease, r.value = int64(v), b[n:]
	return r, nil
}

const revChunkMax = 64 << 10

// revChunk accumulates the events of one chunk of the by-revision index.
type revChunk struct {
	startRev, startSub, lastRev int64
	buf                         []byte
}

func (c *revChunk) empty() bool { return len(c.buf) == 0 }

func (c *revChunk) add(rev, sub int64, key []byte) {
	if len(c.buf) == 0 {
		c.startRev, c.startSub, c.lastRev = rev, sub, rev
	}
	c.buf = binary.AppendUvarint(c.buf, uint64(rev-c.lastRev))
	c.buf = binary.AppendUvarint(c.buf, uint64(len(key)))
	c.buf = append(c.buf, key...)
	c.lastRev = rev
}

func (c *revChunk) reset() { c.buf = c.buf[:0] }

// chunkReader decodes a chunk; key aliases the chunk.
type chunkReader struct {
	rev int64
	b   []byte
}

func newChunkReader(k, v []byte) (chunkReader, error) {
	if len(k) != len(pfxRev)+16 {
		return chunkReader{}, errCorrupt
	}
	return chunkReader{rev: int64(binary.BigEndian.Uint64(k[len(pfxRev):])), b: v}, nil
}

func (r *chunkReader) next() (rev int64, key []byte, ok bool, err error) {
	if len(r.b) == 0 {
		return 0, nil, false, nil
	}
	d, n := binary.Uvarint(r.b)
	if n <= 0 {
		return 0, nil, false, errCorrupt
	}
	r.b = r.b[n:]
	l, n := binary.Uvarint(r.b)
	if n <= 0 || uint64(len(r.b)-n) < l {
		return 0, nil, false, errCorrupt
	}
	key, r.b = r.b[n:n+int(l)], r.b[n+int(l):]
	r.rev += int64(d)
	return r.rev, key, true, nil
}

func appendRevKey(dst []byte, rev, sub int64) []byte {
	dst = append(dst, pfxRev...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(rev))
	return binary.BigEndian.AppendUint64(dst, uint64(sub))
}

func appendLeaseKey(dst []byte, lease int64) []byte {
	dst = append(dst, pfxLease...)
	return binary.BigEndian.AppendUint64(dst, uint64(lease))
}

func appendLeaseAttachKey(dst []byte, lease int64, key []byte) []byte {
	dst = append(dst, pfxLeaseKey...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(lease))
	return append(dst, key...)
}

func appendMemberKey(dst []byte, id uint64) []byte {
	dst = append(dst, pfxMember...)
	return binary.BigEndian.AppendUint64(dst, id)
}

// prefixEnd returns the smallest key greater than every key starting with p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
