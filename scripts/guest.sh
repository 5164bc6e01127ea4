#!/usr/bin/env bash
# guest.sh — build PlasmaVMC's tiny test guest into a cache directory, or reuse it.
#
#   scripts/guest.sh [DIR]          (default: bin/guest; prints DIR on stdout when done)
#
# Output in DIR:
#   vmlinux          Debian's amd64 kernel, uncompressed ELF with a PVH note (boot this one:
#                    about twice as fast as the bzImage under TCG)
#   vmlinuz          the same kernel as Debian ships it (bzImage)
#   initrd.cpio.gz   busybox-static initramfs whose /init prints a heartbeat every second
#   stamp            hash of this script: a cache built by another version is rebuilt
#
# Needs only Debian's archive: apt-get download of the kernel package (about 70 MB), and
# busybox-static, cpio, xz-utils (scripts/deps.sh installs them; this script installs any that
# are missing). Concurrent callers are serialized by a lock on DIR.lock.
#
# Heartbeat line format, on ttyS0 and on the virtio-serial port org.plasmacloud.hb if present:
#   PLASMA-HB seq=<n> boot=<uuid> up=<seconds>
# seq lives in guest RAM (it continues across live migration, resets on a reboot); boot changes on
# every boot. seq=1 is /init's first action (modules, acpid, watchdog come after it), followed once
# by "PLASMA-BOOTED boot=<uuid> up=<s>". The virtio-serial port is written by its own loop (the
# latest line once a second), so a host side that nobody reads (a unix socket with no client: the
# guest's write blocks) never stalls the serial heartbeat.
#
# Kernel command line knobs:
#   plasma.panic_after=N   kernel panic after N heartbeats (pvpanic -> GUEST_PANICKED)
#   plasma.wdt=S           load i6300esb with heartbeat=S s and feed /dev/watchdog each heartbeat;
#                          plasma.wdt_stop_after=N stops feeding after N heartbeats
#   plasma.dirty=M         keep re-dirtying M MiB of guest RAM (migration convergence tests)
#   plasma.ignore_acpi=1   ignore the ACPI power button (tests of the forced shutdown path)
# The ACPI power button otherwise powers the guest off cleanly (busybox acpid).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-${PLASMA_GUEST_DIR:-$ROOT/bin/guest}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STAMP=$(sha256sum "$0" | cut -c1-16)

exec 9>"$OUT.lock"
flock 9
if [[ -s $OUT/vmlinux && -s $OUT/initrd.cpio.gz && "$(cat "$OUT/stamp" 2>/dev/null)" == "$STAMP" ]]; then
	echo "$OUT"
	exit 0
fi

