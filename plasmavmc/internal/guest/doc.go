// Package guest reads what a PlasmaVMC guest says about itself: the heartbeat lines its init
// prints every second on the serial console (ttyS0) and on the virtio-serial port
// org.plasmacloud.hb:
//
//	PLASMA-HB seq=<n> boot=<uuid> up=<seconds>
//
// seq lives in guest RAM: it goes on across a live migration and restarts at 1 on a (re)boot;
// boot is the guest kernel's boot id, new on every boot. The agent uses both to report VM health
// (how fresh the last heartbeat is) and to tell "the same guest, moved" from "a new boot".
//
// A Monitor follows one source (a serial log file that QEMU writes, or the unix socket of the
// virtio-serial channel) and keeps the latest heartbeat; readers ask it with Latest or wait with
// Wait. The tiny test guest that speaks this protocol is built by scripts/guest.sh.
package guest
