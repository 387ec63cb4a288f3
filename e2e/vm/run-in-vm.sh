#!/bin/sh
# run-in-vm.sh DIR CMD [ARG...]
#
# Boots Debian's stock kernel (linux-image-amd64: ESP, XFRM, AES-GCM, veth ...)
# in QEMU and runs CMD as root in DIR inside it, with the host's / shared
# read-only and DIR shared read-write over 9p (so host binaries and libraries
# work unchanged). CMD's stdout+stderr are streamed to stdout; the script exits
# with CMD's exit status (125: VM failed, 124: timeout).
#
#   run-in-vm.sh "$PWD" ./xfrm.test -test.v
#
# Environment: VM_CACHE (kernel+initrd cache, default
# /var/cache/ikefleet-vm/<checksum of the module list>), VM_MEM (MiB, 1024),
# VM_SMP (vCPUs; 2 with KVM, 1 with TCG), VM_TIMEOUT (s, 900), VM_MODULES
# (extra modules to load), VM_KERNEL_PKG (linux-image-* package), VM_ACCEL
# (tcg, the default, or kvm), VM_DEBUG=1 (show the guest console on stderr).
#
# Adapted for ikefleet from the team's shared runner: TCG unless VM_ACCEL=kvm
# (nested KVM hung at boot on the build hosts), the cache keyed by the module
# list, nftables modules for MSS clamping, named counters (nft_objref) and
# source NAT to a given address (nft_nat),
# ctnetlink (nf_conntrack_netlink: tests flush the NAT's conntrack table),
# built-in modules tolerated. The first run installs qemu-system-x86,
# busybox-static, kmod and cpio if missing and builds the cache (~1 min).
set -eu

