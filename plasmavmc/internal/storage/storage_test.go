package storage

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"plasmacloud.dev/pkg/harness"
)

const mib = 1 << 20

func newStore(t *testing.T) (*Store, string) {
	t.Helper()
	qemuImg := harness.RequireCommand(t, "qemu-img")
	root := t.TempDir()
	s, err := New(Config{QemuImg: qemuImg, Pools: map[string]string{
		PoolLocal:  filepath.Join(root, "local"),
		PoolShared: filepath.Join(root, "shared"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	// A 16 MiB raw base image with recognisable content.
	src := filepath.Join(root, "base.raw")
	data := make([]byte, 16*mib)
	copy(data, "PLASMA-BASE-IMAGE")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return s, src
}

func TestOverlayLifecycle(t *testing.T) {
	s, src := newStore(t)
	ctx := context.Background()
	im, err := s.RegisterImage(ctx, PoolShared, "tiny.raw", src)
	if err != nil {
		t.Fatal(err)
	}
	if im.Format != "raw" || im.VirtualSize != 16*mib {
		t.Fatalf("image = %+v", im)
	}
	if _, err := s.RegisterImage(ctx, PoolShared, "tiny.raw", src); !errors.Is(err, ErrExists) {
		t.Fatalf("second register: %v, want ErrExists", err)
	}
	d, err := s.CreateDisk(ctx, PoolShared, "vm1-root", "tiny.raw", 64*mib)
	if err != nil {
		t.Fatal(err)
	}
	if d.VirtualSize != 64*mib || d.BackingPath != im.Path || d.Image != "tiny.raw" {
		t.Fatalf("disk = %+v (image %s)", d, im.Path)
	}
	// The overlay is qcow2 with the image as its raw backing file, and reads the image's bytes.
	out, err := exec.Command(s.qemuImg, "info", d.Path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "file format: qcow2") || !strings.Contains(string(out), "backing file format: raw") {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	raw := filepath.Join(t.TempDir(), "back.raw")
	if out, err := exec.Command(s.qemuImg, "convert", "-O", "raw", d.Path, raw).CombinedOutput(); err != nil {
		t.Fatalf("convert: %v %s", err, out)
	}
	if b, _ := os.ReadFile(raw); !strings.HasPrefix(string(b), "PLASMA-BASE-IMAGE") || len(b) != 64*mib {
		t.Fatalf("overlay content: %d bytes, prefix %q", len(b), b[:20])
	}
	// Same size as the image when size is 0.
	if d0, err := s.CreateDisk(ctx, PoolShared, "vm1-data", "tiny.raw", 0); err != nil || d0.VirtualSize != 16*mib {
		t.Fatalf("size 0: %+v %v", d0, err)
	}
	if _, err := s.CreateDisk(ctx, PoolShared, "vm1-root", "tiny.raw", 0); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate disk: %v, want ErrExists", err)
	}
	if err := s.DeleteDisk(ctx, PoolShared, "vm1-root"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(d.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("overlay still there: %v", err)
	}
	if _, err := s.Disk(ctx, PoolShared, "vm1-root"); !errors.Is(err, ErrUnknownDisk) {
		t.Fatalf("deleted disk: %v", err)
	}
	if err := s.DeleteDisk(ctx, PoolShared, "vm1-root"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := os.Stat(im.Path); err != nil {
		t.Fatalf("base image removed with the overlay: %v", err)
	}
	ims, err := s.Images(ctx, PoolShared)
	if err != nil || len(ims) != 1 || ims[0].Name != "tiny.raw" {
		t.Fatalf("images = %+v, %v", ims, err)
	}
}

func TestValidation(t *testing.T) {
	s, src := newStore(t)
	ctx := context.Background()
	if _, err := s.RegisterImage(ctx, PoolLocal, "base", src); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name              string
		pool, id, image   string
		size              int64
		want              error
		mustNameInMessage string
	}{
		{"unknown pool", "nfs", "d1", "base", 0, ErrUnknownPool, `"nfs"`},
		{"unknown image", PoolLocal, "d1", "debian", 0, ErrUnknownImage, `"debian"`},
		{"image of another pool", PoolShared, "d1", "base", 0, ErrUnknownImage, `"shared"`},
		{"smaller than image", PoolLocal, "d1", "base", mib, ErrBadSize, "smaller than image"},
		{"negative size", PoolLocal, "d1", "base", -1, ErrBadSize, "negative"},
		{"path in id", PoolLocal, "../etc/x", "base", 0, ErrBadName, "disk name"},
		{"empty id", PoolLocal, "", "base", 0, ErrBadName, "disk name"},
		{"path in image", PoolLocal, "d1", "../base", 0, ErrBadName, "image name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.CreateDisk(ctx, tt.pool, tt.id, tt.image, tt.size)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.mustNameInMessage) {
				t.Fatalf("err = %v, want %v naming %s", err, tt.want, tt.mustNameInMessage)
			}
		})
	}
	ents, _ := os.ReadDir(filepath.Join(s.pools[PoolLocal], "disks"))
	if len(ents) != 0 {
		t.Fatalf("failed creates left files: %v", ents)
	}
	if _, err := s.RegisterImage(ctx, PoolLocal, "missing", "/nonexistent/file"); err == nil {
		t.Fatal("registering a missing file succeeded")
	}
	if _, err := New(Config{Pools: map[string]string{"local": "relative/dir"}}); err == nil {
		t.Fatal("relative pool directory accepted")
	}
}

func TestConcurrentCreateOneWins(t *testing.T) {
	s, src := newStore(t)
	ctx := context.Background()
	if _, err := s.RegisterImage(ctx, PoolLocal, "base", src); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { _, errs[i] = s.CreateDisk(ctx, PoolLocal, "same", "base", 0) })
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrExists):
			t.Fatalf("unexpected error %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d creates succeeded, want 1 (%v)", ok, errs)
	}
}
