package driver

import (
	"fmt"
	"path/filepath"
	"regexp"
)

// Spec is everything the driver needs to define a VM's domain.
type Spec struct {
	// ID is PlasmaVMC's VM id: letters, digits, '-', '_', '.', at most 64.
	ID string
	// Name is the VM's human name (kept in the metadata only).
	Name string
	// Generation is the spec's version in the control plane (kept in the metadata).
	Generation int64
	// UUID is the domain UUID; empty lets libvirt choose. Keep it stable across hosts so a
	// migrated or failed-over VM keeps its identity.
	UUID string
	// Labels are copied into the metadata.
	Labels map[string]string

	VCPUs     int
	MemoryMiB int

	// Kernel boot when Kernel is set (Initrd and Cmdline optional); disk boot from the first
	// disk otherwise.
	Kernel, Initrd, Cmdline string

	// Disks are attached as virtio disks vda, vdb, ... in order.
	Disks []Disk
	// NICs: placeholder until PlasmaVMC has networking.
	NICs []NIC

	// Watchdog is the action of the i6300esb watchdog device when the guest stops feeding it.
	// Empty means WatchdogReset.
	Watchdog WatchdogAction
}

// Disk is one disk image attached to the VM.
type Disk struct {
	// Path is the image file (a qcow2 overlay from the storage package).
	Path string
	// Format is the image format (default "qcow2").
	Format string
	// ReadOnly attaches the disk read-only.
	ReadOnly bool
}

// NIC is a network interface. Only NICUser (QEMU user-mode networking, no host setup) exists
// for now; a PlasmaCloud port id is carried along for later.
type NIC struct {
	PortID string
	Mode   NICMode
	// MAC, optional; libvirt chooses when empty.
	MAC string
}

// NICMode selects how a NIC is connected.
type NICMode string

// NIC modes.
const NICUser NICMode = "user"

// WatchdogAction is what QEMU does when the guest watchdog fires.
type WatchdogAction string

// Watchdog actions (libvirt's names).
const (
	WatchdogReset    WatchdogAction = "reset"
	WatchdogPoweroff WatchdogAction = "poweroff"
	WatchdogPause    WatchdogAction = "pause"
	WatchdogNone     WatchdogAction = "none"
)

var (
	idRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	macRE  = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
)

// Validate reports the first problem with s, naming the field, as ErrInvalidSpec.
func (s Spec) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidSpec}, args...)...)
	}
	if err := validID(s.ID); err != nil {
		return err
	}
	if s.UUID != "" && !uuidRE.MatchString(s.UUID) {
		return bad("uuid %q is not a UUID", s.UUID)
	}
	if s.VCPUs < 1 || s.VCPUs > 256 {
		return bad("vcpus %d out of range 1..256", s.VCPUs)
	}
	if s.MemoryMiB < 16 || s.MemoryMiB > 4<<20 {
		return bad("memory %d MiB out of range 16 MiB..4 TiB", s.MemoryMiB)
	}
	if s.Kernel == "" && (s.Initrd != "" || s.Cmdline != "") {
		return bad("initrd or cmdline without a kernel")
	}
	if s.Kernel == "" && len(s.Disks) == 0 {
		return bad("no kernel and no disk to boot from")
	}
	for _, p := range []string{s.Kernel, s.Initrd} {
		if p != "" && !filepath.IsAbs(p) {
			return bad("kernel/initrd path %q is not absolute", p)
		}
	}
	if len(s.Disks) > 20 {
		return bad("%d disks, at most 20", len(s.Disks))
	}
	for i, d := range s.Disks {
		if !filepath.IsAbs(d.Path) {
			return bad("disk %d: path %q is not absolute", i, d.Path)
		}
		switch d.Format {
		case "", "qcow2", "raw":
		default:
			return bad("disk %d: format %q (want qcow2 or raw)", i, d.Format)
		}
	}
	for i, n := range s.NICs {
		if n.Mode != NICUser {
			return bad("nic %d: mode %q (only %q for now)", i, n.Mode, NICUser)
		}
		if n.MAC != "" && !macRE.MatchString(n.MAC) {
			return bad("nic %d: mac %q", i, n.MAC)
		}
	}
	switch s.Watchdog {
	case "", WatchdogReset, WatchdogPoweroff, WatchdogPause, WatchdogNone:
	default:
		return bad("watchdog action %q (want reset, poweroff, pause or none)", s.Watchdog)
	}
	return nil
}

func validID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("%w: id %q (letters, digits, '_', '.', '-'; 1 to 64, starting with a letter or digit)", ErrInvalidSpec, id)
	}
	return nil
}
