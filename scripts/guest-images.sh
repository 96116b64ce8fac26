#!/usr/bin/env bash
# Build the test guests from Debian's packages into guest-images/:
#
#   vmlinuz-cloud         Debian's stock cloud kernel   (linux-image-*-cloud-amd64)
#   vmlinuz-generic       Debian's stock generic kernel (linux-image-*-amd64)
#   modules-generic/      the generic kernel's /lib/modules/<version> tree
#   initramfs.cpio.gz     a busybox initramfs (cpio newc, gzip)
#   initramfs-net.cpio.gz the same, plus the generic kernel's NIC and disk modules
#                         in /lib/modules (virtio_ring, virtio, virtio_pci_legacy_dev,
#                         virtio_pci_modern_dev, virtio_pci, failover, net_failover,
#                         virtio_net, e1000, virtio_blk; llc, stp, garp, mrp, 8021q for VLANs;
#                         virtio_console): initramfs.cpio.gz with a second
#                         gzip'd cpio archive appended, which Linux unpacks too
#   vmlinuz-686           Debian's stock 32-bit kernel  (linux-image-*-686, i386),
#                         booted through the 32-bit boot protocol
#   initramfs-i386.cpio.gz the same initramfs around an i386 busybox
#                         (busybox-static:i386)
#   memtest86+x64.bin     memtest86+'s bzImage-format build (package memtest86+)
#   bios-disk.img         a raw MBR disk that boots through a BIOS, made without mounting
#                         anything: SYSLINUX's mbr.bin in sector 0; partition 1 (active,
#                         FAT16, 24 MiB from 1 MiB) with SYSLINUX (syslinux --install on the
#                         partition image), syslinux.cfg, vmlinuz-generic and an initrd
#                         (initramfs.cpio.gz plus the virtio-blk and ext4 modules); partition 2 (ext4,
#                         96 MiB, mke2fs -d) holding hello.txt. SYSLINUX prints
#                         "ferrovm-syslinux: ..." on COM1 and boots the kernel with
#                         console=ttyS0 and a ferrovm.cmd script that mounts /dev/vda2 (/dev/sda2 on IDE),
#                         checks hello.txt, writes 64 MiB (or the MiB count in /mib.txt
#                         there) to guest.bin, prints its SHA-256 ("T:sha <hex>"),
#                         unmounts and powers off. Installs syslinux,
#                         syslinux-common, mtools, dosfstools and e2fsprogs when missing.
#   ioping.cpio.gz        a gzip'd cpio archive to append to an initramfs: Debian's ioping
#                         (/usr/bin/ioping) with the glibc libraries it needs (libc6),
#                         gathered by following readelf's NEEDED entries; the disk
#                         benchmark's load generator
#   hostprogs.cpio.gz     the same kind of archive with Debian's sort, sha256sum
#                         (coreutils) and gzip in /opt/host/bin, apart from busybox's
#                         applets, and the glibc libraries they need (libc6): dynamically
#                         linked glibc programs, whose string and memory routines glibc
#                         picks by the CPU's features (the --cpu max boot test)
#   versions.txt          which packages the files came from
#
# The i386 packages need the i386 architecture in dpkg; the script adds it
# (dpkg --add-architecture i386) when it is missing. The kernel packages are
# downloaded and unpacked, never installed. Runs as root
# on a Debian machine (no sudo); installs cpio with apt-get when it is missing.
# Idempotent: a second run with the same package versions does nothing.
#
# The initramfs /init prints "ferrovm-init: start" first, mounts proc, sys and
# dev, then runs the shell script passed on the kernel command line as
# `ferrovm.cmd=<base64 of the script>`. With `ferrovm.poweroff=1` it powers the
# machine off when the script ends (`poweroff -f`); the script may also call
# `poweroff -f` itself. Without `ferrovm.cmd` it starts an interactive shell on
# the console.
#
# Environment: GUEST_IMAGES_DIR overrides the output folder.
set -euo pipefail

