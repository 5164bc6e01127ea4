package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// Operation kinds whose end is written by an agent (or by the scheduler) and which the
// leader fails when they run past HAConfig.OperationTimeout, so that no operation stays
// RUNNING for ever when its agent is gone or never acts. vm.migrate has its own deadline
// (its timeout plus MigrationGrace); vm.failover ends in its move's txn; host.drain is run
// by the leader itself and ends when the host is empty or nothing more can move.
var agentOps = map[string]bool{
	"vm.create": true, "vm.start": true, "vm.stop": true, "vm.reboot": true, "vm.delete": true,
}

// deadlineEvery spaces the scans of every operation (the scan reads them all); shorter
// timeouts scan every half timeout.
const deadlineEvery = 10 * time.Second

// operationDeadlines fails the agent operations RUNNING for longer than
// HAConfig.OperationTimeout, with a reason saying what the VM is waiting for. The work
// itself is not cancelled: a VM still PENDING is still scheduled when room appears, a
// delete on a fenced host still completes when the host returns; only the operation
// record ends, so a caller waiting on it gets an answer.
func (c *Controller) operationDeadlines(ctx context.Context, _ int64) error {
	if c.cfg.HA.OperationTimeout <= 0 {
		return nil
	}
	now := c.now()
	every := min(deadlineEvery, c.cfg.HA.OperationTimeout/2)
	if last := c.lastDeadlineScan.Load(); last != 0 && now.Sub(time.Unix(0, last)) < every {
		return nil
	}
	c.lastDeadlineScan.Store(now.UnixNano())
	ops, err := c.st.ListOperations(ctx, "")
	if err != nil {
		return err
	}
	var errs []error
	for _, op := range ops {
		if op.State != pb.OperationState_OPERATION_STATE_RUNNING || !agentOps[op.Kind] {
			continue
		}
		age := now.Sub(op.GetStartTime().AsTime())
		if age <= c.cfg.HA.OperationTimeout {
			continue
		}
		reason := fmt.Sprintf("no final status within %v: %s", c.cfg.HA.OperationTimeout, c.waitingFor(ctx, op))
		if err := c.st.FinishOperation(ctx, op.Id, pb.OperationState_OPERATION_STATE_FAILED, reason); err != nil {
			errs = append(errs, fmt.Errorf("operation %s: %w", op.Id, err))
			continue
		}
		c.metrics.timedOutOps.Inc()
		c.log.Warn("operation timed out", "operation", op.Id, "kind", op.Kind, "vm", op.VmId, "age", age.Round(time.Second), "reason", reason)
	}
	return errors.Join(errs...)
}

// waitingFor describes what the operation's VM is waiting for, from its record.
func (c *Controller) waitingFor(ctx context.Context, op *pb.Operation) string {
	rec, err := c.st.GetVM(ctx, op.VmId)
	switch {
	case errors.Is(err, state.ErrNotFound):
		return "the VM is gone"
	case err != nil:
		return "VM unreadable: " + err.Error()
	}
	st := rec.VM.GetStatus()
	var b strings.Builder
	fmt.Fprintf(&b, "VM %s", strings.TrimPrefix(st.GetState().String(), "VM_STATE_"))
	if rec.VM.Host != "" {
		fmt.Fprintf(&b, " on host %s", rec.VM.Host)
	}
	if st.GetReason() != "" {
		fmt.Fprintf(&b, " (%s)", st.GetReason())
	}
	if rec.VM.Host != "" {
		if h, err := c.st.GetHost(ctx, rec.VM.Host); err == nil {
			if hs := h.Host.GetState(); hs != pb.HostState_HOST_STATE_UP {
				fmt.Fprintf(&b, "; host %s is %s", rec.VM.Host, strings.TrimPrefix(hs.String(), "HOST_STATE_"))
			}
		}
	}
	return b.String()
}
