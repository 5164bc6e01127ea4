package agent

import (
	"plasmacloud.dev/plasmavmc/internal/driver"
)

// Hypervisor is what the agent needs of its hypervisor driver: [driver.Driver] plus the
// accelerator it defines domains with and whether it is connected right now.
// *driver.Libvirt is the production implementation; tests may give their own through
// [Config.Hypervisor]. Live migration and metadata updates come from the optional
// [driver.Migrator] interface, found by type assertion: without it the host can neither
// send nor adopt live-migrated VMs (migrations fail with the reason).
type Hypervisor interface {
	driver.Driver
	// Accel is the accelerator domains are defined with.
	Accel() driver.Accel
	// Connected reports whether the driver holds a live connection now.
	Connected() bool
}

var _ Hypervisor = (*driver.Libvirt)(nil)

// hvBox holds a Hypervisor for an atomic.Pointer (readiness and metrics read it while
// Run is still connecting).
type hvBox struct{ Hypervisor }
