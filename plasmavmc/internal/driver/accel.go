package driver

import (
	"bytes"
	"os"
)

// ProbeAccel picks the accelerator for this host: KVM only when /dev/kvm opens read-write, the
// CPU advertises hardware virtualization (vmx or svm) and the KVM module is not kvm-pvm (a
// paravirtualized nested KVM under which guests run about 100 times slower than TCG and then fail
// on emulation errors: measured, see docs/plasmavmc/driver.md). TCG otherwise. why explains the
// choice for the log.
func ProbeAccel() (accel Accel, why string) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return AccelTCG, "no usable /dev/kvm: " + err.Error()
	}
	f.Close()
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		return AccelTCG, "/dev/kvm is kvm-pvm (nested paravirtualization), too slow and broken for guests"
	}
	cpu, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return AccelTCG, "cannot read /proc/cpuinfo: " + err.Error()
	}
	for _, line := range bytes.Split(cpu, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("flags")) {
			continue
		}
		for _, f := range bytes.Fields(line) {
			if string(f) == "vmx" || string(f) == "svm" {
				return AccelKVM, "/dev/kvm usable and the CPU has " + string(f)
			}
		}
		break
	}
	return AccelTCG, "the CPU advertises neither vmx nor svm"
}
