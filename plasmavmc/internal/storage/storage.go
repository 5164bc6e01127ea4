// Package storage manages a host's VM disks: qcow2 overlays, made with qemu-img, on registered
// base images, in named pools.
//
// A pool is a directory: "local" is per host, "shared" is a path every host mounts (NFS in
// production, one directory in tests) — the HA layer restarts and live-migrates only VMs whose
// disks are there. A pool holds two subdirectories:
//
//	images/<name>   base images, registered once, never written afterwards
//	disks/<id>.qcow2  one overlay per VM disk, whose backing file is an image of the same pool
//
// The file system is the state: there is no index to lose or repair. Methods are safe for
// concurrent use (qemu-img and atomic renames do the work); two callers creating the same disk id
// at once get one success and one ErrExists.
package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Pool names every host knows.
const (
	PoolLocal  = "local"
	PoolShared = "shared"
)

// Errors, wrapped with the name of what is wrong.
var (
	ErrUnknownPool  = errors.New("storage: unknown pool")
	ErrUnknownImage = errors.New("storage: unknown image")
	ErrUnknownDisk  = errors.New("storage: unknown disk")
	ErrBadSize      = errors.New("storage: bad size")
	ErrBadName      = errors.New("storage: bad name")
	ErrExists       = errors.New("storage: already exists")
	ErrQemuImg      = errors.New("storage: qemu-img failed")
)

// Config says where the pools are. Pools maps a pool name to its directory; it usually holds
// PoolLocal and PoolShared.
type Config struct {
	Pools map[string]string
	// QemuImg is the qemu-img binary (default: "qemu-img" from PATH).
	QemuImg string
	// Log receives one line per created or deleted file (nil discards).
	Log *slog.Logger
}

// Store is a host's view of its pools. Create it with New.
type Store struct {
	pools   map[string]string
	qemuImg string
	log     *slog.Logger
}

// Image is a registered base image.
type Image struct {
	Pool, Name, Path string
	// Format is qemu-img's name for it (raw, qcow2, ...).
	Format string
	// VirtualSize is the size the guest sees, in bytes.
	VirtualSize int64
}

// Disk is a VM disk: a qcow2 overlay on an image.
type Disk struct {
	Pool, ID, Path string
	// Image is the base image's name and BackingPath its file.
	Image, BackingPath string
	VirtualSize        int64
}

// New checks the configuration and creates each pool's directories.
func New(cfg Config) (*Store, error) {
	if len(cfg.Pools) == 0 {
		return nil, fmt.Errorf("%w: no pools configured", ErrUnknownPool)
	}
	s := &Store{pools: map[string]string{}, qemuImg: cfg.QemuImg, log: cfg.Log}
	if s.qemuImg == "" {
		s.qemuImg = "qemu-img"
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for name, dir := range cfg.Pools {
		if err := checkName("pool", name); err != nil {
			return nil, err
		}
		if !filepath.IsAbs(dir) {
			return nil, fmt.Errorf("storage: pool %q: directory %q is not absolute", name, dir)
		}
		for _, sub := range []string{"images", "disks"} {
			if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
				return nil, fmt.Errorf("storage: pool %q: %w", name, err)
			}
		}
		s.pools[name] = filepath.Clean(dir)
	}
	return s, nil
}

// Pools returns the configured pool names, sorted.
func (s *Store) Pools() []string {
	names := make([]string, 0, len(s.pools))
	for n := range s.pools {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func checkName(what, name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("%w: %s name %q (letters, digits, '_', '.', '-'; at most 128; no '..')", ErrBadName, what, name)
	}
	return nil
}

func (s *Store) pool(name string) (string, error) {
	dir, ok := s.pools[name]
	if !ok {
		return "", fmt.Errorf("%w %q (have %s)", ErrUnknownPool, name, strings.Join(s.Pools(), ", "))
	}
	return dir, nil
}

// RegisterImage copies the file at src into pool as image name (written to a temporary file and
// renamed, so a half-copied image is never visible). The format is probed with qemu-img. An
// image of that name that exists already is ErrExists: images are immutable once registered,
// since overlays depend on their content.
func (s *Store) RegisterImage(ctx context.Context, pool, name, src string) (Image, error) {
	dir, err := s.pool(pool)
	if err != nil {
		return Image{}, err
	}
	if err := checkName("image", name); err != nil {
		return Image{}, err
	}
	dst := filepath.Join(dir, "images", name)
	if _, err := os.Stat(dst); err == nil {
		return Image{}, fmt.Errorf("%w: image %q in pool %q", ErrExists, name, pool)
	}
	if _, err := s.info(ctx, src); err != nil {
		return Image{}, fmt.Errorf("storage: image source %q: %w", src, err)
	}
	tmp, err := os.CreateTemp(filepath.Join(dir, "images"), ".register-*")
	if err != nil {
		return Image{}, fmt.Errorf("storage: %w", err)
	}
	defer os.Remove(tmp.Name())
	in, err := os.Open(src)
	if err != nil {
		tmp.Close()
		return Image{}, fmt.Errorf("storage: image source: %w", err)
	}
	_, err = io.Copy(tmp, in)
	in.Close()
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o444)
	}
	if err != nil {
		return Image{}, fmt.Errorf("storage: copying image %q: %w", name, err)
	}
	// Link, not rename: two concurrent registrations of one name cannot both win.
	if err := os.Link(tmp.Name(), dst); err != nil {
		if errors.Is(err, os.ErrExist) {
			return Image{}, fmt.Errorf("%w: image %q in pool %q", ErrExists, name, pool)
		}
		return Image{}, fmt.Errorf("storage: %w", err)
	}
	s.log.Info("image registered", "pool", pool, "image", name, "path", dst)
	return s.Image(ctx, pool, name)
}

