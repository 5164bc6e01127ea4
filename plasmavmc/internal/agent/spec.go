package agent

import (
	"context"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/state"
	"plasmacloud.dev/plasmavmc/internal/storage"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// errPermanent marks a failure that retrying the same spec cannot fix (unknown image,
// invalid spec): the VM is FAILED with the reason until its generation changes.
var errPermanent = errors.New("agent: cannot run this spec")

// permanent reports whether err is one that retrying cannot fix.
func permanent(err error) bool {
	return errors.Is(err, errPermanent) || errors.Is(err, driver.ErrInvalidSpec) ||
		errors.Is(err, storage.ErrUnknownImage) || errors.Is(err, storage.ErrUnknownPool) ||
		errors.Is(err, storage.ErrBadSize) || errors.Is(err, storage.ErrBadName) ||
		errors.Is(err, state.ErrNotFound) || errors.Is(err, state.ErrCorrupt)
}

// HostLabel is the domain metadata label naming the host whose agent defined (or adopted)
// the domain. An agent only ever adopts or removes unassigned domains carrying its own
// host name, so agents of several (fake) hosts, or tests, may share one libvirtd. Next to
// it every domain carries state.LabelEpoch (the placement epoch it runs at) and, for HA
// VMs, state.LabelFailover=true (see epoch.go).
const HostLabel = "plasmavmc.io/host"

// diskID is the storage id of disk d of VM id.
func diskID(vmID, disk string) string { return vmID + "-" + disk }

var uuidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// imagePath resolves a registered image to its file in the pool's directory on this host.
func (a *agent) imagePath(ctx context.Context, pool, name string) (*pb.Image, string, error) {
	dir, ok := a.cfg.Pools[pool]
	if !ok {
		return nil, "", fmt.Errorf("%w: pool %q is not on host %q (have %s)", errPermanent, pool, a.cfg.HostName,
			strings.Join(a.store.Pools(), ", "))
	}
	img, err := a.st.GetImage(ctx, pool, name)
	if err != nil {
		return nil, "", err
	}
	rel := img.Path
	if rel == "" {
		rel = path.Join("images", name)
	}
	clean := path.Clean(rel)
	if path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
		return nil, "", fmt.Errorf("%w: image %q in pool %q: path %q leaves the pool", errPermanent, name, pool, img.Path)
	}
	return img, filepath.Join(dir, filepath.FromSlash(clean)), nil
}

// buildSpec turns a VM record into a driver spec, creating its disks (qcow2 overlays of
// registered images) when they do not exist yet. Existing disks are kept as they are.
func (a *agent) buildSpec(ctx context.Context, vm *pb.VM) (driver.Spec, error) {
	spec := vm.GetSpec()
	s := driver.Spec{
		ID:         vm.GetId(),
		Name:       vm.GetName(),
		Generation: vm.GetGeneration(),
		Labels:     domainLabels(vm, a.cfg.HostName),
		VCPUs:      int(spec.GetVcpus()),
		MemoryMiB:  int(spec.GetMemoryMib()),
	}
	if uuidRE.MatchString(vm.GetId()) {
		s.UUID = vm.GetId() // stable identity across hosts (failover, migration)
	}
	switch spec.GetWatchdog() {
	case pb.WatchdogAction_WATCHDOG_ACTION_POWEROFF:
		s.Watchdog = driver.WatchdogPoweroff
	case pb.WatchdogAction_WATCHDOG_ACTION_NONE:
		s.Watchdog = driver.WatchdogNone
	default:
		s.Watchdog = driver.WatchdogReset
	}
	for _, n := range spec.GetNics() {
		s.NICs = append(s.NICs, driver.NIC{PortID: n.GetPortId(), Mode: driver.NICUser})
	}
	for _, d := range spec.GetDisks() {
		if d.GetImage() == "" {
			return s, fmt.Errorf("%w: disk %q: blank disks (no image) are not supported yet", errPermanent, d.GetName())
		}
		id := diskID(vm.GetId(), d.GetName())
		disk, err := a.store.Disk(ctx, d.GetPool(), id)
		if errors.Is(err, storage.ErrUnknownDisk) {
			img, file, ierr := a.imagePath(ctx, d.GetPool(), d.GetImage())
			if ierr != nil {
				return s, fmt.Errorf("disk %q: %w", d.GetName(), ierr)
			}
			if filepath.Dir(file) != filepath.Join(a.cfg.Pools[d.GetPool()], "images") {
				return s, fmt.Errorf("%w: disk %q: image %q is at %q, not in the pool's images/ directory", errPermanent,
					d.GetName(), img.GetName(), img.GetPath())
			}
			disk, err = a.store.CreateDisk(ctx, d.GetPool(), id, filepath.Base(file), d.GetSizeGib()<<30)
			if errors.Is(err, storage.ErrExists) {
				disk, err = a.store.Disk(ctx, d.GetPool(), id)
			}
		}
		if err != nil {
			return s, fmt.Errorf("disk %q: %w", d.GetName(), err)
		}
		s.Disks = append(s.Disks, driver.Disk{Path: disk.Path, Format: "qcow2"})
	}
	if b := spec.GetBoot(); b.GetKernelImage() != "" {
		pool := storage.PoolLocal
		if ds := spec.GetDisks(); len(ds) > 0 {
			pool = ds[0].GetPool()
		}
		_, k, err := a.imagePath(ctx, pool, b.GetKernelImage())
		if err != nil {
			return s, fmt.Errorf("kernel: %w", err)
		}
		s.Kernel, s.Cmdline = k, b.GetCmdline()
		if b.GetInitrdImage() != "" {
			_, i, err := a.imagePath(ctx, pool, b.GetInitrdImage())
			if err != nil {
				return s, fmt.Errorf("initrd: %w", err)
			}
			s.Initrd = i
		}
	}
	return s, s.Validate()
}

// deleteDisks removes the VM's disks (idempotent).
func (a *agent) deleteDisks(ctx context.Context, vm *pb.VM) error {
	for _, d := range vm.GetSpec().GetDisks() {
		if _, ok := a.cfg.Pools[d.GetPool()]; !ok {
			continue
		}
		if err := a.store.DeleteDisk(ctx, d.GetPool(), diskID(vm.GetId(), d.GetName())); err != nil {
			return err
		}
	}
	return nil
}
