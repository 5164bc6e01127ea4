// Package guestlab gives tests the PlasmaVMC lab: the tiny guest (built once into a cache by
// scripts/guest.sh) and a running libvirtd (scripts/libvirt.sh, without systemd). Both need root;
// a missing privilege or a libvirtd that cannot start fails the test with the reason — it is
// never skipped silently.
package guestlab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"plasmacloud.dev/pkg/harness"
)

// Guest is the tiny guest's boot files.
type Guest struct {
	// Kernel is the uncompressed vmlinux (PVH boot, fastest under TCG).
	Kernel string
	// Initrd is the busybox initramfs whose /init prints the heartbeat.
	Initrd string
}

// Cmdline is the guest's base kernel command line; tests append knobs (plasma.panic_after=N,
// plasma.wdt=S, plasma.wdt_stop_after=N, plasma.ignore_acpi=1, plasma.dirty=M).
//
// Everything after "quiet" only shortens the boot under TCG (measured in
// docs/plasmavmc/driver.md): no console output, no KASLR, no timer/TSC checks, no Spectre
// mitigations or SMP alternatives patching, no crypto self-tests, no page zeroing on
// allocation, one 8250 UART. ACPI stays on: Shutdown and Reboot press the ACPI power button.
const Cmdline = "console=ttyS0 quiet loglevel=0 nokaslr no_timer_check tsc=reliable mitigations=off " +
	"init_on_alloc=0 random.trust_cpu=on printk.devkmsg=off 8250.nr_uarts=1 cryptomgr.notests noreplace-smp"

// Socket is the lab libvirtd's socket.
const Socket = "/run/libvirt/libvirt-sock"

// PIDFile is where scripts/libvirt.sh start records libvirtd's pid.
const PIDFile = "/run/libvirtd.pid"

var (
	buildOnce sync.Once
	guest     Guest
	buildErr  error
)

// RepoRoot returns the repository root (the directory holding go.work).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			t.Fatalf("guestlab: no go.work above %s", dir)
		}
	}
}

// BuildGuest builds the guest (or reuses the cache, bin/guest) and returns its files.
func BuildGuest(t testing.TB) Guest {
	t.Helper()
	harness.RequireRoot(t)
	buildOnce.Do(func() {
		cmd := exec.Command(filepath.Join(RepoRoot(t), "scripts", "guest.sh"))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			buildErr = err
			guest = Guest{Kernel: stderr.String()}
			return
		}
		dir := strings.TrimSpace(string(out))
		guest = Guest{Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initrd.cpio.gz")}
	})
	if buildErr != nil {
		t.Fatalf("guestlab: scripts/guest.sh: %v\n%s", buildErr, guest.Kernel)
	}
	return guest
}

// StartLibvirtd makes sure the lab libvirtd runs (installing and configuring it when needed) and
// returns its socket. It fails the test with the script's output when libvirtd cannot start.
//
// It holds the lab libvirtd shared for the rest of the process (see [ExclusiveLibvirtd]).
func StartLibvirtd(t testing.TB) string {
	t.Helper()
	harness.RequireRoot(t)
	lockLab(t, syscall.LOCK_SH)
	out, err := exec.Command(filepath.Join(RepoRoot(t), "scripts", "libvirt.sh"), "start").CombinedOutput()
	if err != nil {
		t.Fatalf("guestlab: scripts/libvirt.sh start: %v\n%s", err, out)
	}
	return Socket
}

// The lab libvirtd is one per machine, shared by every test package that go test runs in
// parallel (each package is its own process). A package that kills or restarts it takes it
// exclusively ([ExclusiveLibvirtd]); every other user holds it shared ([StartLibvirtd] does
// that), so the two never overlap. The lock is an flock(2) on LockFile, taken once per
// process and held until the process exits (the kernel drops it then, whatever happens).
const LockFile = "/run/plasmavmc-lab-libvirtd.lock"

var (
	labLockMu   sync.Mutex
	labLockMode int // 0 none, syscall.LOCK_SH or syscall.LOCK_EX
	labLockFile *os.File
)

// ExclusiveLibvirtd makes this test process the lab libvirtd's only user until it exits:
// it waits for other packages' tests that hold it shared. Call it before StartLibvirtd in
// a package that kills libvirtd.
func ExclusiveLibvirtd(t testing.TB) {
	t.Helper()
	lockLab(t, syscall.LOCK_EX)
}

// lockLab takes the lab lock in mode unless this process already holds it.
func lockLab(t testing.TB, mode int) {
	t.Helper()
	labLockMu.Lock()
	defer labLockMu.Unlock()
	if labLockMode != 0 {
		if mode == syscall.LOCK_EX && labLockMode != syscall.LOCK_EX {
			t.Fatal("guestlab: ExclusiveLibvirtd after StartLibvirtd in the same process: call it first")
		}
		return
	}
	f, err := os.OpenFile(LockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("guestlab: lab lock: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), mode); err != nil {
		f.Close()
		t.Fatalf("guestlab: lab lock: %v", err)
	}
	labLockFile, labLockMode = f, mode
}
