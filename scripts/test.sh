#!/usr/bin/env bash
# Set up what a fresh machine needs, then run every test.
#
# This is the project's one test command: README.md gives it and .ci/run runs
# it. It is idempotent: packages and guest images that exist are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step says how far into the run it starts, to show where the time goes.
log() { printf '==> [%ds] %s\n' "$SECONDS" "$*"; }

# Host packages. Installed only when missing, and only where we may (root).
need_pkgs=()
# Installed without their recommended packages (the browser's are many).
need_lean=()
command -v cc >/dev/null || need_pkgs+=(gcc)
command -v cpio >/dev/null || need_pkgs+=(cpio)
# qemu-img makes and checks the disk tests' images and the snapshots inside them.
command -v qemu-img >/dev/null || need_pkgs+=(qemu-utils)
# SeaBIOS boots disks without --kernel; the BIOS test disk is made with
# SYSLINUX, mtools, mkfs.fat and mke2fs, and read back with debugfs.
[ -s /usr/share/seabios/bios-256k.bin ] || need_pkgs+=(seabios)
command -v syslinux >/dev/null || need_pkgs+=(syslinux)
[ -s /usr/lib/syslinux/mbr/mbr.bin ] || need_pkgs+=(syslinux-common)
command -v mcopy >/dev/null || need_pkgs+=(mtools)
command -v mkfs.fat >/dev/null || need_pkgs+=(dosfstools)
command -v debugfs >/dev/null || need_pkgs+=(e2fsprogs)
# The CD-ROM tests build an El Torito ISO with ISOLINUX.
command -v xorriso >/dev/null || need_pkgs+=(xorriso)
[ -s /usr/lib/ISOLINUX/isolinux.bin ] || need_pkgs+=(isolinux)
# Debian's GRUB rescue images: a hybrid ISO and a floppy image that boot.
[ -s /usr/lib/grub-rescue/grub-rescue-floppy.img ] || need_pkgs+=(grub-rescue-pc)
# The NICs' iPXE boot ROMs, for the network boot tests (--boot n); Debian's
# iPXE as a kernel; PXELINUX, which the network boot of Linux loads.
[ -s /usr/lib/ipxe/qemu/efi-e1000.rom ] || need_pkgs+=(ipxe-qemu)
[ -s /usr/lib/ipxe/ipxe.lkrn ] || need_pkgs+=(ipxe)
[ -s /usr/lib/PXELINUX/pxelinux.0 ] || need_pkgs+=(pxelinux)
# The display tests read the guest's screen through a VNC client and OCR.
command -v vncsnapshot >/dev/null || need_pkgs+=(vncsnapshot)
command -v tesseract >/dev/null || need_pkgs+=(tesseract-ocr)
# The browser test: noVNC's page in headless Chromium.
[ -s /usr/share/novnc/vnc_lite.html ] || need_pkgs+=(novnc)
command -v chromium >/dev/null || need_lean+=(chromium)
# The gdb stub's test drives Debian's gdb.
command -v gdb >/dev/null || need_pkgs+=(gdb)
# QEMU's linuxboot option ROM, with which SeaBIOS boots a --kernel.
[ -s /usr/share/qemu/linuxboot_dma.bin ] || need_pkgs+=(qemu-system-data)
# UEFI: OVMF, and GRUB's x86_64-efi loader for the disk the test builds.
[ -s /usr/share/ovmf/OVMF.fd ] || need_pkgs+=(ovmf)
[ -s /usr/lib/grub/x86_64-efi/linux.mod ] || need_pkgs+=(grub-efi-amd64-bin)
if ((${#need_pkgs[@]} + ${#need_lean[@]})); then
    if [ "$(id -u)" = 0 ]; then
        log "installing Debian packages: ${need_pkgs[*]} ${need_lean[*]}"
        # A mirror caught mid-sync fails the update of some lists; the
        # install below says whether what it needs could be had.
        apt-get update -qq || echo "apt-get update reported errors; going on with the package lists it has" >&2
        if ((${#need_pkgs[@]})); then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
        fi
        if ((${#need_lean[@]})); then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_lean[@]}" >/dev/null
        fi
    else
        echo "missing packages (${need_pkgs[*]} ${need_lean[*]}): install them, or run as root" >&2
        exit 1
    fi
fi

# Guest images built from Debian's packages, for the boot tests.
if [ -x scripts/guest-images.sh ]; then
    log "building guest images (scripts/guest-images.sh)"
    scripts/guest-images.sh
fi
# A whole Debian 12 system with systemd on a SYSLINUX disk (debootstrap,
# mke2fs -d, a loop mount for extlinux; about 100 s and 200 MiB of
# downloads), for tests/distro.rs and `ferrovm bench --distro`. Status 77:
# this machine cannot build it (no root or no loop device), and the test
# skips.
if [ -x scripts/distro-image.sh ]; then
    log "building the Debian disk image (scripts/distro-image.sh)"
    rc=0
    scripts/distro-image.sh || rc=$?
    if [ "$rc" = 77 ]; then
        echo "guest-images/distro.img not built; tests/distro.rs will skip" >&2
    elif [ "$rc" != 0 ]; then
        exit "$rc"
    fi
fi

# A fresh checkout builds everything once: incremental compilation's
# bookkeeping would only slow that build down. Set CARGO_INCREMENTAL=1
# to keep it for repeated local runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

log "cargo fmt --check"
cargo fmt --all --check

# One pass over the whole workspace with the optional features on: the
# saved states' serde derives and the fuzz drivers (the cargo-fuzz
# targets' feature). No code is compiled only with a feature off, so this
# pass sees every line the default build does, and each crate is checked
# once.
log "cargo clippy"
cargo clippy --workspace --all-targets --features vmm/serde,net/serde,devices/fuzz --quiet -- -D warnings

log "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

log "cargo test"
cargo test --workspace --all-targets
log "done"
