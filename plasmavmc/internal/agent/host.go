package agent

import (
	"bufio"
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// hostRecord is what the agent registers in /plasmavmc/hosts/<name>.
func (a *agent) hostRecord() *pb.Host {
	vcpus, mem := a.cfg.CapacityVCPUs, a.cfg.CapacityMemoryMiB
	if vcpus == 0 {
		vcpus = int32(runtime.NumCPU())
	}
	if mem == 0 {
		mem = hostMemoryMiB()
	}
	return &pb.Host{
		Name:          a.cfg.HostName,
		State:         pb.HostState_HOST_STATE_UP,
		Capacity:      &pb.Resources{Vcpus: vcpus, MemoryMib: mem},
		Pools:         a.store.Pools(),
		Labels:        a.cfg.Labels,
		AgentVersion:  a.cfg.Version,
		Hypervisor:    hypervisor(a.drv.Accel()),
		LastHeartbeat: a.st.Now(),
	}
}

// hypervisor names the host's hypervisor in the host record: "qemu-kvm" or "qemu-tcg".
func hypervisor(accel driver.Accel) string {
	if accel == driver.AccelKVM {
		return "qemu-kvm"
	}
	return "qemu-tcg"
}

// hostMemoryMiB reads MemTotal from /proc/meminfo (0 when unreadable).
func hostMemoryMiB() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb / 1024
		}
	}
	return 0
}

// register writes the host record, retrying until ChainFire answers or ctx ends.
func (a *agent) register(ctx context.Context) {
	retry(ctx, a.log, "register host", func(ctx context.Context) error {
		return a.st.RegisterHost(ctx, a.hostRecord())
	})
	a.log.Info("host registered", "host", a.cfg.HostName)
}

// holdLease keeps /plasmavmc/alive/<host> = instance id on a lease of LeaseTTL, renewed
// continuously, until ctx ends. When the lease is lost (it expired while ChainFire could
// not be reached, or was revoked) a new one is granted and the key put again.
//
// Running VMs are never touched here. Self-fencing (issue 7: stop HA VMs when the lease
// cannot be renewed before it expires) hooks in at onLeaseLost and at the renewal
// deadline tracked by leaseValidUntil.
func (a *agent) holdLease(ctx context.Context) {
	ttl := int64(a.cfg.LeaseTTL / time.Second)
	for ctx.Err() == nil {
		var lease int64
		retry(ctx, a.log, "grant heartbeat lease", func(ctx context.Context) error {
			resp, err := a.cf.Grant(ctx, ttl)
			if err != nil {
				return err
			}
			lease = resp.ID
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		a.m.leaseGrants.Inc()
		retry(ctx, a.log, "put heartbeat key", func(ctx context.Context) error {
			_, err := a.cf.Put(ctx, state.AliveKey(a.cfg.HostName), a.instance, chainfire.WithLease(lease))
			return err
		})
		if ctx.Err() != nil {
			return
		}
		a.log.Info("heartbeat lease held", "lease_id", strconv.FormatInt(lease, 16), "ttl", a.cfg.LeaseTTL)
		a.leaseValidUntil.Store(time.Now().Add(a.cfg.LeaseTTL).UnixNano())
		// Keep the host record's capacity and versions current on each (re)grant.
		go a.register(ctx)
		ch, err := a.cf.KeepAlive(ctx, lease)
		if err != nil {
			a.log.Warn("heartbeat lease keepalive failed to start; granting a new lease", "err", err)
			continue
		}
		for resp := range ch {
			a.m.leaseRenewals.Inc()
			a.leaseValidUntil.Store(time.Now().Add(time.Duration(resp.TTL) * time.Second).UnixNano())
		}
		if ctx.Err() != nil {
			return
		}
		a.onLeaseLost(lease)
	}
}

// onLeaseLost is called when the heartbeat lease is gone. In this issue it only logs: the
// VMs keep running, and holdLease grants a new lease. The HA issue's self-fence goes here.
func (a *agent) onLeaseLost(lease int64) {
	a.log.Warn("heartbeat lease lost; granting a new one (VMs keep running)", "lease_id", strconv.FormatInt(lease, 16))
}

// retry calls f with a bounded context until it succeeds or ctx ends, backing off
// from 100 ms to 5 s between attempts.
func retry(ctx context.Context, log interface {
	Warn(msg string, args ...any)
}, what string, f func(ctx context.Context) error) {
	bo := minBackoff
	for attempt := 1; ctx.Err() == nil; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, writeTimeout)
		err := f(cctx)
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			return
		}
		if attempt == 1 || attempt%10 == 0 {
			log.Warn(what+" failed; retrying", "attempt", attempt, "err", err)
		}
		sleepCtx(ctx, bo)
		bo = min(2*bo, maxBackoff)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