# Progress goes to stderr so that helpers can return values on stdout.
say() { printf 'guest-images: %s\n' "$*" >&2; }
die() { printf 'guest-images: error: %s\n' "$*" >&2; exit 1; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${GUEST_IMAGES_DIR:-$repo_root/guest-images}"
work="$out/.work"

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get and mknod need it)"
for tool in apt-get apt-cache dpkg-deb gzip sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found; this script needs a Debian machine"
done

mkdir -p "$out" "$work/debs"

# Once per run, also from the subshells of $(...): a marker file remembers it.
apt_marker="$work/.apt-updated.$$"
trap 'rm -f "$apt_marker"' EXIT
apt_update() {
    if [ ! -e "$apt_marker" ]; then
        say "apt-get update"
        # A partial failure (one index mid-sync on the mirror) leaves the
        # others updated; a package that is then missing fails in fetch.
        apt-get update -qq >&2 || say "apt-get update reported errors; going on with the package lists it has"
        : > "$apt_marker"
    fi
}

# Package lists older than a day (or none, on a fresh machine) may name kernels
# that the archive no longer has.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 -print -quit 2>/dev/null)" ]; then
    apt_update
fi

if ! dpkg --print-foreign-architectures | grep -qx i386; then
    say "adding the i386 architecture (dpkg --add-architecture i386) for the 32-bit guest"
    dpkg --add-architecture i386 || die "dpkg --add-architecture i386 failed"
    rm -f "$apt_marker"
    apt_update
fi

if ! command -v cpio >/dev/null; then
    apt_update
    say "installing cpio"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio >/dev/null || die "cannot install cpio"
fi

# The versioned package a metapackage points at, e.g.
# linux-image-cloud-amd64 -> linux-image-6.1.0-41-cloud-amd64.
resolve() {
    local meta="$1" name
    name="$(apt-cache depends "$meta" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
    if [ -z "$name" ]; then
        apt_update
        name="$(apt-cache depends "$meta" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
    fi
    [ -n "$name" ] || die "cannot resolve $meta to a versioned kernel package (apt-cache depends $meta found none)"
    printf '%s\n' "$name"
}

candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }'
}

# Download a package's .deb into $work/debs (once) and print its path.
fetch() {
    local pkg="$1" ver deb
    ver="$(candidate "$pkg")"
    if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
        apt_update
        ver="$(candidate "$pkg")"
    fi
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "package $pkg has no installable version"
    # The file name has no :arch suffix: busybox-static_1%3a1.35.0-4_i386.deb.
    local arch="" pattern
    case "$pkg" in *:*) arch="${pkg##*:}" ;; esac
    pattern="${pkg%%:*}_${ver//:/%3a}_${arch:-*}.deb"
    deb="$(find "$work/debs" -maxdepth 1 -name "$pattern" -print -quit)"
    if [ -z "$deb" ]; then
        say "downloading $pkg $ver"
        if ! (cd "$work/debs" && apt-get download -qq "$pkg=$ver" >/dev/null 2>&1); then
            apt_update
            (cd "$work/debs" && apt-get download -qq "$pkg=$ver" >&2) || die "apt-get download $pkg=$ver failed"
        fi
        deb="$(find "$work/debs" -maxdepth 1 -name "$pattern" -print -quit)"
        [ -n "$deb" ] || die "apt-get download $pkg=$ver left no $pattern in $work/debs"
    fi
    printf '%s\n' "$deb"
}

cloud_pkg="$(resolve linux-image-cloud-amd64)"
generic_pkg="$(resolve linux-image-amd64)"
busybox_pkg=busybox-static
k32_pkg="$(resolve linux-image-686:i386)"
case "$k32_pkg" in *:*) ;; *) k32_pkg="$k32_pkg:i386" ;; esac
busybox32_pkg=busybox-static:i386
memtest_pkg=memtest86+

