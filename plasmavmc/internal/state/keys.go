package state

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Key prefixes of the layout. Watchers (the agent's informer, the controller's
// scheduler) follow them.
const (
	Prefix           = "/plasmavmc/"
	PrefixVMs        = "/plasmavmc/vms/"
	PrefixAssigned   = "/plasmavmc/assigned/"
	PrefixStatus     = "/plasmavmc/status/"
	PrefixNames      = "/plasmavmc/names/"
	PrefixRequests   = "/plasmavmc/requests/"
	PrefixHosts      = "/plasmavmc/hosts/"
	PrefixAlive      = "/plasmavmc/alive/"
	PrefixAlloc      = "/plasmavmc/alloc/"
	PrefixImages     = "/plasmavmc/images/"
	PrefixOperations = "/plasmavmc/operations/"
	KeyLeader        = "/plasmavmc/leader"
	// PrefixHealth holds the HA manager's HostHealth per host (controller leader).
	PrefixHealth = "/plasmavmc/health/"
	// PrefixHostEvents holds HostEvents per host and time, on a 24 h lease.
	PrefixHostEvents = "/plasmavmc/hostevents/"
	// PrefixMaintenance holds "1" per drained host (the operator's flag; the agent owns
	// /hosts/<host>).
	PrefixMaintenance = "/plasmavmc/maintenance/"
)

// Labels the controller sets on a VM record to ask its agent for one-shot actions.
const (
	// LabelReboot = "<operation id>": the agent reboots the VM once per distinct value
	// and finishes that operation.
	LabelReboot = "plasmavmc.io/reboot"
	// LabelDelete = "<operation id>": the agent destroys and undefines the domain,
	// deletes its disks, then calls [Store.AgentDeleted].
	LabelDelete = "plasmavmc.io/delete"
	// LabelStop = "<operation id>" and LabelStart = "<operation id>": the operation the
	// current power_state change belongs to; the agent finishes it when converged.
	LabelStop  = "plasmavmc.io/stop"
	LabelStart = "plasmavmc.io/start"
	// LabelStopTimeout = "<seconds>": ACPI shutdown timeout before forcing ("0": force
	// at once). Absent: 60 s.
	LabelStopTimeout = "plasmavmc.io/stop-timeout"
	// LabelCreate = "<operation id>": the create operation, finished by the agent when
	// the VM first reaches its power state (RUNNING, or STOPPED when created stopped).
	LabelCreate = "plasmavmc.io/create"
)

// Operation kinds.
const (
	OpCreate = "vm.create"
	OpStart  = "vm.start"
	OpStop   = "vm.stop"
	OpReboot = "vm.reboot"
	OpDelete = "vm.delete"
	// OpMigrate is a live migration (MigrateVM or a drain's step): the controller creates
	// it RUNNING, the source agent records progress and finishes it.
	OpMigrate = "vm.migrate"
	// OpFailover is the move of an HA VM off a fenced host (controller only); its id is
	// [FailoverOperationID] of the VM and the epoch it had on the fenced host.
	OpFailover = "vm.failover"
	// OpDrain is a host drain (Operation.host names the host).
	OpDrain = "host.drain"
)

// Domain metadata labels the agent stamps (driver.Metadata.Labels; never on VM records).
const (
	// LabelEpoch = "<VM.epoch>": the placement epoch the domain was started (or adopted)
	// at. A domain whose epoch differs from its VM's current record is a stale copy.
	LabelEpoch = "plasmavmc.io/epoch"
	// LabelFailover = "true" on domains of VMs with spec.ha.failover: the watchdog destroys
	// them when the host self-fences, without asking ChainFire.
	LabelFailover = "plasmavmc.io/failover"
)

// VMKey is the key of VM id's record.
func VMKey(id string) string { return PrefixVMs + id }

// AssignedPrefix is the prefix an agent of host follows.
func AssignedPrefix(host string) string { return PrefixAssigned + host + "/" }

// AssignedKey is the key of VM id's copy while placed on host.
func AssignedKey(host, id string) string { return AssignedPrefix(host) + id }

// StatusKey is the key of VM id's observed status.
func StatusKey(id string) string { return PrefixStatus + id }

// NameKey is the key reserving name in project.
func NameKey(project, name string) string { return PrefixNames + project + "/" + name }

// RequestKey is the key of an idempotent create's request id.
func RequestKey(requestID string) string { return PrefixRequests + requestID }

// HostKey is the key of host name's record.
func HostKey(name string) string { return PrefixHosts + name }

// AliveKey is the key of host name's heartbeat (on the agent's lease).
func AliveKey(name string) string { return PrefixAlive + name }

// AllocKey is the key of host's allocation ledger.
func AllocKey(host string) string { return PrefixAlloc + host }

// ImagePrefix is the prefix of pool's images ("" : every pool).
func ImagePrefix(pool string) string {
	if pool == "" {
		return PrefixImages
	}
	return PrefixImages + pool + "/"
}

// ImageKey is the key of image name in pool.
func ImageKey(pool, name string) string { return ImagePrefix(pool) + name }

// OperationKey is the key of operation id.
func OperationKey(id string) string { return PrefixOperations + id }

// LastSegment returns the part of key after its last "/" (the id or name).
func LastSegment(key string) string {
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		return key[i+1:]
	}
	return key
}

// ParseAssignedKey splits /plasmavmc/assigned/<host>/<id>; ok is false for any other key.
func ParseAssignedKey(key string) (host, id string, ok bool) {
	rest, found := strings.CutPrefix(key, PrefixAssigned)
	if !found {
		return "", "", false
	}
	host, id, ok = strings.Cut(rest, "/")
	return host, id, ok && host != "" && id != "" && !strings.Contains(id, "/")
}

// HealthKey is the key of host's HostHealth.
func HealthKey(host string) string { return PrefixHealth + host }

// MaintenanceKey is the key present while host is drained.
func MaintenanceKey(host string) string { return PrefixMaintenance + host }

// HostEventsPrefix is the prefix of host's events ("": every host's).
func HostEventsPrefix(host string) string {
	if host == "" {
		return PrefixHostEvents
	}
	return PrefixHostEvents + host + "/"
}

// HostEventKey is the key of host's event at t: unix nanoseconds in 20 digits, so keys
// sort by time.
func HostEventKey(host string, t time.Time) string {
	return fmt.Sprintf("%s%020d", HostEventsPrefix(host), t.UnixNano())
}

// ParseHostEventKey splits /plasmavmc/hostevents/<host>/<unix-ns>.
func ParseHostEventKey(key string) (host string, t time.Time, ok bool) {
	rest, found := strings.CutPrefix(key, PrefixHostEvents)
	if !found {
		return "", time.Time{}, false
	}
	host, ns, ok := strings.Cut(rest, "/")
	n, err := strconv.ParseInt(ns, 10, 64)
	if !ok || host == "" || err != nil {
		return "", time.Time{}, false
	}
	return host, time.Unix(0, n), true
}
