package agent

import (
	"bufio"
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"plasmacloud.dev/plasmavmc/internal/driver"
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
		Name:             a.cfg.HostName,
		State:            pb.HostState_HOST_STATE_UP,
		Capacity:         &pb.Resources{Vcpus: vcpus, MemoryMib: mem},
		Pools:            a.store.Pools(),
		Labels:           a.cfg.Labels,
		AgentVersion:     a.cfg.Version,
		Hypervisor:       hypervisor(a.drv.Accel()),
		LastHeartbeat:    a.st.Now(),
		MigrationUri:     a.cfg.MigrationURI,
		StateDir:         a.cfg.StateDir,
		RejoinedInstance: a.rejoinedInstance(),
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
