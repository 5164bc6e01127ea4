package agent

import (
	"testing"

	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

func TestEpochVerdict(t *testing.T) {
	dom := func(host, epoch string) *driver.Domain {
		l := map[string]string{HostLabel: host}
		if epoch != "" {
			l[state.LabelEpoch] = epoch
		}
		return &driver.Domain{ID: "v", State: driver.StateRunning, Meta: driver.Metadata{ID: "v", Labels: l}}
	}
	vm := func(host string, epoch int64, m *pb.Migration) *pb.VM {
		return &pb.VM{Id: "v", Host: host, Epoch: epoch, Migration: m}
	}
	mig := func(src, dst string, srcEpoch int64) *pb.Migration {
		return &pb.Migration{OperationId: "op", SourceHost: src, TargetHost: dst, SourceEpoch: srcEpoch}
	}
	tests := []struct {
		name string
		vm   *pb.VM
		dom  *driver.Domain
		want verdict
	}{
		{"same epoch", vm("a", 3, nil), dom("a", "3"), verdictRun},
		{"no domain", vm("a", 3, nil), nil, verdictRun},
		{"older domain", vm("a", 3, nil), dom("a", "2"), verdictStale},
		{"older domain of another host's agent", vm("a", 3, nil), dom("b", "1"), verdictStale},
		{"newer domain: record lags", vm("a", 3, nil), dom("a", "4"), verdictWait},
		{"record names another host", vm("b", 3, nil), dom("a", "3"), verdictElsewhere},
		{"record names another host, no domain", vm("b", 3, nil), nil, verdictElsewhere},
		{"incoming", vm("b", 3, mig("b", "a", 3)), dom("b", "3"), verdictIncoming},
		{"incoming, not there yet", vm("b", 3, mig("b", "a", 3)), nil, verdictIncoming},
		{"incoming over a stale copy", vm("b", 3, mig("b", "a", 3)), dom("a", "1"), verdictStale},
		{"migration abandoned by a failover", vm("c", 4, mig("b", "a", 3)), dom("b", "3"), verdictElsewhere},
		{"switched: adopt", vm("a", 4, mig("b", "a", 3)), dom("b", "3"), verdictAdopt},
		{"switched and adopted", vm("a", 4, mig("b", "a", 3)), dom("a", "4"), verdictRun},
		{"source after the switch", vm("b", 4, mig("a", "b", 3)), dom("a", "3"), verdictElsewhere},
		{"source while migrating", vm("a", 3, mig("a", "b", 3)), dom("a", "3"), verdictRun},
		{"pre-epoch domain, epoch 1", vm("a", 1, nil), dom("a", ""), verdictAdopt},
		{"pre-epoch domain, epoch 0", vm("a", 0, nil), dom("a", ""), verdictRun},
		{"pre-epoch domain after a move", vm("a", 2, nil), dom("a", ""), verdictStale},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := epochVerdict("a", tt.vm, tt.dom); got != tt.want {
				t.Fatalf("epochVerdict = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFenceable(t *testing.T) {
	d := func(st driver.State, labels map[string]string) driver.Domain {
		return driver.Domain{ID: "v", State: st, Meta: driver.Metadata{Labels: labels}}
	}
	ha := map[string]string{HostLabel: "a", state.LabelFailover: "true"}
	tests := []struct {
		name string
		d    driver.Domain
		want bool
	}{
		{"running HA domain of the host", d(driver.StateRunning, ha), true},
		{"paused HA domain of the host", d(driver.StatePaused, ha), true},
		{"stopped", d(driver.StateShutoff, ha), false},
		{"not HA", d(driver.StateRunning, map[string]string{HostLabel: "a"}), false},
		{"another host's", d(driver.StateRunning, map[string]string{HostLabel: "b", state.LabelFailover: "true"}), false},
		{"incoming to the host", d(driver.StatePaused, map[string]string{HostLabel: "b", state.LabelFailover: "true",
			LabelMigrationTarget: "a"}), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fenceable(tt.d, "a"); got != tt.want {
				t.Fatalf("fenceable = %v, want %v", got, tt.want)
			}
		})
	}
}
