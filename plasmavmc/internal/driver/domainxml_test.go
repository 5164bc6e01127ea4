package driver

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func goldenSpec() Spec {
	return Spec{
		ID: "vm-0001", Name: "web-1", Generation: 7, UUID: "6F1E2D3C-4B5A-4978-8695-A4B3C2D1E0F9",
		Labels:    map[string]string{"tier": "web", "app": "shop"},
		VCPUs:     1,
		MemoryMiB: 128,
		Kernel:    "/var/lib/plasmavmc/guest/vmlinux", Initrd: "/var/lib/plasmavmc/guest/initrd.cpio.gz",
		Cmdline: "console=ttyS0 quiet",
		Disks:   []Disk{{Path: "/var/lib/plasmavmc/pools/shared/disks/vm-0001-root.qcow2"}},
	}
}

func TestDomainXMLGolden(t *testing.T) {
	paths := Paths{Dir: "/run/plasmavmc/vm-0001", SerialLog: "/run/plasmavmc/vm-0001/serial.log", HeartbeatSocket: "/run/plasmavmc/vm-0001/hb.sock"}
	diskBoot := goldenSpec()
	diskBoot.Kernel, diskBoot.Initrd, diskBoot.Cmdline = "", "", ""
	diskBoot.Disks = append(diskBoot.Disks, Disk{Path: "/srv/iso.raw", Format: "raw", ReadOnly: true})
	diskBoot.NICs = []NIC{{PortID: "port-1", Mode: NICUser, MAC: "52:54:00:AA:BB:CC"}}
	diskBoot.Watchdog = WatchdogPoweroff
	diskBoot.UUID = ""
	tests := []struct {
		name  string
		spec  Spec
		accel Accel
	}{
		{"kernel-tcg", goldenSpec(), AccelTCG},
		{"disk-kvm", diskBoot, AccelKVM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DomainXML(tt.spec, tt.accel, paths)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join("testdata", tt.name+".golden.xml")
			if *update {
				if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Fatalf("domain XML differs from %s (go test -update rewrites it):\n%s", file, got)
			}
			// What the driver reads back is what it wrote.
			md, ok, err := parseMetadata(got)
			if err != nil || !ok || md.ID != tt.spec.ID || md.Name != tt.spec.Name || md.Generation != tt.spec.Generation || md.Labels["tier"] != "web" {
				t.Fatalf("metadata round trip: %+v %v %v", md, ok, err)
			}
		})
	}
}

func TestParseMetadataForeignDomain(t *testing.T) {
	_, ok, err := parseMetadata(`<domain type='kvm'><name>other</name><metadata><x:y xmlns:x="urn:other"><id>z</id></x:y></metadata></domain>`)
	if err != nil || ok {
		t.Fatalf("foreign domain: ok=%v err=%v", ok, err)
	}
	// libvirt writes our element back with its own prefix: the namespace is what counts.
	md, ok, err := parseMetadata(`<domain><metadata><pv:vm xmlns:pv="` + MetadataNamespace + `"><pv:id>a</pv:id><pv:generation>3</pv:generation></pv:vm></metadata></domain>`)
	if err != nil || !ok || md.ID != "a" || md.Generation != 3 {
		t.Fatalf("prefixed: %+v %v %v", md, ok, err)
	}
}

func TestSpecValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Spec)
		field  string
	}{
		{"bad id", func(s *Spec) { s.ID = "../x" }, "id"},
		{"empty id", func(s *Spec) { s.ID = "" }, "id"},
		{"zero vcpus", func(s *Spec) { s.VCPUs = 0 }, "vcpus 0"},
		{"tiny memory", func(s *Spec) { s.MemoryMiB = 1 }, "memory 1"},
		{"bad uuid", func(s *Spec) { s.UUID = "nope" }, "uuid"},
		{"nothing to boot", func(s *Spec) { s.Kernel, s.Initrd, s.Cmdline, s.Disks = "", "", "", nil }, "no kernel and no disk"},
		{"initrd without kernel", func(s *Spec) { s.Kernel = "" }, "without a kernel"},
		{"relative disk", func(s *Spec) { s.Disks[0].Path = "d.qcow2" }, "disk 0: path"},
		{"bad format", func(s *Spec) { s.Disks[0].Format = "vmdk" }, "format"},
		{"bad nic", func(s *Spec) { s.NICs = []NIC{{Mode: "bridge"}} }, "nic 0: mode"},
		{"bad watchdog", func(s *Spec) { s.Watchdog = "explode" }, "watchdog"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := goldenSpec()
			tt.mutate(&s)
			err := s.Validate()
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("err = %v, want ErrInvalidSpec naming %q", err, tt.field)
			}
		})
	}
	if err := goldenSpec().Validate(); err != nil {
		t.Fatalf("golden spec: %v", err)
	}
}

func TestHubResyncAfterLoss(t *testing.T) {
	var h hub
	s := h.subscribe()
	for i := 0; i < subscriberBuffer+5; i++ {
		h.publish(Event{Type: EventStarted, ID: "a"})
	}
	for i := 0; i < subscriberBuffer; i++ {
		<-s.ch
	}
	h.publish(Event{Type: EventStopped, ID: "a"})
	if ev := <-s.ch; ev.Type != EventResync {
		t.Fatalf("after loss got %v, want resync", ev.Type)
	}
	if ev := <-s.ch; ev.Type != EventStopped {
		t.Fatalf("then got %v, want stopped", ev.Type)
	}
	h.unsubscribe(s)
	if _, ok := <-s.ch; ok {
		t.Fatal("channel open after unsubscribe")
	}
}
