package driver

import (
	"encoding/xml"
	"fmt"
	"sort"
	"strings"
)

// MetadataNamespace is the XML namespace of PlasmaVMC's element in a domain's <metadata>.
const MetadataNamespace = "https://plasmacloud.dev/xmlns/plasmavmc/v1"

// HeartbeatChannel is the name of the virtio-serial port the guest writes its heartbeat to.
const HeartbeatChannel = "org.plasmacloud.hb"

// DomainPrefix starts the libvirt name of every PlasmaVMC domain.
const DomainPrefix = "plasma-"

// Accel is the QEMU accelerator: TCG (domain type "qemu") or KVM.
type Accel string

// Accelerators.
const (
	AccelTCG Accel = "qemu"
	AccelKVM Accel = "kvm"
)

// domainXML is the subset of libvirt's domain schema PlasmaVMC writes.
type domainXML struct {
	XMLName    xml.Name    `xml:"domain"`
	Type       string      `xml:"type,attr"`
	Name       string      `xml:"name"`
	UUID       string      `xml:"uuid,omitempty"`
	Metadata   metadataXML `xml:"metadata"`
	Memory     unitValue   `xml:"memory"`
	VCPU       int         `xml:"vcpu"`
	OS         osXML       `xml:"os"`
	Features   featuresXML `xml:"features"`
	Clock      clockXML    `xml:"clock"`
	OnPoweroff string      `xml:"on_poweroff"`
	OnReboot   string      `xml:"on_reboot"`
	OnCrash    string      `xml:"on_crash"`
	Devices    devicesXML  `xml:"devices"`
	CPU        *cpuXML     `xml:"cpu,omitempty"`
}

type metadataXML struct {
	VM *vmMetaXML `xml:"https://plasmacloud.dev/xmlns/plasmavmc/v1 vm"`
}

type vmMetaXML struct {
	ID         string     `xml:"id"`
	Name       string     `xml:"name,omitempty"`
	Generation int64      `xml:"generation"`
	Labels     []labelXML `xml:"label"`
}

type labelXML struct {
	Key   string `xml:"key,attr"`
	Value string `xml:",chardata"`
}

type unitValue struct {
	Unit  string `xml:"unit,attr"`
	Value int    `xml:",chardata"`
}

type osXML struct {
	Type    osTypeXML `xml:"type"`
	Kernel  string    `xml:"kernel,omitempty"`
	Initrd  string    `xml:"initrd,omitempty"`
	Cmdline string    `xml:"cmdline,omitempty"`
	Boot    *bootXML  `xml:"boot,omitempty"`
}

type osTypeXML struct {
	Arch    string `xml:"arch,attr"`
	Machine string `xml:"machine,attr"`
	Value   string `xml:",chardata"`
}

type bootXML struct {
	Dev string `xml:"dev,attr"`
}

type featuresXML struct {
	ACPI *struct{} `xml:"acpi"`
}

type clockXML struct {
	Offset string `xml:"offset,attr"`
}

type cpuXML struct {
	Mode string `xml:"mode,attr"`
}

type devicesXML struct {
	Disks       []diskXML     `xml:"disk"`
	Controllers []controller  `xml:"controller"`
	Interfaces  []ifaceXML    `xml:"interface"`
	Serials     []serialXML   `xml:"serial"`
	Channels    []channelXML  `xml:"channel"`
	Watchdog    *watchdogXML  `xml:"watchdog"`
	Panic       *panicXML     `xml:"panic"`
	Video       *videoXML     `xml:"video"`
	Memballoon  *modelOnlyXML `xml:"memballoon"`
}

type diskXML struct {
	Type     string     `xml:"type,attr"`
	Device   string     `xml:"device,attr"`
	Driver   driverXML  `xml:"driver"`
	Source   fileSrcXML `xml:"source"`
	Target   targetXML  `xml:"target"`
	ReadOnly *struct{}  `xml:"readonly"`
}

type driverXML struct {
	Name string `xml:"name,attr"`
	Type string `xml:"type,attr"`
}

type fileSrcXML struct {
	File string `xml:"file,attr"`
}

type targetXML struct {
	Dev string `xml:"dev,attr"`
	Bus string `xml:"bus,attr"`
}

type controller struct {
	Type  string `xml:"type,attr"`
	Model string `xml:"model,attr,omitempty"`
	Index *int   `xml:"index,attr"`
}

type ifaceXML struct {
	Type  string       `xml:"type,attr"`
	MAC   *macXML      `xml:"mac"`
	Model modelTypeXML `xml:"model"`
	Alias *aliasXML    `xml:"alias"`
}

type macXML struct {
	Address string `xml:"address,attr"`
}

type modelTypeXML struct {
	Type string `xml:"type,attr"`
}

type aliasXML struct {
	Name string `xml:"name,attr"`
}

type serialXML struct {
	Type   string       `xml:"type,attr"`
	Source serialSrcXML `xml:"source"`
	Target serialTgtXML `xml:"target"`
}

type serialSrcXML struct {
	Path   string `xml:"path,attr"`
	Append string `xml:"append,attr,omitempty"`
	Mode   string `xml:"mode,attr,omitempty"`
}

type serialTgtXML struct {
	Port *int   `xml:"port,attr"`
	Type string `xml:"type,attr,omitempty"`
	Name string `xml:"name,attr,omitempty"`
}

type channelXML struct {
	Type   string       `xml:"type,attr"`
	Source serialSrcXML `xml:"source"`
	Target serialTgtXML `xml:"target"`
}

type watchdogXML struct {
	Model  string `xml:"model,attr"`
	Action string `xml:"action,attr"`
}

