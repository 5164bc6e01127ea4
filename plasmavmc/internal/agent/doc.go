// Package agent is PlasmaVMC's per-host agent (`plasmavmc-agent`): it registers its host in
// ChainFire, holds the host's heartbeat lease, follows the VMs the controller assigned to it
// and converges each through the hypervisor driver, writing what it observes back.
//
// # Pieces
//
//   - Host (host.go, lease.go): /plasmavmc/hosts/<name> (capacity, pools, labels,
//     hypervisor, version, migration_uri, state_dir, rejoined_instance) and
//     /plasmavmc/alive/<name> = instance id on a lease of LeaseTTL, renewed every
//     LeaseTTL/5; each renewal pets the watchdog.
//   - Self-fence and join (fence.go): when the lease is lost, or not renewed by its fence
//     deadline (last renewal sent + TTL - FenceMargin), the agent destroys the host's HA
//     domains, starts nothing, and rejoins: new lease, new instance id, relist of the
//     assigned VMs at a revision after the new lease, converge, rejoined_instance. The
//     first lease of a run goes through the same join.
//   - Watchdog (watchdog.go): `plasmavmc-agent watchdog`, a process of its own (started
//     detached when it does not answer; it survives agent restarts) that destroys the
//     host's HA domains when the agent's pets stop before their validity runs out.
//   - Informer: a resilience.Informer over /plasmavmc/assigned/<host>/, listed from
//     ChainFire and watched over WatchBus (or ChainFire directly), hands each VM record
//     to its worker.
//   - Workers (vm.go): one goroutine per VM, so a VM's reconciles are serialized and VMs
//     proceed in parallel. A reconcile reads the domain, applies the epoch rule
//     (epoch.go), then converges power state, generation (redefine), reboot and delete
//     annotations; it restarts a VM whose QEMU died (policy ALWAYS, exponential backoff,
//     at most max_restarts per window, then FAILED), or leaves it STOPPED (policy NEVER).
//     Heartbeats are read from the guest's serial log (internal/guest).
//   - Live migration (migrate.go): the source's worker runs driver.Migrate on a goroutine
//     of its own, reports progress into the operation and switches ownership
//     (state.CompleteMigration) or fails the operation; the target's worker leaves the
//     incoming domain alone and adopts it after the switch (epoch.go).
//   - Writer (writer.go): statuses, delete completions and operation results go through
//     one coalescing queue retried until ChainFire answers, so nothing waits for ChainFire
//     and statuses catch up after an outage.
//
// # Epochs
//
// Every domain carries the placement epoch it runs at (metadata label
// plasmavmc.io/epoch) and, for HA VMs, plasmavmc.io/failover=true. A VM runs only while
// its record names this host at the domain's epoch; any other domain of the VM is a stale
// copy and is destroyed (then started afresh when the record names this host at a newer
// epoch), except a domain coming in by live migration (left alone, then adopted).
//
// # No orphans
//
// Domains are adopted as they run: a restarted agent lists them (once the informer has
// synced, and after every reconnect of the driver) and reconciles without restarting
// them; a domain of ours that is not assigned here is destroyed and undefined, but never
// on an informer that has not listed yet, and never a domain labelled with another host
// (one coming in by migration before its record arrives).
//
// # Concurrency
//
// Run owns everything it starts and waits for it; when its context ends it returns and
// leaves the VMs running (a canceled Run is, for the VMs, the same as a SIGKILL). The
// watchdog process is not stopped: it keeps the host safe until the next agent pets it.
package agent