# The /init of the initramfs. Kept here so its hash is part of the stamp.
read -r -d '' init_script <<'INIT' || true
#!/bin/sh
# ferrovm test initramfs: run the script from the kernel command line.
echo "ferrovm-init: start"
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=linux
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || echo "ferrovm-init: devtmpfs unavailable, using the static /dev"
mkdir -p /dev/pts /tmp /run
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp
cmd=""
off=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ferrovm.cmd=*) cmd="${arg#ferrovm.cmd=}" ;;
        ferrovm.poweroff=1) off=1 ;;
    esac
done
if [ -n "$cmd" ]; then
    if echo "$cmd" | base64 -d > /tmp/ferrovm-cmd.sh 2>/dev/null; then
        sh /tmp/ferrovm-cmd.sh
        echo "ferrovm-init: command exited with status $?"
    else
        echo "ferrovm-init: ferrovm.cmd is not valid base64"
    fi
    if [ "$off" = 1 ]; then
        sync
        poweroff -f
    fi
fi
echo "ferrovm-init: interactive shell on the console (exit to power off)"
setsid cttyhack sh -l
sync
poweroff -f
INIT

# Stamps remember a generated file's inputs (their hashes) and, on their
# last line, the hash of the file itself: a file replaced behind its stamp's
# back (a copied or hard-linked guest-images/ in which another run rebuilt
# it) is rebuilt. Stamps and outputs are written by rename, never in place,
# so that a hard-linked copy of guest-images/ is never changed through a link.
stamp_ok() { # STAMP WANT OUTPUT
    [ -s "$3" ] && [ -f "$1" ] && [ "$(cat "$1")" = "$2
out=$(sha256sum "$3" | cut -d' ' -f1)" ]
}
put_stamp() { # STAMP WANT OUTPUT
    printf '%s\nout=%s\n' "$2" "$(sha256sum "$3" | cut -d' ' -f1)" > "$1.tmp" && mv "$1.tmp" "$1" ||
        die "cannot write $1"
}

# The NIC and disk modules of the generic kernel, in the order insmod must load them;
# then 802.1Q VLANs (8021q and what it needs) and the virtio console.
net_modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net e1000 virtio_blk llc stp garp mrp 8021q virtio_console"

# initramfs-net.cpio.gz: initramfs.cpio.gz followed by a gzip'd cpio of
# /lib/modules/<name>.ko (decompressed: busybox insmod may not read .ko.xz).
# Rebuilt only when its inputs change (a stamp of their hashes).
# ROOT as a gzip'd newc archive on stdout, with fixed timestamps, owners and
# order: the same inputs give the same bytes.
pack_cpio() {
    find "$1" -exec touch -h -d @0 {} +
    local flags=(--quiet -o -H newc -R 0:0)
    if cpio --help 2>&1 | grep -q -- --reproducible; then
        flags+=(--reproducible)
    fi
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio "${flags[@]}") | gzip -9 -n
}

build_net_initramfs() {
    local modtree="$out/modules-generic" stamp="$out/.initramfs-net.stamp" m ko want
    want="$(sha256sum "$out/initramfs.cpio.gz" | cut -d' ' -f1) $net_modules"
    for m in $net_modules; do
        ko="$(find "$modtree/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) -print -quit)"
        [ -n "$ko" ] || die "module $m not found under $modtree/kernel"
        want="$want $(sha256sum "$ko" | cut -d' ' -f1)"
    done
    if stamp_ok "$stamp" "$want" "$out/initramfs-net.cpio.gz"; then
        return 0
    fi
    say "building initramfs-net.cpio.gz"
    local root="$work/initramfs-net"
    rm -rf "$root"
    mkdir -p "$root/lib/modules"
    for m in $net_modules; do
        ko="$(find "$modtree/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) -print -quit)"
        case "$ko" in
            *.ko.xz) command -v xz >/dev/null || die "xz is needed to decompress $ko"; xz -dc "$ko" > "$root/lib/modules/$m.ko" ;;
            *.ko.zst) command -v zstd >/dev/null || die "zstd is needed to decompress $ko"; zstd -qdc "$ko" > "$root/lib/modules/$m.ko" ;;
            *.ko.gz) gzip -dc "$ko" > "$root/lib/modules/$m.ko" ;;
            *) cp "$ko" "$root/lib/modules/$m.ko" ;;
        esac
    done
    { cat "$out/initramfs.cpio.gz" && pack_cpio "$root"; } > "$out/initramfs-net.cpio.gz.tmp" || die "cpio/gzip of the net initramfs failed"
    mv "$out/initramfs-net.cpio.gz.tmp" "$out/initramfs-net.cpio.gz"
    put_stamp "$stamp" "$want" "$out/initramfs-net.cpio.gz"
    rm -rf "$root"
}

