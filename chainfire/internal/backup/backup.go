// Package backup writes a member's scheduled snapshots: every interval a consistent image of
// the store goes to a file in a directory, written to a temporary name, fsynced and renamed,
// so a file with the final name is always whole; the newest Retain files are kept. The
// files are what `chainfire snapshot restore` reads.
package backup

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"plasmacloud.dev/chainfire/internal/mvcc"
)

// Suffix ends every snapshot file's name.
const Suffix = ".snap"

// Config says where and how often.
type Config struct {
	Dir      string
	Interval time.Duration
	Retain   int // files kept, newest first; at least 1
	Logger   *slog.Logger
}

// Run writes a snapshot every Interval until ctx ends. Errors are logged and retried at the
// next tick; they never stop the member.
func Run(ctx context.Context, store *mvcc.Store, cfg Config) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		path, err := Write(store, cfg.Dir, time.Now())
		if err != nil {
			cfg.Logger.Error("scheduled snapshot failed", "dir", cfg.Dir, "err", err)
			continue
		}
		cfg.Logger.Info("scheduled snapshot written", "file", path)
		if err := Prune(cfg.Dir, cfg.Retain); err != nil {
			cfg.Logger.Warn("pruning old snapshots failed", "dir", cfg.Dir, "err", err)
		}
	}
}

// Write writes one snapshot of store into dir and returns its path:
// chainfire-<revision>-<UTC time>.snap.
func Write(store *mvcc.Store, dir string, now time.Time) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("backup: %w", err)
	}
	snap, err := store.Snapshot()
	if err != nil {
		return "", fmt.Errorf("backup: %w", err)
	}
	defer snap.Release()
	name := fmt.Sprintf("chainfire-%012d-%s%s", snap.Revision(), now.UTC().Format("20060102T150405.000Z"), Suffix)
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return "", fmt.Errorf("backup: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := snap.WriteTo(tmp); err != nil {
		tmp.Close()
		return "", fmt.Errorf("backup: write: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("backup: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("backup: %w", err)
	}
	path := filepath.Join(dir, name)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("backup: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return path, nil
}

// List returns the snapshot files in dir, newest first.
func List(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasPrefix(e.Name(), "chainfire-") && strings.HasSuffix(e.Name(), Suffix) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	// Names sort by revision, then time: reverse for newest first.
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out, nil
}

// Prune removes all but the newest retain snapshot files.
func Prune(dir string, retain int) error {
	files, err := List(dir)
	if err != nil {
		return err
	}
	retain = max(retain, 1)
	for _, f := range files[min(retain, len(files)):] {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	return nil
}