type panicXML struct {
	Model string `xml:"model,attr"`
}

type videoXML struct {
	Model modelTypeXML `xml:"model"`
}

type modelOnlyXML struct {
	Model string `xml:"model,attr"`
}

// DomainName is the libvirt name of VM id's domain.
func DomainName(id string) string { return DomainPrefix + id }

// DomainXML renders spec as libvirt domain XML: TCG or KVM per accel, kernel or disk boot, virtio
// disks, the serial console into paths.SerialLog, the heartbeat virtio-serial channel on
// paths.HeartbeatSocket, an i6300esb watchdog, a pvpanic device, and lifecycle actions that
// leave every restart decision to the agent (on_poweroff and on_crash destroy; a guest-initiated
// reboot stays a reboot inside the same QEMU). The output is deterministic (golden-file tested).
func DomainXML(spec Spec, accel Accel, paths Paths) (string, error) {
	if err := spec.Validate(); err != nil {
		return "", err
	}
	if accel != AccelTCG && accel != AccelKVM {
		return "", fmt.Errorf("%w: accelerator %q", ErrInvalidSpec, accel)
	}
	wd := spec.Watchdog
	if wd == "" {
		wd = WatchdogReset
	}
	d := domainXML{
		Type: string(accel),
		Name: DomainName(spec.ID),
		UUID: strings.ToLower(spec.UUID),
		Metadata: metadataXML{VM: &vmMetaXML{
			ID: spec.ID, Name: spec.Name, Generation: spec.Generation, Labels: labels(spec.Labels),
		}},
		Memory:     unitValue{Unit: "MiB", Value: spec.MemoryMiB},
		VCPU:       spec.VCPUs,
		OS:         osXML{Type: osTypeXML{Arch: "x86_64", Machine: "pc", Value: "hvm"}},
		Features:   featuresXML{ACPI: &struct{}{}},
		Clock:      clockXML{Offset: "utc"},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
	}
	if accel == AccelKVM {
		d.CPU = &cpuXML{Mode: "host-passthrough"}
	}
	if spec.Kernel != "" {
		d.OS.Kernel, d.OS.Initrd, d.OS.Cmdline = spec.Kernel, spec.Initrd, spec.Cmdline
	} else {
		d.OS.Boot = &bootXML{Dev: "hd"}
	}
	for i, disk := range spec.Disks {
		format := disk.Format
		if format == "" {
			format = "qcow2"
		}
		x := diskXML{
			Type: "file", Device: "disk",
			Driver: driverXML{Name: "qemu", Type: format},
			Source: fileSrcXML{File: disk.Path},
			Target: targetXML{Dev: "vd" + string(rune('a'+i)), Bus: "virtio"},
		}
		if disk.ReadOnly {
			x.ReadOnly = &struct{}{}
		}
		d.Devices.Disks = append(d.Devices.Disks, x)
	}
	zero := 0
	d.Devices.Controllers = []controller{
		{Type: "usb", Model: "none", Index: &zero},
		{Type: "virtio-serial", Index: &zero},
	}
	for _, n := range spec.NICs {
		x := ifaceXML{Type: "user", Model: modelTypeXML{Type: "virtio"}}
		if n.MAC != "" {
			x.MAC = &macXML{Address: strings.ToLower(n.MAC)}
		}
		d.Devices.Interfaces = append(d.Devices.Interfaces, x)
	}
	d.Devices.Serials = []serialXML{{
		Type:   "file",
		Source: serialSrcXML{Path: paths.SerialLog, Append: "off"},
		Target: serialTgtXML{Port: &zero},
	}}
	d.Devices.Channels = []channelXML{{
		Type:   "unix",
		Source: serialSrcXML{Mode: "bind", Path: paths.HeartbeatSocket},
		Target: serialTgtXML{Type: "virtio", Name: HeartbeatChannel},
	}}
	d.Devices.Watchdog = &watchdogXML{Model: "i6300esb", Action: string(wd)}
	d.Devices.Panic = &panicXML{Model: "isa"}
	d.Devices.Video = &videoXML{Model: modelTypeXML{Type: "none"}}
	d.Devices.Memballoon = &modelOnlyXML{Model: "none"}

	out, err := xml.MarshalIndent(d, "", "  ")
	if err != nil {
		return "", fmt.Errorf("driver: rendering domain XML: %w", err)
	}
	return string(out) + "\n", nil
}

func labels(m map[string]string) []labelXML {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]labelXML, 0, len(keys))
	for _, k := range keys {
		out = append(out, labelXML{Key: k, Value: m[k]})
	}
	return out
}

// parsedDomain is what the driver reads back from libvirt's XML description.
type parsedDomain struct {
	Name     string      `xml:"name"`
	UUID     string      `xml:"uuid"`
	Metadata metadataXML `xml:"metadata"`
}

// parseMetadata extracts PlasmaVMC's metadata from a domain's XML; ok is false for domains
// without it (not PlasmaVMC's).
func parseMetadata(domXML string) (Metadata, bool, error) {
	var p parsedDomain
	if err := xml.Unmarshal([]byte(domXML), &p); err != nil {
		return Metadata{}, false, fmt.Errorf("driver: parsing domain XML: %w", err)
	}
	vm := p.Metadata.VM
	if vm == nil || vm.ID == "" {
		return Metadata{}, false, nil
	}
	md := Metadata{ID: vm.ID, Name: vm.Name, Generation: vm.Generation}
	if len(vm.Labels) > 0 {
		md.Labels = map[string]string{}
		for _, l := range vm.Labels {
			md.Labels[l.Key] = l.Value
		}
	}
	return md, true, nil
}
