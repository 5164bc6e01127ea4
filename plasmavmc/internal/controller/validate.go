package controller

import (
	"crypto/rand"
	"fmt"
	"path"
	"regexp"
	"strings"

	"connectrpc.com/connect"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

var (
	nameRE      = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	uuidRE      = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	requestIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
)

// Pools are the storage pools PlasmaVMC knows.
var Pools = []string{"local", "shared"}

// Image formats.
var imageFormats = map[string]bool{"qcow2": true, "raw": true, "kernel": true, "initrd": true}

// minMemoryMiB is the smallest VM.
const minMemoryMiB = 16

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func checkName(field, v string) error {
	if v == "" {
		return invalid(field, "required")
	}
	if !nameRE.MatchString(v) {
		return invalid(field, "%q must match %s", v, nameRE)
	}
	return nil
}

func checkID(field, v string) error {
	if v == "" {
		return invalid(field, "required")
	}
	if !uuidRE.MatchString(v) {
		return invalid(field, "%q is not a UUID", v)
	}
	return nil
}

func knownPool(p string) bool {
	for _, k := range Pools {
		if p == k {
			return true
		}
	}
	return false
}

func checkPool(field, p string) error {
	if p == "" {
		return invalid(field, "required")
	}
	if !knownPool(p) {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s: pool %q not found (pools: %s)", field, p, strings.Join(Pools, ", ")))
	}
	return nil
}

// checkCreateSyntax checks everything of a create that needs no reads.
func checkCreateSyntax(r *pb.CreateVMRequest) error {
	if r.RequestId == "" {
		return invalid("request_id", "required (a client-chosen id, UUID recommended)")
	}
	if !requestIDRE.MatchString(r.RequestId) {
		return invalid("request_id", "%q must match %s", r.RequestId, requestIDRE)
	}
	if err := checkName("name", r.Name); err != nil {
		return err
	}
	if err := checkName("project", r.Project); err != nil {
		return err
	}
	for k, v := range r.Labels {
		if err := checkName("labels", k); err != nil {
			return err
		}
		if len(v) > 256 {
			return invalid("labels["+k+"]", "value longer than 256 bytes")
		}
	}
	s := r.Spec
	if s == nil {
		return invalid("spec", "required")
	}
	if s.Vcpus < 1 {
		return invalid("spec.vcpus", "%d: at least 1", s.Vcpus)
	}
	if s.Vcpus > 1024 {
		return invalid("spec.vcpus", "%d: at most 1024", s.Vcpus)
	}
	if s.MemoryMib < minMemoryMiB {
		return invalid("spec.memory_mib", "%d: at least %d", s.MemoryMib, minMemoryMiB)
	}
	seen := map[string]bool{}
	for i, d := range s.Disks {
		f := fmt.Sprintf("spec.disks[%d]", i)
		if err := checkName(f+".name", d.Name); err != nil {
			return err
		}
		if seen[d.Name] {
			return invalid(f+".name", "%q used twice", d.Name)
		}
		seen[d.Name] = true
		if err := checkPool(f+".pool", d.Pool); err != nil {
			return err
		}
		if d.SizeGib < 0 {
			return invalid(f+".size_gib", "%d: negative", d.SizeGib)
		}
		if d.Image == "" && d.SizeGib == 0 {
			return invalid(f+".size_gib", "a blank disk (no image) needs a size")
		}
		if d.Image != "" {
			if err := checkName(f+".image", d.Image); err != nil {
				return err
			}
		}
	}
	b := s.Boot
	if b.GetKernelImage() == "" {
		if b.GetInitrdImage() != "" {
			return invalid("spec.boot.initrd_image", "needs spec.boot.kernel_image")
		}
		if len(s.Disks) == 0 {
			return invalid("spec.disks", "a VM without spec.boot.kernel_image boots from its first disk: give one")
		}
	} else {
		if err := checkName("spec.boot.kernel_image", b.KernelImage); err != nil {
			return err
		}
		if b.InitrdImage != "" {
			if err := checkName("spec.boot.initrd_image", b.InitrdImage); err != nil {
				return err
			}
		}
	}
	if len(b.GetCmdline()) > 4096 {
		return invalid("spec.boot.cmdline", "longer than 4096 bytes")
	}
	for i, n := range s.Nics {
		if n.PortId == "" {
			return invalid(fmt.Sprintf("spec.nics[%d].port_id", i), "required")
		}
	}
	if h := s.Ha; h != nil {
		if h.MaxRestarts < 0 {
			return invalid("spec.ha.max_restarts", "%d: negative", h.MaxRestarts)
		}
		if h.RestartWindowSeconds < 0 {
			return invalid("spec.ha.restart_window_seconds", "%d: negative", h.RestartWindowSeconds)
		}
	}
	for i, a := range s.AntiAffinity {
		k, v, ok := strings.Cut(a, "=")
		if !ok || !nameRE.MatchString(k) || v == "" {
			return invalid(fmt.Sprintf("spec.anti_affinity[%d]", i), "%q must be key=value with key matching %s", a, nameRE)
		}
	}
	return nil
}

// bootPool is the pool the kernel and initrd images are looked up in.
func bootPool(s *pb.VMSpec) string {
	if len(s.Disks) > 0 {
		return s.Disks[0].Pool
	}
	return "local"
}

// checkImage validates an image to register.
func checkImage(img *pb.Image) error {
	if img == nil {
		return invalid("image", "required")
	}
	if err := checkName("image.name", img.Name); err != nil {
		return err
	}
	if err := checkPool("image.pool", img.Pool); err != nil {
		return err
	}
	if !imageFormats[img.Format] {
		return invalid("image.format", "%q: one of qcow2, raw, kernel, initrd", img.Format)
	}
	if img.Path == "" {
		return invalid("image.path", "required")
	}
	if path.IsAbs(img.Path) || path.Clean(img.Path) != img.Path || strings.HasPrefix(img.Path, "..") {
		return invalid("image.path", "%q must be a clean path relative to the pool's directory", img.Path)
	}
	if img.SizeBytes < 0 {
		return invalid("image.size_bytes", "negative")
	}
	return nil
}
