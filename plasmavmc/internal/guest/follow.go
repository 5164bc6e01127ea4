package guest

import (
	"context"
	"io"
	"os"
	"time"
)

// follower reads a growing file like `tail -F`: at EOF it waits and polls; it ends with io.EOF
// when the file shrinks (truncated) or is replaced by another file, so that the caller reopens
// it and reads from the top.
type follower struct {
	ctx  context.Context
	f    *os.File
	path string
	poll time.Duration
	off  int64

	backlog int64     // size of the file when it was opened
	mtime   time.Time // its modification time then
}

// backlogUntil reports the size of the data that was already in the file when it was opened,
// and the time it was last written: lines read from it are that old, not new.
func (r *follower) backlogUntil() (int64, time.Time) { return r.backlog, r.mtime }

func openFollow(ctx context.Context, path string, poll time.Duration) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &follower{ctx: ctx, f: f, path: path, poll: poll, backlog: st.Size(), mtime: st.ModTime()}, nil
}

func (r *follower) Read(p []byte) (int, error) {
	for {
		n, err := r.f.Read(p)
		r.off += int64(n)
		if n > 0 {
			return n, nil
		}
		if err != nil && err != io.EOF {
			return 0, err
		}
		// At EOF: has the file been truncated or replaced?
		cur, err := r.f.Stat()
		if err != nil {
			return 0, err
		}
		if cur.Size() < r.off {
			return 0, io.EOF
		}
		if st, err := os.Stat(r.path); err == nil && !os.SameFile(st, cur) {
			return 0, io.EOF
		}
		select {
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		case <-time.After(r.poll):
		}
	}
}

func (r *follower) Close() error { return r.f.Close() }
