#!/usr/bin/env bash
# Build guest-images/distro.img: a whole Debian 12 (bookworm) system that
# boots through a BIOS, for `ferrovm bench --distro` and tests/distro.rs.
#
#   distro.img   a raw disk of 2 GiB (sparse): SYSLINUX's mbr.bin in sector 0,
#                one active Linux partition (ext4, from 1 MiB to the end) holding
#                a debootstrap'd minbase with systemd, systemd-sysv, udev,
#                initramfs-tools and linux-image-amd64 (Debian's generic
#                kernel with its own initramfs, made by update-initramfs in the
#                chroot with MODULES=list: virtio_pci, virtio_blk, ext4 and
#                crc32c), make, gcc and libc6-dev. EXTLINUX (package extlinux)
#                in /boot/extlinux boots the kernel with root=/dev/vda1 (the
#                disk on virtio-blk) and console=ttyS0.
#
# In the guest, ferrovm-bench.service (WantedBy= and After=multi-user.target)
# writes to the serial console (/dev/ttyS0):
#
#   T:multi-user <uptime>          when multi-user.target has been reached
#   T:workloads <list>             the workloads it will run, in order
#   T:<name>-start <uptime>        before each workload
#   T:<name> <start> <end>         after it, on success (seconds of uptime)
#   T:<name>-failed <status>       after it, on failure (then its log's tail)
#   T:poweroff <uptime>            before it starts poweroff.target (a clean shutdown,
#                                  as `systemctl poweroff` without logind's D-Bus)
#
# The workloads come from an SMBIOS OEM string (type 11) `ferrovm.bench=LIST`
# when the machine has one (QEMU's and ferrovm's `-smbios
# type=11,value=ferrovm.bench=dpkg`), else from `ferrovm.bench=LIST` on the
# kernel command line (extlinux.conf has `ferrovm.bench=dpkg,build`). LIST is
# comma-separated:
#
#   boot   nothing (the boot alone)
#   dpkg   `dpkg -i` of a set of Debian packages kept in /opt/ferrovm/debs
#          (jq, bc, file, less, tree, rsync, perl and the
#          dependencies the image lacks, downloaded at build time), then
#          `dpkg --purge` of them
#   build  zlib's own source (Debian's zlib .orig tarball): ./configure, then
#          `make -j2` of the static and shared libraries and the test programs,
#          and `make test`, in /tmp
#   none   no workload and no poweroff (an interactive machine, but see below)
#
# The root password stays locked and the gettys are masked (serial-getty on
# ttyS0 and getty on tty1), as are the timers that would run apt, dpkg's
# backup, e2scrub and fstrim at boot: the machine has no login and does only
# what is measured. Runs as root on a Debian machine: installs debootstrap and
# extlinux when missing and needs a loop mount (for extlinux --install); exits
# with status 77 where it cannot build (not root, no loop device). The files
# are debootstrap'd into a folder, made into the ext4 partition by
# `mke2fs -d`, and the partition is loop-mounted only for extlinux --install.
# Idempotent: a second run with the same script does nothing (a stamp). About
# 100 s and 200 MiB of downloads on a 2-core machine; 800 MiB of the disk used.
#
# Environment: GUEST_IMAGES_DIR overrides the output folder, DEBIAN_MIRROR the
# mirror (default: the host's own, the first .../debian URI in its apt
# sources, else http://deb.debian.org/debian).
set -euo pipefail