log() { echo "guest.sh: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

WORK=$(mktemp -d /tmp/plasma-guest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -q -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
need=()
{ [[ -x /bin/busybox ]] && /bin/busybox --list | grep -qx acpid; } || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	"${apt[@]}" update -qq >/dev/null
	"${apt[@]}" install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# busybox-static's /bin/busybox is static; a dynamic one would not run in the initramfs.
if ! { ldd /bin/busybox 2>&1 || true; } | grep -q 'not a dynamic'; then
	die "/bin/busybox is not static (install busybox-static)"
fi

# The concrete kernel package, e.g. linux-image-6.1.0-56-amd64 (apt lists may be missing or stale
# on a fresh machine: update once and retry).
kpkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
KPKG=${KPKG:-$(kpkg)}
if [[ -z $KPKG ]] || ! (cd "$WORK" && apt-get download "$KPKG" >/dev/null 2>&1); then
	"${apt[@]}" update -qq >/dev/null
	KPKG=$(kpkg)
	[[ -n $KPKG ]] || die "cannot resolve linux-image-amd64's kernel package"
	(cd "$WORK" && apt-get download "$KPKG" >/dev/null 2>&1) || die "apt-get download $KPKG failed"
fi
dpkg -x "$WORK"/"$KPKG"_*.deb "$WORK/k"
KVER=${KPKG#linux-image-}
cp "$WORK/k/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
# The bzImage payload is xz: extract the ELF (QEMU boots it through its PVH entry point, skipping
# real mode and in-guest decompression). xz exits non-zero on the trailing data: ignore that.
off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$WORK/vmlinuz" | head -1 | cut -d: -f1)
[[ -n $off ]] || die "no xz payload in vmlinuz-$KVER"
tail -c +$((off + 1)) "$WORK/vmlinuz" | xz -dc >"$WORK/vmlinux" 2>/dev/null || true
[[ "$(head -c 4 "$WORK/vmlinux" | od -An -c | tr -d ' ')" == '177ELF' ]] || die "vmlinux extraction failed"
MODSRC="$WORK/k/lib/modules/$KVER/kernel"

R="$WORK/root"
mkdir -p "$R"/{bin,sbin,proc,sys,dev,tmp,run,etc/acpi/PWRF,lib/modules}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [[ $a == busybox ]] || ln -sf busybox "$R/bin/$a"; done
# Modules loaded by /init, in dependency order (the .deb has no modules.dep).
MODS="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev
drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci drivers/char/virtio_console
drivers/input/evdev drivers/acpi/button drivers/watchdog/watchdog drivers/watchdog/i6300esb
drivers/misc/pvpanic/pvpanic drivers/misc/pvpanic/pvpanic-mmio drivers/misc/pvpanic/pvpanic-pci"
: >"$R/lib/modules/order"
for m in $MODS; do
	b=$(basename "$m")
	f="$MODSRC/$m.ko"
	if [[ ! -f $f && -f $f.xz ]]; then xz -dc "$f.xz" >"$WORK/$b.ko" && f="$WORK/$b.ko"; fi
	[[ -f $f ]] || die "kernel module $m missing from $KPKG"
	cp "$f" "$R/lib/modules/$b.ko"
	echo "$b.ko" >>"$R/lib/modules/order"
done

cat >"$R/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "PLASMA-POWERDOWN" > /dev/ttyS0
sync
poweroff -f
EOF
chmod +x "$R/etc/acpi/PWRF/00000080"

cat >"$R/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mount -t tmpfs -o size=1m tmpfs /tmp
# The first heartbeat comes before any other setup (module loading, acpid: about 1 s under TCG):
# the agent's restart check waits for a new boot id. The loop below continues at seq=2.
BOOT=$(cat /proc/sys/kernel/random/boot_id)
line="PLASMA-HB seq=1 boot=$BOOT up=$(cut -d' ' -f1 /proc/uptime)"
echo "$line" > /dev/ttyS0
echo "$line" > /tmp/hb
echo "PLASMA-BOOTED boot=$BOOT up=$(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
n=2
arg() { for kv in $(cat /proc/cmdline); do case "$kv" in "$1"=*) echo "${kv#*=}";; esac; done; }
PANIC_AFTER=$(arg plasma.panic_after)
WDT=$(arg plasma.wdt)
WDT_STOP=$(arg plasma.wdt_stop_after)
while read m; do
  case "$m" in i6300esb.ko) [ -n "$WDT" ] && insmod /lib/modules/$m heartbeat=$WDT 2>/dev/null;;
  *) insmod /lib/modules/$m 2>/dev/null;; esac
done < /lib/modules/order
hostname plasma-guest
[ "$(arg plasma.ignore_acpi)" = 1 ] || acpid -c /etc/acpi -l /tmp/acpid.log 2>/dev/null
VP=
for p in /sys/class/virtio-ports/*; do
  [ -e "$p/name" ] && [ "$(cat $p/name)" = org.plasmacloud.hb ] && VP=/dev/$(basename $p)
done
if [ -n "$VP" ]; then  # own loop: a write blocks while no host side is connected
  ( while :; do [ -s /tmp/hb ] && cat /tmp/hb > "$VP" 2>/dev/null; sleep 1; done ) &
fi
if [ -n "$WDT" ] && [ -e /dev/watchdog ]; then exec 3>/dev/watchdog; fi
DIRTY=$(arg plasma.dirty)
if [ -n "$DIRTY" ]; then
  mount -t tmpfs -o size=$((DIRTY+2))m tmpfs /run
  dd if=/dev/urandom of=/run/blk bs=1M count=1 2>/dev/null
  ( i=0; while :; do dd if=/run/blk of=/run/dirty bs=1M seek=$i count=1 conv=notrunc 2>/dev/null; i=$(( (i+1) % DIRTY )); done ) &
fi
while :; do
  line="PLASMA-HB seq=$n boot=$BOOT up=$(cut -d' ' -f1 /proc/uptime)"
  echo "$line" > /dev/ttyS0
  echo "$line" > /tmp/hb.new && mv /tmp/hb.new /tmp/hb
  if [ -n "$WDT" ] && { [ -z "$WDT_STOP" ] || [ "$n" -lt "$WDT_STOP" ]; }; then echo k >&3 2>/dev/null; fi
  if [ -n "$PANIC_AFTER" ] && [ "$n" -ge "$PANIC_AFTER" ]; then echo "PLASMA-PANIC" > /dev/ttyS0; echo c > /proc/sysrq-trigger; fi
  n=$((n+1))
  sleep 1
done
EOF
chmod +x "$R/init"

(cd "$R" && find . | cpio -o -H newc --quiet | gzip -6) >"$WORK/initrd.cpio.gz"
mv "$WORK/vmlinux" "$WORK/vmlinuz" "$WORK/initrd.cpio.gz" "$OUT/"
echo "$STAMP" >"$OUT/stamp"
log "built from $KPKG: vmlinux $(stat -c %s "$OUT/vmlinux") B, initrd $(stat -c %s "$OUT/initrd.cpio.gz") B"
echo "$OUT"