# The BIOS disk's modules, in insmod order: the virtio-blk driver; the
# PIIX3 IDE driver and the SCSI disk driver with the T10 checksums it
# needs (the disk boots from IDE too); then ext4 and what it needs (crc32c
# through the crypto API).
disk_modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk scsi_common scsi_mod libata ata_piix crct10dif_common crct10dif_generic crc-t10dif crc64 crc64_rocksoft_generic crc64-rocksoft t10-pi sd_mod crc16 mbcache jbd2 crc32c_generic ext4"

# The script the BIOS disk's kernel runs (ferrovm.cmd): the disk driver and
# ext4, then a file of 64 MiB (or as many MiB as /mib.txt on the ext4
# partition says: a test may put one there with debugfs) written, hashed and
# synced to the ext4 partition. The data: a random MiB, each copy headed by
# its index. On the way it reports the ext4 partition (vda2 on virtio-blk,
# sda2 on IDE), what the SMBIOS tables say as the firmware passed them on,
# and, when the machine has a VGA, writes a line to the VGA console (tty0)
# to read back from the screen, with /keyboard.txt also reading a word typed
# on the PS/2 keyboard. The script travels on the kernel command line, which
# SYSLINUX limits to 2047 bytes: it carries no comments.
disk_script='for m in '"$disk_modules"'; do
    insmod /lib/modules/$m.ko || echo "T:insmod $m failed"
done
i=0
while [ ! -b /dev/vda2 ] && [ ! -b /dev/sda2 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
part=/dev/vda2
[ -b /dev/sda2 ] && part=/dev/sda2
echo "T:partition $part"
cd /sys/class/dmi/id
echo "T:dmi $(cat sys_vendor)|$(cat product_serial)|$(cat bios_vendor)"
cd /
mkdir -p /mnt
mount -t ext4 $part /mnt || echo "T:mount failed"
echo "T:hello $(cat /mnt/hello.txt)"
echo "ferrovm: this line is on the VGA console" > /dev/tty0 2>/dev/null && echo "T:tty0"
if [ -f /mnt/keyboard.txt ]; then
    echo "T:type a word"
    read -r -t 60 word < /dev/tty0
    echo "T:typed $word"
fi
mib=64
[ -f /mnt/mib.txt ] && mib=$(cat /mnt/mib.txt)
echo "T:mib $mib"
head -c 1048576 /dev/urandom > /tmp/r
i=0
while [ $i -lt $mib ]; do
    { echo "block $i"; cat /tmp/r; } | head -c 1048576
    i=$((i + 1))
done > /mnt/guest.bin
rm /tmp/r
set -- $(sha256sum /mnt/guest.bin); echo "T:sha $1"
sync
umount /mnt && echo "T:unmounted"
poweroff -f'

# A little-endian 32-bit value as printf escapes.
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }

# bios-disk.img (see the top of this file). Rebuilt only when its inputs change.
build_bios_disk() {
    local stamp="$out/.bios-disk.stamp" want m ko need=()
    local mbr=/usr/lib/syslinux/mbr/mbr.bin
    command -v syslinux >/dev/null || need+=(syslinux)
    [ -s "$mbr" ] || need+=(syslinux-common)
    command -v mcopy >/dev/null || need+=(mtools)
    command -v mkfs.fat >/dev/null || need+=(dosfstools)
    command -v mke2fs >/dev/null || need+=(e2fsprogs)
    if ((${#need[@]})); then
        apt_update
        say "installing ${need[*]} (the BIOS test disk)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null || die "cannot install ${need[*]}"
    fi
    want="$(cat "$out/vmlinuz-generic" "$out/initramfs.cpio.gz" "$mbr" | sha256sum | cut -d' ' -f1) $disk_modules"
    want="$want $(printf '%s' "$disk_script" | sha256sum | cut -d' ' -f1) $(syslinux --version 2>&1 | head -1)"
    if stamp_ok "$stamp" "$want" "$out/bios-disk.img"; then
        return 0
    fi
    say "building bios-disk.img"
    local d="$work/bios-disk"
    rm -rf "$d"
    mkdir -p "$d/mods/lib/modules" "$d/data"
    for m in $disk_modules; do
        ko="$(find "$out/modules-generic/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) -print -quit)"
        [ -n "$ko" ] || die "module $m not found under $out/modules-generic/kernel"
        case "$ko" in
            *.ko.xz) xz -dc "$ko" > "$d/mods/lib/modules/$m.ko" ;;
            *.ko.zst) zstd -qdc "$ko" > "$d/mods/lib/modules/$m.ko" ;;
            *) cp "$ko" "$d/mods/lib/modules/$m.ko" ;;
        esac
    done
    find "$d/mods" -exec touch -h -d @0 {} +
    { cat "$out/initramfs.cpio.gz" &&
        (cd "$d/mods" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 -n; } \
        > "$d/initrd.gz" || die "cpio/gzip of the disk's initrd failed"
    local cmd
    cmd="$(printf '%s' "$disk_script" | base64 -w0)"
    # SYSLINUX refuses a command line past 2047 bytes ("cmdline too long").
    ((${#cmd} + 26 <= 2047)) || die "the disk script makes a kernel command line of $((${#cmd} + 26)) bytes; SYSLINUX takes 2047"
    # SERIAL first: SYSLINUX's own console on COM1 (SeaBIOS also copies
    # INT 10h text there).
    cat > "$d/syslinux.cfg" <<CFG
SERIAL 0 115200
SAY ferrovm-syslinux: booting vmlinuz from the first partition
DEFAULT linux
PROMPT 0
TIMEOUT 10
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0 ferrovm.cmd=$cmd
CFG
    # Partition 1: FAT16 with SYSLINUX. Partition 2: ext4 from a folder.
    local mib=$((1 << 20)) boot_mib=24 data_mib=96
    truncate -s $((boot_mib * mib)) "$d/boot.img"
    mkfs.fat -F 16 -n FERROBOOT "$d/boot.img" >/dev/null || die "mkfs.fat failed"
    syslinux --install "$d/boot.img" || die "syslinux --install failed"
    MTOOLS_SKIP_CHECK=1 mcopy -i "$d/boot.img" "$out/vmlinuz-generic" ::vmlinuz || die "mcopy failed"
    MTOOLS_SKIP_CHECK=1 mcopy -i "$d/boot.img" "$d/initrd.gz" ::initrd.gz || die "mcopy failed"
    MTOOLS_SKIP_CHECK=1 mcopy -i "$d/boot.img" "$d/syslinux.cfg" ::syslinux.cfg || die "mcopy failed"
    printf 'made by mke2fs -d\n' > "$d/data/hello.txt"
    mke2fs -q -F -t ext4 -d "$d/data" -L ferrodata "$d/data.img" $((data_mib * 1024))k >/dev/null || die "mke2fs failed"
    # The disk: MBR code, two primary partitions (LBA only: CHS fields
    # 0xfe 0xff 0xff), the boot signature.
    local img="$d/disk.img" p1=2048 p1n=$((boot_mib * 2048)) p2 p2n=$((data_mib * 2048))
    p2=$((p1 + p1n))
    truncate -s $(((p2 + p2n) * 512)) "$img"
    dd if="$mbr" of="$img" bs=440 count=1 conv=notrunc status=none
    {
        printf "\\x80\\xfe\\xff\\xff\\x06\\xfe\\xff\\xff$(le32 $p1)$(le32 $p1n)"
        printf "\\x00\\xfe\\xff\\xff\\x83\\xfe\\xff\\xff$(le32 $p2)$(le32 $p2n)"
        printf '\x00%.0s' $(seq 32)
        printf '\x55\xaa'
    } | dd of="$img" bs=1 seek=446 conv=notrunc status=none
    dd if="$d/boot.img" of="$img" bs=512 seek=$p1 conv=notrunc status=none
    dd if="$d/data.img" of="$img" bs=512 seek=$p2 conv=notrunc status=none
    mv "$img" "$out/bios-disk.img"
    put_stamp "$stamp" "$want" "$out/bios-disk.img"
    rm -rf "$d"
}

# glibc_archive NAME DEST DEB... -- PROGRAM...: NAME (a gzip'd cpio archive to
# append to an initramfs) with each PROGRAM (its path inside the unpacked
# DEBs) in DEST, and the glibc pieces they need: the program interpreter and
# every NEEDED library, followed recursively with readelf, from the DEBs.
# Rebuilt only when the package versions change.
glibc_archive() {
    local name="$1" dest="$2" debs=() progs=() deb want="" stamp
    shift 2
    while [ "$1" != "--" ]; do debs+=("$1"); shift; done
    shift
    progs=("$@")
    stamp="$out/.${name%.cpio.gz}.stamp"
    for deb in "${debs[@]}"; do want="$want${want:+ }$(basename "$deb")"; done
    if stamp_ok "$stamp" "$want" "$out/$name"; then
        return 0
    fi
    say "building $name"
    local x="$work/$name-x" root="$work/$name-root" f lib interp="" src p
    rm -rf "$x" "$root"
    mkdir -p "$x" "$root$dest" "$root/lib/x86_64-linux-gnu"
    for deb in "${debs[@]}"; do
        dpkg-deb -x "$deb" "$x" || die "dpkg-deb -x $(basename "$deb") failed"
    done
    local todo=()
    for p in "${progs[@]}"; do
        [ -f "$x/$p" ] || die "$p is in none of ${debs[*]##*/}"
        cp -L "$x/$p" "$root$dest/$(basename "$p")"
        todo+=("$root$dest/$(basename "$p")")
        [ -n "$interp" ] ||
            interp="$(readelf -l "$x/$p" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')"
    done
    [ -n "$interp" ] || die "${progs[*]} name no program interpreter"
    # Linux's initramfs has no /lib64: the folder comes first.
    mkdir -p "$root$(dirname "$interp")"
    src="$x/lib/x86_64-linux-gnu/$(basename "$interp")"
    [ -f "$src" ] || die "the packages have no $(basename "$interp")"
    cp -L "$src" "$root$interp"
    while ((${#todo[@]})); do
        f="${todo[0]}"
        todo=("${todo[@]:1}")
        for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
            [ -e "$root/lib/x86_64-linux-gnu/$lib" ] && continue
            [ "$lib" = "$(basename "$interp")" ] && [ "$interp" != "/lib/x86_64-linux-gnu/$lib" ] &&
                { cp -L "$root$interp" "$root/lib/x86_64-linux-gnu/$lib"; continue; }
            src=""
            for d in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu; do
                [ -f "$x/$d/$lib" ] && { src="$x/$d/$lib"; break; }
            done
            [ -n "$src" ] || die "$lib (needed by $(basename "$f")) is in none of the packages"
            cp -L "$src" "$root/lib/x86_64-linux-gnu/$lib"
            todo+=("$root/lib/x86_64-linux-gnu/$lib")
        done
    done
    pack_cpio "$root" > "$out/$name.tmp" || die "cpio/gzip of $name failed"
    mv "$out/$name.tmp" "$out/$name"
    put_stamp "$stamp" "$want" "$out/$name"
    rm -rf "$x" "$root"
}

need_readelf() {
    if ! command -v readelf >/dev/null; then
        apt_update
        say "installing binutils (readelf, for the programs' libraries)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null || die "cannot install binutils"
    fi
}

# ioping.cpio.gz: Debian's ioping in /usr/bin with its glibc libraries.
build_ioping() {
    need_readelf
    glibc_archive ioping.cpio.gz /usr/bin "$(fetch ioping)" "$(fetch libc6)" -- usr/bin/ioping
}

# hostprogs.cpio.gz: Debian's sort and sha256sum (coreutils) and gzip in
# /opt/host/bin, apart from busybox's applets, with their glibc libraries.
build_hostprogs() {
    need_readelf
    glibc_archive hostprogs.cpio.gz /opt/host/bin "$(fetch coreutils)" "$(fetch gzip)" "$(fetch libc6)" -- \
        usr/bin/sort usr/bin/sha256sum bin/gzip
}

stamp_want="$(printf '%s\n' "cloud=$cloud_pkg $(candidate "$cloud_pkg")" \
    "generic=$generic_pkg $(candidate "$generic_pkg")" \
    "busybox=$busybox_pkg $(candidate "$busybox_pkg")" \
    "k32=$k32_pkg $(candidate "$k32_pkg")" \
    "busybox32=$busybox32_pkg $(candidate "$busybox32_pkg")" \
    "memtest=$memtest_pkg $(candidate "$memtest_pkg")" \
    "init=$(printf '%s' "$init_script" | sha256sum | cut -d' ' -f1)")"
if [ -f "$out/versions.txt" ] && [ "$(cat "$out/versions.txt")" = "$stamp_want" ] &&
    [ -s "$out/vmlinuz-cloud" ] && [ -s "$out/vmlinuz-generic" ] &&
    [ -d "$out/modules-generic/kernel" ] && [ -s "$out/initramfs.cpio.gz" ] &&
    [ -s "$out/vmlinuz-686" ] && [ -s "$out/initramfs-i386.cpio.gz" ] && [ -s "$out/memtest86+x64.bin" ]; then
    build_net_initramfs
    build_bios_disk
    build_ioping
    build_hostprogs
    printf 'guest-images: up to date in %s:\n' "$out"
    sed 's/^/  /' "$out/versions.txt"
    exit 0
fi

cloud_deb="$(fetch "$cloud_pkg")"
generic_deb="$(fetch "$generic_pkg")"
busybox_deb="$(fetch "$busybox_pkg")"
k32_deb="$(fetch "$k32_pkg")"
busybox32_deb="$(fetch "$busybox32_pkg")"
memtest_deb="$(fetch "$memtest_pkg")"

# Unpack a .deb into a fresh folder under $work.
unpack() {
    local deb="$1" dir="$2"
    rm -rf "$dir"
    mkdir -p "$dir"
    dpkg-deb -x "$deb" "$dir" || die "dpkg-deb -x $deb failed"
}

say "unpacking $(basename "$cloud_deb")"
unpack "$cloud_deb" "$work/cloud"
vmlinuz="$(find "$work/cloud/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)"
[ -n "$vmlinuz" ] || die "$cloud_pkg has no /boot/vmlinuz-*"
cp "$vmlinuz" "$out/vmlinuz-cloud.tmp" && mv "$out/vmlinuz-cloud.tmp" "$out/vmlinuz-cloud"
rm -rf "$work/cloud"

say "unpacking $(basename "$generic_deb")"
unpack "$generic_deb" "$work/generic"
vmlinuz="$(find "$work/generic/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)"
[ -n "$vmlinuz" ] || die "$generic_pkg has no /boot/vmlinuz-*"
cp "$vmlinuz" "$out/vmlinuz-generic.tmp" && mv "$out/vmlinuz-generic.tmp" "$out/vmlinuz-generic"
moddir="$(find "$work/generic/lib/modules" -mindepth 1 -maxdepth 1 -type d -print -quit 2>/dev/null || true)"
[ -n "$moddir" ] || die "$generic_pkg has no /lib/modules/<version>"
rm -rf "$out/modules-generic"
mv "$moddir" "$out/modules-generic"
rm -rf "$work/generic"

say "unpacking $(basename "$k32_deb")"
unpack "$k32_deb" "$work/k32"
vmlinuz="$(find "$work/k32/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)"
[ -n "$vmlinuz" ] || die "$k32_pkg has no /boot/vmlinuz-*"
cp "$vmlinuz" "$out/vmlinuz-686.tmp" && mv "$out/vmlinuz-686.tmp" "$out/vmlinuz-686"
rm -rf "$work/k32"

say "unpacking $(basename "$memtest_deb")"
unpack "$memtest_deb" "$work/memtest"
[ -s "$work/memtest/boot/memtest86+x64.bin" ] || die "$memtest_pkg has no /boot/memtest86+x64.bin"
cp "$work/memtest/boot/memtest86+x64.bin" "$out/memtest86+x64.bin.tmp" &&
    mv "$out/memtest86+x64.bin.tmp" "$out/memtest86+x64.bin"
rm -rf "$work/memtest"

# build_initramfs BUSYBOX_DEB OUTPUT: the busybox initramfs around the
# busybox of BUSYBOX_DEB (its applet list read from the amd64 busybox, which
# has the same applets and runs on any host).
build_initramfs() {
    local deb="$1" dest="$2" root="$work/initramfs" busybox
    say "unpacking $(basename "$deb")"
    unpack "$deb" "$work/busybox-x"
    busybox="$work/busybox-x/bin/busybox"
    [ -x "$busybox" ] || die "$(basename "$deb") has no /bin/busybox"
    say "building $(basename "$dest")"
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc}
    cp "$busybox" "$root/bin/busybox"
    for applet in $applets; do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    printf '%s\n' "$init_script" > "$root/init"
    chmod 0755 "$root/init"
    # The console and null nodes, for before devtmpfs is mounted.
    mknod -m 0600 "$root/dev/console" c 5 1
    mknod -m 0666 "$root/dev/null" c 1 3
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
    printf 'root:x:0:\n' > "$root/etc/group"
    pack_cpio "$root" > "$dest.tmp" ||
        die "cpio/gzip of $(basename "$dest") failed"
    mv "$dest.tmp" "$dest"
    rm -rf "$root" "$work/busybox-x"
}

unpack "$busybox_deb" "$work/busybox"
[ -x "$work/busybox/bin/busybox" ] || die "$busybox_pkg has no /bin/busybox"
applets="$("$work/busybox/bin/busybox" --list)" || die "cannot list the busybox applets"
rm -rf "$work/busybox"
build_initramfs "$busybox_deb" "$out/initramfs.cpio.gz"
build_initramfs "$busybox32_deb" "$out/initramfs-i386.cpio.gz"

build_net_initramfs
build_bios_disk
build_ioping
build_hostprogs
printf '%s\n' "$stamp_want" > "$out/versions.txt.tmp" && mv "$out/versions.txt.tmp" "$out/versions.txt"
printf 'guest-images: done in %s:\n' "$out"
for f in vmlinuz-cloud vmlinuz-generic initramfs.cpio.gz initramfs-net.cpio.gz vmlinuz-686 \
    initramfs-i386.cpio.gz memtest86+x64.bin bios-disk.img ioping.cpio.gz hostprogs.cpio.gz; do
    printf '  %-22s %s bytes\n' "$f" "$(stat -c %s "$out/$f")"
done
printf '  %-22s %s\n' modules-generic/ "$(du -sh "$out/modules-generic" | cut -f1)"
sed 's/^/  /' "$out/versions.txt"