[ $# -ge 2 ] || { echo "usage: $0 DIR CMD [ARG...]" >&2; exit 2; }
DIR=$(cd "$1" && pwd -P); shift
MODULES="esp4 esp6 xfrm_user xfrm_interface veth aesni_intel gcm ghash_clmulni_intel
 ghash_generic chacha20poly1305 chacha_x86_64 poly1305_x86_64 seqiv echainiv authenc
 authencesn ctr ecb cbc crypto_null drbg jitterentropy_rng ccm cmac sha256_ssse3 sha512_ssse3
 hmac sha256_generic sha512_generic
 nf_tables nft_chain_nat nft_masq nft_nat nft_ct nf_nat nf_conntrack nf_conntrack_netlink nft_exthdr nft_rt nft_xfrm nft_objref
 nft_queue nfnetlink_queue
 tun af_packet dummy 9p 9pnet_virtio virtio_pci ${VM_MODULES:-}"
# The cache is keyed by the module list: changing it builds a new image.
CACHE=${VM_CACHE:-/var/cache/ikefleet-vm/$(echo "$MODULES ${VM_KERNEL_PKG:-}" | cksum | cut -d' ' -f1)}

need() { # install missing host tools (Debian packages) when root
	missing=
	for t in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static \
		depmod:kmod cpio:cpio; do
		command -v "${t%%:*}" >/dev/null || missing="$missing ${t#*:}"
	done
	[ -z "$missing" ] && return
	echo "run-in-vm: installing$missing" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		$missing >&2
}

build() { # kernel + initramfs into $CACHE (once; rm -rf $CACHE to rebuild)
	b=$(mktemp -d); trap 'rm -rf "$b"' EXIT
	pkg=${VM_KERNEL_PKG:-$(apt-cache depends linux-image-amd64 |
		awk '/Depends: linux-image-/ {print $2; exit}')}
	echo "run-in-vm: building VM image from $pkg" >&2
	(cd "$b" && apt-get download -q "$pkg" >&2 2>/dev/null) ||
		{ apt-get update -q >&2 && (cd "$b" && apt-get download -q "$pkg" >&2); }
	dpkg-deb -x "$b"/*.deb "$b/k"
	kver=$(ls "$b/k/lib/modules"); km=$b/k/lib/modules/$kver
	depmod -b "$b/k" "$kver"
	r=$b/root; rm=$r/lib/modules/$kver
	mkdir -p "$r/bin" "$r/sbin" "$r/etc" "$r/proc" "$r/sys" "$r/dev" "$r/host" "$r/ctl" "$rm"
	for m in $MODULES; do
		# built-in or absent modules must not end the loop (set -e)
		modprobe -d "$b/k" -S "$kver" --show-depends "$m" 2>/dev/null ||
			echo "run-in-vm: no module $m (built in?)" >&2
	done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r f; do
		mkdir -p "$rm/$(dirname "${f#"$km"/}")"; cp "$f" "$rm/${f#"$km"/}"
	done
	cp "$km"/modules.order "$km"/modules.builtin* "$rm/"
	depmod -b "$r" "$kver"
	cp "$(command -v busybox)" "$r/bin/busybox"
	kmod=$(command -v kmod)
	for f in "$kmod" $(ldd "$kmod" | grep -o '/[^ ]*'); do
		mkdir -p "$r$(dirname "$f")"; cp -L "$f" "$r$f"
	done
	ln -s "$kmod" "$r/sbin/modprobe"
	echo $MODULES >"$r/etc/vm-modules"
	cat >"$r/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /etc/vm-modules); do modprobe -q "$m" || echo "vm: no module $m"; done
ip link set lo up; hostname vm
o=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$o" ctl /ctl && mount -t 9p -o "$o,ro" hostroot /host || {
	echo "vm: 9p mount failed"; poweroff -f; }
h=/host
for d in tmp run var/tmp dev/shm; do mount -t tmpfs tmpfs "$h/$d"; done
mount -t proc proc $h/proc; mount -t sysfs sys $h/sys; mount -o rbind /dev $h/dev
mkdir -p $h/dev/pts && mount -t devpts devpts $h/dev/pts
w=$(cat /ctl/dir); mkdir -p "$h$w"; mount -t 9p -o "$o" work "$h$w"
stty -F /dev/ttyS1 raw -echo
chroot $h /bin/sh -c "$(cat /ctl/cmd)" </dev/null >/dev/ttyS1 2>&1
echo $? >/ctl/rc
poweroff -f
EOF
	chmod +x "$r/init"
	mkdir -p "$CACHE"
	(cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) >"$CACHE/initrd.gz.tmp"
	cp "$b/k/boot/vmlinuz-$kver" "$CACHE/vmlinuz"
	mv "$CACHE/initrd.gz.tmp" "$CACHE/initrd.gz"
	rm -rf "$b"; trap - EXIT
}

need
[ -s "$CACHE/initrd.gz" ] && [ -s "$CACHE/vmlinuz" ] || build

t=$(mktemp -d); trap 'rm -rf "$t"' EXIT
mkdir "$t/ctl"; printf %s "$DIR" >"$t/ctl/dir"
q() { printf "'%s' " "$(printf %s "$1" | sed "s/'/'\\\\''/g")"; }
{ printf 'cd %s|| exit 125\nexec ' "$(q "$DIR")"; for a; do q "$a"; done; echo; } >"$t/ctl/cmd"

# TCG by default: on the build hosts /dev/kvm exists but nested KVM hung at
# boot (3 min of system time, no console output). VM_ACCEL=kvm opts in.
if [ "${VM_ACCEL:-tcg}" = kvm ] && [ -w /dev/kvm ]; then accel="-enable-kvm -cpu host" smp=2
else accel="-accel tcg -cpu ${VM_CPU:-max}" smp=1; fi  # TCG: 1 vCPU boots faster
console=$t/console.log; [ "${VM_DEBUG:-}" = 1 ] && console=/dev/stderr
fs=security_model=none,multidevs=remap
rc=0
timeout "${VM_TIMEOUT:-900}" qemu-system-x86_64 $accel -m "${VM_MEM:-1024}" \
	-smp "${VM_SMP:-$smp}" -nodefaults -no-user-config -display none -no-reboot \
	-kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.gz" \
	-append "console=ttyS0 quiet panic=-1 mitigations=off" \
	-serial "file:$console" -chardev stdio,id=out \
	-serial chardev:out \
	-virtfs "local,path=/,mount_tag=hostroot,readonly=on,$fs" \
	-virtfs "local,path=$DIR,mount_tag=work,$fs" \
	-virtfs "local,path=$t/ctl,mount_tag=ctl,$fs" </dev/null || rc=$?
if [ -s "$t/ctl/rc" ]; then exit "$(cat "$t/ctl/rc")"; fi
[ -f "$t/console.log" ] && tail -n 30 "$t/console.log" >&2
[ "$rc" = 124 ] && { echo "run-in-vm: timeout" >&2; exit 124; }
echo "run-in-vm: VM failed (qemu status $rc)" >&2; exit 125