// Image returns the registered image name of pool.
func (s *Store) Image(ctx context.Context, pool, name string) (Image, error) {
	dir, err := s.pool(pool)
	if err != nil {
		return Image{}, err
	}
	if err := checkName("image", name); err != nil {
		return Image{}, err
	}
	path := filepath.Join(dir, "images", name)
	if _, err := os.Stat(path); err != nil {
		return Image{}, fmt.Errorf("%w %q in pool %q", ErrUnknownImage, name, pool)
	}
	inf, err := s.info(ctx, path)
	if err != nil {
		return Image{}, err
	}
	return Image{Pool: pool, Name: name, Path: path, Format: inf.Format, VirtualSize: inf.VirtualSize}, nil
}

// Images lists the images of pool, sorted by name.
func (s *Store) Images(ctx context.Context, pool string) ([]Image, error) {
	dir, err := s.pool(pool)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(filepath.Join(dir, "images"))
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	var out []Image
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || !e.Type().IsRegular() {
			continue
		}
		im, err := s.Image(ctx, pool, e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	return out, nil
}

// CreateDisk creates disk id in pool as a qcow2 overlay on image (of the same pool), with
// `qemu-img create -f qcow2 -F <format> -b <image> <disk> [size]`. size is the virtual size in
// bytes; 0 keeps the image's, a smaller one is ErrBadSize (qcow2 overlays cannot shrink their
// backing file's content). An existing disk id is ErrExists.
func (s *Store) CreateDisk(ctx context.Context, pool, id, image string, size int64) (Disk, error) {
	dir, err := s.pool(pool)
	if err != nil {
		return Disk{}, err
	}
	if err := checkName("disk", id); err != nil {
		return Disk{}, err
	}
	if size < 0 {
		return Disk{}, fmt.Errorf("%w: %d bytes is negative", ErrBadSize, size)
	}
	im, err := s.Image(ctx, pool, image)
	if err != nil {
		return Disk{}, err
	}
	if size != 0 && size < im.VirtualSize {
		return Disk{}, fmt.Errorf("%w: %d bytes is smaller than image %q (%d bytes)", ErrBadSize, size, image, im.VirtualSize)
	}
	path := filepath.Join(dir, "disks", id+".qcow2")
	// Claim the name first (O_EXCL), then let qemu-img write a temporary file we rename over it.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return Disk{}, fmt.Errorf("%w: disk %q in pool %q", ErrExists, id, pool)
		}
		return Disk{}, fmt.Errorf("storage: %w", err)
	}
	f.Close()
	tmp := filepath.Join(dir, "disks", "."+id+".creating")
	args := []string{"create", "-q", "-f", "qcow2", "-F", im.Format, "-b", im.Path, tmp}
	if size != 0 {
		args = append(args, strconv.FormatInt(size, 10))
	}
	if _, err := s.run(ctx, args...); err != nil {
		os.Remove(tmp)
		os.Remove(path)
		return Disk{}, err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		os.Remove(path)
		return Disk{}, fmt.Errorf("storage: %w", err)
	}
	s.log.Info("disk created", "pool", pool, "disk", id, "image", image, "path", path)
	return s.Disk(ctx, pool, id)
}

// Disk returns disk id of pool, read back from the overlay's header.
func (s *Store) Disk(ctx context.Context, pool, id string) (Disk, error) {
	dir, err := s.pool(pool)
	if err != nil {
		return Disk{}, err
	}
	if err := checkName("disk", id); err != nil {
		return Disk{}, err
	}
	path := filepath.Join(dir, "disks", id+".qcow2")
	st, err := os.Stat(path)
	if err != nil || st.Size() == 0 { // empty: a create in progress
		return Disk{}, fmt.Errorf("%w %q in pool %q", ErrUnknownDisk, id, pool)
	}
	inf, err := s.info(ctx, path)
	if err != nil {
		return Disk{}, err
	}
	return Disk{Pool: pool, ID: id, Path: path, Image: filepath.Base(inf.BackingFilename),
		BackingPath: inf.BackingFilename, VirtualSize: inf.VirtualSize}, nil
}

// DeleteDisk removes disk id of pool. Deleting a disk that does not exist is not an error (the
// agent retries deletes).
func (s *Store) DeleteDisk(ctx context.Context, pool, id string) error {
	dir, err := s.pool(pool)
	if err != nil {
		return err
	}
	if err := checkName("disk", id); err != nil {
		return err
	}
	path := filepath.Join(dir, "disks", id+".qcow2")
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("storage: %w", err)
	}
	s.log.Info("disk deleted", "pool", pool, "disk", id, "path", path)
	return nil
}

type imgInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
}

// info runs qemu-img info (-U: readable while a running QEMU holds the image's lock).
func (s *Store) info(ctx context.Context, path string) (imgInfo, error) {
	out, err := s.run(ctx, "info", "-U", "--output=json", path)
	if err != nil {
		return imgInfo{}, err
	}
	var inf imgInfo
	if err := json.Unmarshal(out, &inf); err != nil {
		return imgInfo{}, fmt.Errorf("%w: info %s: %v", ErrQemuImg, path, err)
	}
	return inf, nil
}

func (s *Store) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, s.qemuImg, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %v: %s", ErrQemuImg, s.qemuImg, args[0], err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