say() { printf 'distro-image: [%ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'distro-image: error: %s\n' "$*" >&2; exit 1; }
# Any other command that fails ends the run (set -e): say which.
trap 'printf "distro-image: error: line %s: \"%s\" failed\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${GUEST_IMAGES_DIR:-$repo_root/guest-images}"
work="$out/.work/distro"
img="$out/distro.img"
stamp="$out/.distro.stamp"
suite=bookworm
# The host's own Debian mirror (the first .../debian URI of its apt sources,
# one-line or deb822), else deb.debian.org.
host_mirror() {
    {
        sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
    } | grep -E '^https?://[^ ]+/debian/?$' | head -n 1 | sed 's:/$::' || true
}
mirror="${DEBIAN_MIRROR:-$(host_mirror)}"
mirror="${mirror:-http://deb.debian.org/debian}"
# The disk: 2 GiB, the partition from sector 2048 to the end.
disk_mib=2048
part_start=2048

# A machine that cannot build the image (not root, no loop devices) exits
# with 77, which scripts/test.sh reports as a skip.
cannot() { printf 'distro-image: cannot build here: %s\n' "$*" >&2; exit 77; }
[ "$(id -u)" -eq 0 ] || cannot "run as root (debootstrap, chroot and a loop mount need it)"
for tool in apt-get dpkg sha256sum mke2fs losetup mount chroot; do
    command -v "$tool" >/dev/null || die "$tool not found; this script needs a Debian machine"
done

# The stamp: this script's hash and the image's size and modification time.
want="script=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
if [ -s "$img" ] && [ -f "$stamp" ] &&
    [ "$(cat "$stamp")" = "$want
img=$(stat -c '%s %Y' "$img")" ]; then
    say "distro.img is up to date"
    exit 0
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v extlinux >/dev/null || need+=(extlinux)
[ -s /usr/lib/syslinux/mbr/mbr.bin ] || need+=(syslinux-common)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    apt-get update -qq >&2 || say "apt-get update reported errors; going on with the package lists it has"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || die "cannot install ${need[*]}"
fi

root="$work/root"
mnt="$work/mnt"
mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null || true
    done
    mounted=()
}
trap cleanup EXIT
# Never remove a tree something is still mounted in.
safe_rm() {
    local d
    for d in "$@"; do
        [ -e "$d" ] || continue
        if grep -q " $(realpath "$d")[/ ]" /proc/mounts; then
            die "something is still mounted under $d; unmount it first"
        fi
        rm -rf "$d"
    done
}
mount_at() { # TYPE SOURCE TARGET [OPTIONS]
    mount -t "$1" ${4:+-o "$4"} "$2" "$3" || die "cannot mount $2 on $3"
    mounted+=("$3")
}
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }

cleanup_stale() {
    local m
    # A run that was killed may have left its mounts.
    for m in $(awk -v w="$(realpath -m "$work")" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" || die "cannot unmount the stale $m"
    done
}
[ -n "$(losetup -f 2>/dev/null)" ] || cannot "no free loop device (losetup -f), which extlinux --install needs"
mkdir -p "$work"
cleanup_stale
safe_rm "$root" "$mnt" "$work/disk.img"

say "debootstrap $suite (minbase + systemd, udev, initramfs-tools) from $mirror"
debootstrap --variant=minbase --include=systemd,systemd-sysv,udev,initramfs-tools,kmod,zstd \
    "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $work/debootstrap.log: $(tail -n 3 "$work/debootstrap.log" | tr '\n' ' ')"

mount_at proc proc "$root/proc"
mount_at sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev" || die "cannot bind /dev"
mounted+=("$root/dev")
mount_at devpts devpts "$root/dev/pts" gid=5,mode=620
# No service starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb-src $mirror $suite main
EOF
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

# The initramfs: only the modules this machine needs (Debian's default,
# MODULES=most, would put most of the kernel's drivers in it).
mkdir -p "$root/etc/initramfs-tools"
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >> "$root/etc/initramfs-tools/modules"

say "apt-get update in the chroot"
in_root apt-get update -qq >&2 || die "apt-get update in the chroot failed"
say "installing linux-image-amd64, make, gcc, libc6-dev (update-initramfs runs here)"
in_root apt-get install -y -qq --no-install-recommends linux-image-amd64 make gcc libc6-dev \
    > "$work/apt.log" 2>&1 || die "apt-get install in the chroot failed; see $work/apt.log"

# The dpkg workload's packages, with what they need that the image lacks.
dpkg_pkgs="jq bc file less tree rsync perl"
say "downloading the dpkg workload's packages: $dpkg_pkgs"
in_root apt-get clean
in_root apt-get install -y -qq --download-only --no-install-recommends $dpkg_pkgs >> "$work/apt.log" 2>&1 ||
    die "apt-get --download-only $dpkg_pkgs failed; see $work/apt.log"
mkdir -p "$root/opt/ferrovm/debs"
mv "$root"/var/cache/apt/archives/*.deb "$root/opt/ferrovm/debs/" || die "no .deb was downloaded"
for deb in "$root"/opt/ferrovm/debs/*.deb; do dpkg-deb -f "$deb" Package; done | sort > "$root/opt/ferrovm/debs.list"
say "the dpkg workload: $(wc -l < "$root/opt/ferrovm/debs.list") packages, $(du -sh "$root/opt/ferrovm/debs" | cut -f1)"

# The build workload's source: zlib's upstream tarball from Debian's archive.
say "downloading zlib's source"
in_root /bin/sh -c 'cd /tmp && apt-get source --download-only -qq zlib' >> "$work/apt.log" 2>&1 ||
    die "apt-get source zlib failed; see $work/apt.log"
orig="$(find "$root/tmp" -maxdepth 1 -name 'zlib_*.orig.tar.*' -print -quit)"
[ -n "$orig" ] || die "apt-get source left no zlib_*.orig.tar.* in the chroot's /tmp"
mkdir -p "$root/opt/ferrovm/zlib"
tar -xf "$orig" -C "$root/opt/ferrovm/zlib" --strip-components=1 || die "cannot unpack $(basename "$orig")"
[ -x "$root/opt/ferrovm/zlib/configure" ] || die "zlib's source has no configure"
rm -f "$root"/tmp/zlib_*

say "checking the workloads in the chroot"
cat > "$root/opt/ferrovm/dpkg.sh" <<'EOF'
#!/bin/sh
# The dpkg workload: install the packages in /opt/ferrovm/debs, then purge them.
set -e
cd /opt/ferrovm/debs
dpkg -i ./*.deb
dpkg --purge $(cat /opt/ferrovm/debs.list)
EOF
cat > "$root/opt/ferrovm/build.sh" <<'EOF'
#!/bin/sh
# The build workload: zlib's configure, a parallel make and its tests.
set -e
rm -rf /tmp/zlib-build
cp -a /opt/ferrovm/zlib /tmp/zlib-build
cd /tmp/zlib-build
./configure
make -j2
make test
cd /
rm -rf /tmp/zlib-build
EOF
cat > "$root/opt/ferrovm/boot.sh" <<'EOF'
#!/bin/sh
# The boot workload: nothing.
EOF
chmod 0755 "$root"/opt/ferrovm/*.sh
in_root /opt/ferrovm/dpkg.sh > "$work/check-dpkg.log" 2>&1 || die "the dpkg workload fails in the chroot; see $work/check-dpkg.log"
in_root /opt/ferrovm/build.sh > "$work/check-build.log" 2>&1 || die "the build workload fails in the chroot; see $work/check-build.log"

cat > "$root/usr/local/sbin/ferrovm-bench" <<'EOF'
#!/bin/sh
# Started once multi-user.target is reached: print the markers on the serial
# console, run the workloads, power off.
exec > /dev/ttyS0 2>&1
up() { cut -d' ' -f1 /proc/uptime; }
echo "T:multi-user $(up)"
list=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in ferrovm.bench=*) list="${arg#ferrovm.bench=}" ;; esac
done
oem="$(grep -a -o 'ferrovm\.bench=[a-z,]*' /sys/firmware/dmi/tables/DMI 2>/dev/null | head -n 1)"
[ -n "$oem" ] && list="${oem#ferrovm.bench=}"
echo "T:workloads $list"
for w in $(echo "$list" | tr ',' ' '); do
    case "$w" in
        none) exit 0 ;;
        boot | dpkg | build)
            a="$(up)"
            echo "T:$w-start $a"
            if /opt/ferrovm/$w.sh > /tmp/$w.log 2>&1; then
                echo "T:$w $a $(up)"
            else
                echo "T:$w-failed $?"
                tail -n 20 /tmp/$w.log
            fi
            ;;
        *) echo "T:unknown-workload $w" ;;
    esac
done
sync
echo "T:poweroff $(up)"
systemctl --no-block --job-mode=replace-irreversibly start poweroff.target
EOF
chmod 0755 "$root/usr/local/sbin/ferrovm-bench"
cat > "$root/etc/systemd/system/ferrovm-bench.service" <<'EOF'
[Unit]
Description=ferrovm benchmark markers and workloads
After=multi-user.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/ferrovm-bench

[Install]
WantedBy=multi-user.target
EOF

say "configuring the system"
echo ferrovm-distro > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tferrovm-distro\n' > "$root/etc/hosts"
printf '/dev/vda1\t/\text4\terrors=remount-ro\t0\t0\n' > "$root/etc/fstab"
in_root passwd -l root >/dev/null || die "passwd -l root failed"
in_root systemd-machine-id-setup >/dev/null 2>&1 || die "systemd-machine-id-setup failed"
in_root systemctl enable ferrovm-bench.service >/dev/null 2>&1 || die "cannot enable ferrovm-bench.service"
in_root systemctl mask serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
    dpkg-db-backup.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || die "systemctl mask failed"
kver="$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)"
[ -n "$kver" ] || die "no kernel in the chroot's /boot"
[ -s "$root/boot/initrd.img-$kver" ] || die "update-initramfs made no /boot/initrd.img-$kver"
mkdir -p "$root/boot/extlinux"
cat > "$root/boot/extlinux/extlinux.conf" <<EOF
SERIAL 0 115200
SAY ferrovm-distro: extlinux boots Debian's $kver
DEFAULT debian
PROMPT 0
TIMEOUT 1
LABEL debian
  KERNEL /boot/vmlinuz-$kver
  INITRD /boot/initrd.img-$kver
  APPEND root=/dev/vda1 ro console=ttyS0,115200 quiet ferrovm.bench=dpkg,build
EOF

in_root apt-get clean
rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/resolv.conf"
rm -rf "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/tmp/* "$root"/var/log/*.log
cleanup

say "making the ext4 partition ($(du -sh "$root" | cut -f1) of files)"
local_part_sectors=$((disk_mib * 2048 - part_start))
truncate -s "${disk_mib}M" "$work/disk.img"
# EXTLINUX reads ext4 without the 64bit and orphan_file features.
mke2fs -q -F -t ext4 -O ^64bit,^orphan_file -L ferrodistro -E offset=$((part_start * 512)) -d "$root" \
    "$work/disk.img" $((local_part_sectors / 2))k || die "mke2fs failed"
mkdir -p "$mnt"
mount_at ext4 "$work/disk.img" "$mnt" "loop,offset=$((part_start * 512))"
extlinux --install "$mnt/boot/extlinux" >&2 || die "extlinux --install failed"
used="$(df -h --output=used "$mnt" | tail -n 1 | tr -d ' ')"
cleanup

# MBR code and one active Linux partition (LBA only: CHS fields 0xfe 0xff 0xff).
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$work/disk.img" bs=440 count=1 conv=notrunc status=none || die "dd of mbr.bin failed"
{
    printf "\\x80\\xfe\\xff\\xff\\x83\\xfe\\xff\\xff$(le32 $part_start)$(le32 $local_part_sectors)"
    printf '\x00%.0s' $(seq 48)
    printf '\x55\xaa'
} | dd of="$work/disk.img" bs=1 seek=446 conv=notrunc status=none || die "cannot write the partition table"

mv "$work/disk.img" "$img"
safe_rm "$root" "$mnt"
printf '%s\nimg=%s\n' "$want" "$(stat -c '%s %Y' "$img")" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp" || die "cannot write $stamp"
say "done: $img ($used used of ${disk_mib} MiB; Debian's $kver)"
