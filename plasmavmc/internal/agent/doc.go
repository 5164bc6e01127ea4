// Package agent is PlasmaVMC's per-host agent (`plasmavmc-agent`): it registers its host in
// ChainFire, holds the host's heartbeat lease, follows the VMs the controller assigned to it
// and converges each through the hypervisor driver, writing what it observes back.
//
// # Pieces
//
//   - Host: /plasmavmc/hosts/<name> (capacity, pools, labels, hypervisor, version) and
//     /plasmavmc/alive/<name> = instance id on a lease of LeaseTTL kept alive; a lost
//     lease is granted again and the key put again (host.go). VMs are never stopped
//     because of the lease in this issue; onLeaseLost is where the HA issue's self-fence
//     goes.
//   - Informer: a resilience.Informer over /plasmavmc/assigned/<host>/, listed from
//     ChainFire and watched over WatchBus (or ChainFire directly), hands each VM record
//     to its worker.
//   - Workers (vm.go): one goroutine per VM, so a VM's reconciles are serialized and VMs
//     proceed in parallel. A reconcile reads the domain, then converges power state,
//     generation (redefine), reboot and delete annotations; it restarts a VM whose QEMU
//     died (policy ALWAYS, exponential backoff, at most max_restarts per window, then
//     FAILED), or leaves it STOPPED (policy NEVER). Heartbeats are read from the guest's
//     serial log (internal/guest).
//   - Writer (writer.go): statuses, delete completions and operation results go through
//     one coalescing queue retried until ChainFire answers, so nothing waits for ChainFire
//     and statuses catch up after an outage.
//
// # No orphans
//
// Domains are adopted as they run: a restarted agent lists them (once the informer has
// synced, and after every reconnect of the driver) and reconciles without restarting
// them; a domain of ours that is not assigned here is destroyed and undefined, but never
// on an informer that has not listed yet.
//
// # Concurrency
//
// Run owns everything it starts and waits for it; when its context ends it returns and
// leaves the VMs running (a canceled Run is, for the VMs, the same as a SIGKILL).
package agent
