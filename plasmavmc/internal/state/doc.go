// Package state is PlasmaVMC's layout in ChainFire as typed helpers, shared by the
// controller (`plasmavmc server`) and the agents (`plasmavmc-agent`).
//
// # Layout
//
// Everything lives under /plasmavmc/ (docs/dev/plasmavmc-brief.md); values are the
// protojson of plasmavmcv1 messages unless noted:
//
//	/plasmavmc/vms/<id>                 VM without status (spec, power_state, host, generation, labels)   controller
//	/plasmavmc/assigned/<host>/<id>     copy of the VM record while it is placed on host                 controller, same txn as /vms/<id>
//	/plasmavmc/status/<id>              VMStatus                                                         agent (controller: PENDING, SCHEDULED, FAILED-unschedulable)
//	/plasmavmc/names/<project>/<name>   VM id (plain text)                                               controller
//	/plasmavmc/requests/<request_id>    {"vm_id","operation_id"} JSON on a 24 h lease                    controller
//	/plasmavmc/hosts/<name>             Host (migration_uri, state_dir, rejoined_instance)               agent
//	/plasmavmc/alive/<name>             agent instance id (plain text) on the agent's lease              agent
//	/plasmavmc/alloc/<host>             Resources: the scheduler's ledger, changed only by CAS txns      controller
//	/plasmavmc/images/<pool>/<name>     Image                                                            controller
//	/plasmavmc/operations/<id>          Operation                                                        controller creates; agent or controller finishes
//	/plasmavmc/leader                   controller replica id on a lease                                 controller election
//	/plasmavmc/health/<host>            HostHealth: the HA manager's state of the host                   controller leader
//	/plasmavmc/hostevents/<host>/<ns>   HostEvent (unix ns, 20 digits) on a 24 h lease                   controller leader
//	/plasmavmc/maintenance/<host>       "1" while the host is drained                                    controller (drain/undrain)
//
// # Consistency
//
// Every multi-key change is one ChainFire transaction guarded by revision compares,
// so concurrent controllers (and a controller racing an agent) never interleave half
// a change: the create txn requires the VM, name and request keys absent; the schedule
// txn compares the ModRevision of /alloc/<host> and of /vms/<id> it read; status writes
// by agents require /assigned/<host>/<id> to exist, so a late write cannot resurrect
// the status of a VM that was deleted or moved.
//
// # Epochs and moves
//
// VM.epoch is 1 at the first placement and +1 at every change of host: a failover or
// a drain's move ([BuildMove]) and the switch at the end of a live migration
// ([Store.CompleteMigration], by the source agent). Each is one txn comparing the
// record's ModRevision (and every ledger it changes), so a move happens exactly once.
// While a migration is in flight (VM.migration set) the target host holds an assigned
// copy too ([BuildMigrationStart]); the controller's finalization
// ([BuildMigrationDone], [BuildMigrationAbort]) clears the field and releases the
// reservation of the host the VM no longer uses.
//
// # Concurrency
//
// A [Store] holds no cached state and is safe for concurrent use; it shares the
// ChainFire client the caller owns (and closes). The Build* functions are pure.
//
// # Errors
//
// Failures to reach ChainFire wrap [ErrUnavailable]; a missing object wraps
// [ErrNotFound]; a lost compare-and-swap wraps [ErrConflict]; a value that does not
// decode wraps [ErrCorrupt].
package state
