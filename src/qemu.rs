//! QEMU's command line: `qemu-system-x86_64 ...` run by ferrovm.
//!
//! ferrovm reads QEMU's options when it is invoked under the name
//! `qemu-system-x86_64` (a symlink) or as `ferrovm qemu ...`. [`translate`]
//! turns the options into the arguments of `ferrovm run`, which then
//! parses and runs them as usual, so both command lines end up in the same
//! machine. An option ferrovm cannot honour is refused by name (exit
//! status 1); an option that asks for something ferrovm leaves out anyway
//! (`-display none`, `-monitor none`) is accepted; where
//! ferrovm runs something close but not the same (another CPU model, an
//! IDE disk) it says so on stderr and goes on.
//!
//! Option values follow QEMU's `key=value,...` syntax ([`parse_opts`]): a
//! comma inside a value is written `,,`, and a first element without `=`
//! is the option's implied key (`-netdev user,...` is `type=user`, `-m 1G`
//! is `size=1G`).

use std::path::{Path, PathBuf};

/// The program name that selects QEMU's command line.
pub const PROGRAM: &str = "qemu-system-x86_64";

/// Where QEMU looks for a firmware name given without a path, after the
/// folders of `-L`.
const DATA_DIRS: &[&str] = &["/usr/share/seabios", "/usr/share/qemu", "/usr/lib/ipxe/qemu"];

/// The BIOS QEMU runs when none is named.
const DEFAULT_BIOS: &str = "bios-256k.bin";

/// A parsed `key=value,...` list, in order; a key may repeat (`hostfwd=`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Opts {
    pub pairs: Vec<(String, String)>,
}

impl Opts {
    /// The value of `key`: the last one given, as in QEMU.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// An error naming the first key that is not in `known`.
    pub(crate) fn only(&self, option: &str, known: &[&str]) -> Result<(), String> {
        match self.pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => {
                Err(format!("{option}: '{k}=' is not supported by ferrovm (it takes {})", known.join("=, ") + "="))
            }
            None => Ok(()),
        }
    }
}

/// Parses QEMU's option syntax: `key=value` elements separated by commas,
/// `,,` standing for a comma inside a value. A first element without `=`
/// is the value of `implied` when there is one; any other element without
/// `=` is a flag, `key` meaning `key=on`.
pub fn parse_opts(s: &str, implied: Option<&str>) -> Result<Opts, String> {
    let mut pairs = Vec::new();
    let mut rest = s;
    let mut first = true;
    while !rest.is_empty() {
        // A key ends at `=` or `,`; a value at a `,` that is not doubled.
        let key_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let (key, value);
        if rest[key_end..].starts_with('=') {
            key = rest[..key_end].to_string();
            let (v, after) = value_until_comma(&rest[key_end + 1..]);
            value = v;
            rest = after;
        } else if first && implied.is_some() {
            let (v, after) = value_until_comma(rest);
            key = implied.unwrap_or_default().to_string();
            value = v;
            rest = after;
        } else {
            key = rest[..key_end].to_string();
            value = "on".to_string();
            rest = rest[key_end..].strip_prefix(',').unwrap_or(&rest[key_end..]);
        }
        if key.is_empty() {
            return Err(format!("'{s}': an empty key"));
        }
        pairs.push((key, value));
        first = false;
    }
    Ok(Opts { pairs })
}

/// A value up to the first single comma, with `,,` read as `,`; and what
/// follows that comma.
fn value_until_comma(s: &str) -> (String, &str) {
    let mut value = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == ',' {
            if let Some((_, ',')) = chars.peek() {
                chars.next();
                value.push(',');
                continue;
            }
            return (value, &s[i + 1..]);
        }
        value.push(c);
    }
    (value, "")
}

/// QEMU's on/off values.
pub(crate) fn on_off(option: &str, key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(format!("{option}: {key}={v}: expected on or off")),
    }
}

/// Options that take an argument. Anything else starting with `-` is a
/// flag or unknown.
const WITH_ARG: &[&str] = &[
    "kernel",
    "initrd",
    "append",
    "bios",
    "pflash",
    "L",
    "m",
    "smp",
    "cpu",
    "machine",
    "M",
    "accel",
    "display",
    "serial",
    "debugcon",
    "monitor",
    "netdev",
    "nic",
    "net",
    "device",
    "drive",
    "hda",
    "hdb",
    "hdc",
    "hdd",
    "name",
    "pidfile",
    "rtc",
    "vga",
    "parallel",
    "action",
    "boot",
    "cdrom",
    "fda",
    "fdb",
    "chardev",
    "qmp",
    "gdb",
    "object",
    "global",
    "mon",
    "vnc",
    "spice",
    "k",
    "usbdevice",
    "audiodev",
    "D",
    "d",
    "trace",
    "incoming",
    "loadvm",
    "icount",
    "mem-path",
    "numa",
    "fw_cfg",
    "smbios",
    "tpmdev",
    "watchdog-action",
    "sandbox",
    "msg",
    "overcommit",
    "blockdev",
    "virtfs",
    "fsdev",
    "add-fd",
    "iscsi",
    "option-rom",
    "semihosting-config",
    "runas",
    "chroot",
    "set",
    "readconfig",
    "writeconfig",
    "run-with",
    "compat",
    "uuid",
    "plugin",
    "dtb",
    "initrd-append",
    "acpitable",
    "mtdblock",
    "sd",
];

/// Options ferrovm refuses with a reason of their own.
fn refusal(name: &str) -> Option<&'static str> {
    Some(match name {
        "spice" => "ferrovm's display is VNC (-vnc)",
        "full-screen" => "ferrovm has no window; its display is VNC (-vnc)",
        "global" | "set" | "readconfig" => "ferrovm has no QOM objects or properties to set",
        "numa" => "ferrovm runs one CPU and one memory node",
        "mem-path" | "mem-prealloc" => "guest RAM is anonymous memory in ferrovm",
        "trace" => "ferrovm's logging is --trace (or FERROVM_LOG) of `ferrovm run`",
        "icount" => "ferrovm has no instruction-count clock",
        "blockdev" => "use -drive file=...,if=virtio (or if=none with -device virtio-blk-pci,drive=)",
        "virtfs" | "fsdev" => "ferrovm has no 9p file sharing",
        _ => return None,
    })
}

/// What the QEMU command line asks for, in ferrovm's terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Translation {
    /// The arguments of `ferrovm run` (after `run`).
    pub args: Vec<String>,
    /// Where ferrovm differs from what was asked, for stderr.
    pub notes: Vec<String>,
    /// `-version` or `-help`: print this and exit 0.
    pub info: Option<String>,
}

/// The network interfaces and disks as they are declared.
#[derive(Default)]
struct State {
    kernel: Option<String>,
    initrd: Option<String>,
    append: Option<String>,
    bios: Option<String>,
    data_dirs: Vec<String>,
    mem: Option<u64>,
    accel: Vec<String>,
    machine_accel: Option<Vec<String>>,
    serial: Vec<String>,
    nodefaults: bool,
    no_reboot: bool,
    snapshot: bool,
    /// `-netdev user,id=...`: id and its options.
    netdevs: Vec<(String, Opts)>,
    /// NICs in order: (netdev options, model, mac, vectors).
    nics: Vec<Nic>,
    /// Whether a network option was given (no default NIC then).
    net_given: bool,
    /// `-net nic` and `-net user`, joined by hub at the end.
    legacy_nets: Vec<LegacyNet>,
    /// `-drive if=none,id=...`: id and the disk.
    drives_by_id: Vec<(String, Disk)>,
    /// `-drive if=pflash`: unit (given or in order) and `--pflash`'s spec.
    pflash: Vec<(Option<u8>, String)>,
    disks: Vec<Disk>,
    pidfile: Option<PathBuf>,
    /// `-incoming URI`.
    incoming: Option<String>,
    /// `-loadvm NAME`.
    loadvm: Option<String>,
    /// `-debugcon`: `--debugcon`'s value.
    debugcon: Option<String>,
    /// `-smbios`: the field sets, as given.
    smbios: Vec<String>,
    /// `-uuid`.
    uuid: Option<String>,
    /// `-no-hpet`, `-machine hpet=off`.
    no_hpet: bool,
    /// `-machine kernel-irqchip=off`, `-accel kvm,kernel-irqchip=off`,
    /// `-no-kvm-irqchip`: the machine's own interrupt controllers under KVM.
    kvm_irqchip_off: bool,
    /// `-no-acpi`, `-machine acpi=off`.
    no_acpi: bool,
    /// `-object rng-random|rng-builtin`: id and the file it reads.
    rng_objects: Vec<(String, String)>,
    /// `-device virtio-rng-pci`: `--rng`'s values.
    rngs: Vec<String>,
    /// `-device virtio-serial-pci` was given.
    virtio_serial: bool,
    /// `-device virtconsole|virtserialport`: `--vport`'s values.
    vports: Vec<String>,
    notes: Vec<String>,
    /// `-cpu max` or `host`: ferrovm's full model (`--cpu max`).
    cpu_max: bool,
    /// `-smp`: the CPUs (the last one given).
    smp: Option<String>,
    /// `-accel tcg,thread=`: `single` or `multi`.
    tcg_thread: Option<String>,
    /// `-boot`: ferrovm's --boot (the order's letters, then once=, menu=on, splash-time=).
    boot_order: Option<String>,
    /// `-vga`: `std` or `none`.
    vga: Option<String>,
    /// `-vnc`, `-display vnc=`: the display spec.
    vnc: Option<String>,
    /// `-qmp`, `-mon mode=control`: socket specs.
    qmp: Vec<String>,
    /// `-monitor`, `-mon mode=readline`: socket specs.
    monitor: Vec<String>,
    /// `-chardev`s, in order.
    chardevs: Vec<Chardev>,
    /// `-mon` on a `stdio,mux=on` chardev: its id and whether QMP.
    mux_monitors: Vec<(String, bool)>,
    /// The chardev of each `--vport` (by index), for the mux monitors.
    vport_chardevs: Vec<String>,
    /// The chardev id behind each `-serial chardev:ID` (by index in
    /// `serial`).
    serial_chardevs: Vec<(usize, String)>,
    /// `-device isa-serial`: their backends and chardev ids (serial ports
    /// after the `-serial` ones).
    isa_serials: Vec<(String, String)>,
    /// `-S`.
    paused: bool,
    /// `-rtc base=`, `-localtime`: what the RTC counts from.
    rtc_base: Option<String>,
    /// `-d`, `-D`: the guest CPU log and its file.
    log: Option<String>,
    log_file: Option<String>,
    /// `-s`, `-gdb DEV`: the gdb stub's device (the last one given).
    gdb: Option<String>,
    /// `-usb`, `-machine usb=on`.
    usb: bool,
    /// `-device usb-tablet|usb-mouse|usb-kbd`, `-usbdevice`: `tablet`, `mouse` or `kbd`.
    usb_devices: Vec<&'static str>,
    /// `-display curses`.
    curses: bool,
    /// `-nographic`.
    nographic: bool,
    /// `-monitor`, `-qmp` or `-mon` given (no default monitor then).
    monitor_given: bool,
    /// `-parallel` given (no default parallel port then).
    parallel_given: bool,
    /// `-no-shutdown`, `-action shutdown=pause`.
    no_shutdown: bool,
    /// `-daemonize`.
    daemonize: bool,
}

/// A NIC: its `-netdev` (or `-nic`) options, model and MAC.
struct Nic {
    netdev: Option<String>,
    opts: Opts,
    model: &'static str,
    mac: Option<String>,
    vectors: Option<String>,
    /// On an internal hub of this name instead of the NAT (a `-net nic`
    /// with no `-net user` beside it).
    hub: Option<String>,
    /// `romfile=`: the boot ROM found as QEMU finds it ("" for none).
    romfile: Option<String>,
}

/// One `-net` of the legacy syntax, on its hub (`vlan=`, default 0).
enum LegacyNet {
    Nic {
        vlan: u32,
        model: &'static str,
        mac: Option<String>,
        vectors: Option<String>,
    },
    /// `-net user`, `-net tap` or `-net bridge` (the type is in `opts`).
    Backend {
        vlan: u32,
        opts: Opts,
    },
}

#[derive(Clone)]
struct Disk {
    file: String,
    format: Option<String>,
    readonly: bool,
    snapshot: bool,
    /// On the IDE controller (QEMU's `if=ide`, its default), else virtio.
    ide: bool,
    /// A CD-ROM (`media=cdrom`, `-cdrom`).
    cdrom: bool,
    /// On the floppy disk controller (`if=floppy`, `-fda`, `-fdb`).
    floppy: bool,
    /// The IDE position (`index=`, `-hda`..`-hdd`, `-cdrom`), or the
    /// floppy drive.
    index: Option<u8>,
}

impl Disk {
    fn plain(file: &str) -> Disk {
        Disk {
            file: file.to_string(),
            format: None,
            readonly: false,
            snapshot: false,
            ide: false,
            cdrom: false,
            floppy: false,
            index: None,
        }
    }
}

/// Translates a QEMU command line (without the program name).
pub fn translate(argv: &[String]) -> Result<Translation, String> {
    let mut st = State::default();
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        i += 1;
        if !a.starts_with('-') || a == "-" {
            // A bare argument is the first hard disk, as -hda.
            st.disks.push(Disk { ide: true, index: Some(0), ..Disk::plain(a) });
            continue;
        }
        let name = a.strip_prefix("--").unwrap_or(&a[1..]);
        let option = format!("-{name}");
        let value = if WITH_ARG.contains(&name) {
            let v = argv.get(i).ok_or_else(|| format!("{option} requires an argument"))?;
            i += 1;
            Some(v.as_str())
        } else {
            None
        };
        if let Some(why) = refusal(name) {
            return Err(format!("{option} is not supported: {why}"));
        }
        let v = value.unwrap_or_default();
        match name {
            "version" => return Ok(info(version())),
            "h" | "help" => return Ok(info(help())),
            "kernel" => st.kernel = Some(v.to_string()),
            "initrd" => st.initrd = Some(v.to_string()),
            "append" => st.append = Some(v.to_string()),
            "bios" => st.bios = Some(v.to_string()),
            "L" => st.data_dirs.push(v.to_string()),
            "m" => st.mem = Some(memory(&option, v)?),
            "smp" => st.smp = Some(smp(&option, v)?),
            "cpu" => st.cpu(&option, v)?,
            "machine" | "M" => st.machine(&option, v)?,
            "accel" => st.accel(&option, v)?,
            "enable-kvm" => st.accel.push("kvm".into()),
            // COM1 and the monitor on stdio (see `finish`).
            "nographic" => st.nographic = true,
            "display" => st.display(&option, v)?,
            "vga" if v == "std" || v == "none" => st.vga = Some(v.to_string()),
            "vga" => {
                return Err(format!(
                    "{option} {v} is not supported: ferrovm has the standard VGA (-vga std) or none (-vga none)"
                ))
            }
            "vnc" => {
                vnc::parse_vnc_spec(v).map_err(|e| format!("{option} {v}: {e}"))?;
                st.vnc = Some(v.to_string());
            }
            // A monitor on /dev/null reads nothing and says nothing: none.
            "monitor" if v == "none" || v == "/dev/null" => st.monitor_given = true,
            "monitor" => {
                st.monitor_given = true;
                monitor::parse_chardev_uri(v).map_err(|e| format!("{option} {v}: {e}"))?;
                st.monitor.push(v.to_string());
            }
            "qmp" => {
                st.monitor_given = true;
                monitor::parse_chardev_uri(v).map_err(|e| format!("{option} {v}: {e}"))?;
                st.qmp.push(v.to_string());
            }
            "chardev" => st.chardev(&option, v)?,
            "mon" => {
                st.monitor_given = true;
                st.mon(&option, v)?;
            }
            "S" => st.paused = true,
            "s" => st.gdb = Some("tcp::1234".into()),
            "gdb" => {
                vmm::gdb::parse_gdb_dev(v)?;
                st.gdb = Some(v.to_string());
            }
            "usb" => st.usb = true,
            "usbdevice" => match v {
                "tablet" => {
                    st.usb = true;
                    st.usb_devices.push("tablet");
                }
                "keyboard" => {
                    st.usb = true;
                    st.usb_devices.push("kbd");
                }
                "mouse" => {
                    st.usb = true;
                    st.usb_devices.push("mouse");
                }
                _ => return Err(format!("{option} {v} is not supported: ferrovm has tablet, mouse and keyboard")),
            },
            "incoming" => {
                // `defer`: the monitor's migrate-incoming gives the URI.
                if v != "defer" {
                    v.parse::<vmm::snapshot::MigrationUri>().map_err(|e| format!("{option} {v}: {e}"))?;
                }
                st.incoming = Some(v.to_string());
            }
            "loadvm" => st.loadvm = Some(v.to_string()),
            "parallel" if v == "none" => st.parallel_given = true,
            "parallel" => return Err(format!("{option} {v} is not supported: ferrovm has no parallel port")),
            "serial" => {
                // As in QEMU, a serial port that carries a monitor (mon:)
                // replaces the default monitor.
                if v.starts_with("mon:") {
                    st.monitor_given = true;
                }
                match v.strip_prefix("chardev:") {
                    Some(id) => {
                        let b = st.chardev_serial(&option, v, id)?;
                        st.serial_chardevs.push((st.serial.len(), id.to_string()));
                        st.serial.push(b);
                    }
                    None => st.serial.push(serial(&option, v)?),
                }
            }
            "debugcon" => {
                let b = serial(&option, v)?;
                if b == "mon:stdio" || b.starts_with("pty") {
                    return Err(format!("{option} {v}: ferrovm's debug console takes stdio, file:PATH, null or none"));
                }
                st.debugcon = Some(b);
            }
            "smbios" => {
                crate::cli::parse_smbios(&[v.to_string()], None)?;
                st.smbios.push(v.to_string());
            }
            "object" => st.object(&option, v)?,
            "no-hpet" => st.no_hpet = true,
            // QEMU's older spelling of kernel-irqchip=off.
            "no-kvm-irqchip" => st.kvm_irqchip_off = true,
            "no-acpi" => st.no_acpi = true,
            "uuid" => {
                firmware::smbios::parse_uuid(v).map_err(|e| format!("{option}: {e}"))?;
                st.uuid = Some(v.to_string());
            }
            "nodefaults" => st.nodefaults = true,
            // -nodefconfig is QEMU's older name of -no-user-config.
            "no-user-config" | "nodefconfig" => {}
            "curses" => st.display(&option, "curses")?,
            "no-reboot" => st.no_reboot = true,
            "no-shutdown" => st.no_shutdown = true,
            "daemonize" => st.daemonize = true,
            "action" => st.action(&option, v)?,
            "netdev" => st.netdev(&option, v)?,
            "nic" => st.nic(&option, v)?,
            "net" => st.legacy_net(&option, v)?,
            "device" => st.device(&option, v)?,
            "drive" => st.drive(&option, v)?,
            // QEMU's shorthand for -drive if=pflash,format=raw,file=FILE.
            "pflash" => st.pflash_drive(&option, v, &Opts { pairs: Vec::new() })?,
            "hda" | "hdb" | "hdc" | "hdd" => {
                let index = name.as_bytes()[2] - b'a';
                st.disks.push(Disk { ide: true, index: Some(index), ..Disk::plain(v) });
            }
            "cdrom" => st.disks.push(Disk { ide: true, cdrom: true, readonly: true, index: Some(2), ..Disk::plain(v) }),
            "fda" | "fdb" => {
                let index = Some(u8::from(name == "fdb"));
                st.disks.push(Disk { floppy: true, index, ..Disk::plain(v) });
            }
            "snapshot" => st.snapshot = true,
            "name" => {
                parse_opts(v, Some("guest"))?.only(&option, &["guest", "process", "debug-threads"])?;
            }
            "pidfile" => st.pidfile = Some(PathBuf::from(v)),
            "localtime" => st.rtc_base = Some("localtime".into()),
            // The VNC server turns keysyms into the keys of a US keyboard;
            // clients with QEMU's extended key events send key positions.
            "k" if v == "en-us" => {}
            "k" => {
                return Err(format!(
                    "{option} {v} is not supported: ferrovm's VNC server maps keysyms as the US layout does \
                     (-k en-us); a client that sends QEMU's extended key events (noVNC, TigerVNC) needs no -k"
                ))
            }
            "d" => {
                let items: Vec<&str> = v.split(',').collect();
                if let Some(bad) = items.iter().find(|i| !cpu::guestlog::ITEMS.contains(i)) {
                    return Err(format!(
                        "{option} {bad} is not supported: ferrovm logs {} (in QEMU's formats)",
                        cpu::guestlog::ITEMS.join(", ")
                    ));
                }
                st.log = Some(v.to_string());
            }
            "D" => st.log_file = Some(v.to_string()),
            "rtc" => {
                let o = parse_opts(v, None)?;
                o.only(&option, &["base", "clock", "driftfix"])?;
                if let Some(b) = o.get("base") {
                    crate::cli::parse_rtc_base(b).map_err(|e| format!("{option}: base={e}"))?;
                    st.rtc_base = Some(b.to_string());
                }
                if let Some(d) = o.get("driftfix").filter(|d| *d != "none") {
                    return Err(format!(
                        "{option}: driftfix={d} is not supported: ferrovm does not reinject lost RTC ticks (driftfix=none)"
                    ));
                }
                if let Some(c) = o.get("clock").filter(|c| *c != "host") {
                    return Err(format!(
                        "{option}: clock={c} is not supported: ferrovm's RTC follows the host (clock=host)"
                    ));
                }
            }
            "boot" => {
                let o = parse_opts(v, Some("order"))?;
                o.only(&option, &["order", "menu", "once", "strict", "splash", "splash-time", "reboot-timeout"])?;
                for k in ["strict", "splash", "reboot-timeout"] {
                    if o.get(k).is_some() {
                        return Err(format!(
                            "{option} {k}= is not supported: ferrovm takes order=, once=, menu= and splash-time="
                        ));
                    }
                }
                // ferrovm's --boot: the order, then the other keys (menu=off is the default).
                let mut spec = o.get("order").unwrap_or(vmm::storage::DEFAULT_BOOT_ORDER).to_string();
                for k in ["once", "menu", "splash-time"] {
                    match o.get(k) {
                        Some("off") if k == "menu" => {}
                        Some(x) => spec.push_str(&format!(",{k}={x}")),
                        None => {}
                    }
                }
                vmm::storage::parse_boot(&spec).map_err(|e| format!("{option} {v}: {e}"))?;
                if o.get("order").is_some() || spec.contains(',') {
                    st.boot_order = Some(spec);
                }
            }
            _ => {
                return Err(format!(
                    "{option} is not supported by ferrovm (see `ferrovm qemu -help` for the options it takes)"
                ))
            }
        }
    }
    st.finish()
}

fn info(text: String) -> Translation {
    Translation { info: Some(text), ..Translation::default() }
}

fn version() -> String {
    format!("ferrovm {}: runs qemu-system-x86_64 command lines\n", env!("CARGO_PKG_VERSION"))
}

fn help() -> String {
    "usage: qemu-system-x86_64 [options] [disk_image]\n\
     ferrovm runs these of QEMU's options (README.md has the table):\n\
     -kernel -initrd -append -bios -L -m -smp -cpu -machine pc|q35 -accel kvm|tcg -enable-kvm\n\
     -machine kernel-irqchip=on|off -no-kvm-irqchip\n\
     -nographic -display none|vnc=HOST:N -vga std|none -vnc HOST:N|unix:PATH[,websocket=PORT][,password=on]\n\
     -serial stdio|mon:stdio|file:PATH|null|none\n\
     -qmp|-monitor unix:PATH|tcp:HOST:PORT,server=on[,wait=off] -monitor stdio|none -chardev socket -mon -S -s -gdb tcp::PORT|unix:PATH\n\
     -no-reboot -no-shutdown -action -netdev user -nic user|none -device e1000|virtio-net-pci|virtio-blk-pci|isa-debug-exit\n\
     -drive (if=ide|virtio|floppy, media=disk|cdrom) -hda..-hdd -cdrom -fda -fdb -snapshot -boot order=,once=,menu=,splash-time=\n\
     -name -pidfile -daemonize\n\
     -rtc base=utc -nodefaults -no-user-config\n\
     Others are refused by name.\n"
        .to_string()
}

/// `-m [size=]N[KMGT]`: bytes.
fn memory(option: &str, v: &str) -> Result<u64, String> {
    let o = parse_opts(v, Some("size"))?;
    o.only(option, &["size"])?;
    let size = o.get("size").ok_or_else(|| format!("{option} {v}: no size"))?;
    crate::cli::parse_mem(size).map_err(|e| format!("{option}: {e}"))
}

/// `-smp`: ferrovm's `--cpus` value, checked as ferrovm parses it.
fn smp(option: &str, v: &str) -> Result<String, String> {
    let o = parse_opts(v, Some("cpus"))?;
    o.only(option, &["cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads"])?;
    vmm::parse_smp(v).map_err(|e| format!("{option} {v}: {e}"))?;
    Ok(v.to_string())
}

/// `-serial`: ferrovm's `--serial` value.
fn serial(option: &str, v: &str) -> Result<String, String> {
    Ok(match v {
        "stdio" => "stdio".into(),
        // COM1 and a human monitor on stdio, Ctrl-A c switching (QEMU's mux).
        "mon:stdio" => "mon:stdio".into(),
        "null" | "none" => "none".into(),
        "pty" => "pty".into(),
        _ => match v.strip_prefix("file:") {
            Some(p) if !p.is_empty() => format!("file:{p}"),
            _ => {
                return Err(format!(
                    "{option} {v} is not supported: ferrovm's serial port goes to stdio, mon:stdio, file:PATH, \
                     pty, chardev:ID, null or none"
                ))
            }
        },
    })
}

/// A `-chardev`: what a monitor (`-mon`) and what a serial port
/// (`-serial chardev:`, `-device isa-serial`) make of it.
#[derive(Default)]
struct Chardev {
    id: String,
    /// The monitor's socket spec (as `-qmp` writes it), where one can be.
    monitor: Option<String>,
    /// The serial port's `--serial` value, where one can be.
    serial: Option<String>,
    /// `stdio,mux=on`: a monitor and a serial port share it.
    mux: bool,
    /// A virtio-serial port's host side (`--vport`'s keys), where one can be.
    vport: Option<String>,
    /// The backend, for messages.
    backend: String,
    /// The front end that took it (a chardev without `mux=on` serves one).
    used_by: std::cell::RefCell<Option<String>>,
}

/// A NIC model of `-device` or `-nic model=`: ferrovm's name.
fn nic_model(m: &str) -> Option<&'static str> {
    match m {
        "e1000" | "e1000-82540em" => Some("e1000"),
        "virtio-net-pci" | "virtio-net" | "virtio" => Some("virtio"),
        _ => None,
    }
}

/// Keys of `-netdev user` that ferrovm's NAT takes under the same name.
const USER_KEYS: &[&str] = &[
    "net",
    "host",
    "dns",
    "dhcpstart",
    "hostname",
    "domainname",
    "hostfwd",
    "restrict",
    "tftp",
    "bootfile",
    "ipv4",
    "ipv6",
    "ipv6-net",
    "ipv6-prefix",
    "ipv6-prefixlen",
    "ipv6-host",
    "ipv6-dns",
];

impl State {
    fn note(&mut self, s: String) {
        if !self.notes.contains(&s) {
            self.notes.push(s);
        }
    }

    /// `-cpu`: `max` and `host` are ferrovm's full model (x86-64-v3,
    /// `--cpu max`); `qemu64` (QEMU's default) and every other name its
    /// default model (x86-64-v2), with a note for the others, which that
    /// only approximates. The last `-cpu` wins, as in QEMU.
    fn cpu(&mut self, option: &str, v: &str) -> Result<(), String> {
        let mut parts = v.split(',');
        let model = parts.next().unwrap_or_default();
        if model == "help" || model == "?" {
            return Err(format!(
                "{option} help: ferrovm has two CPU models: -cpu max (and host) is x86-64-v3 with AVX2, FMA, \
                 AES-NI and PCLMULQDQ (ferrovm --cpu max); qemu64 and every other name are x86-64-v2 with \
                 SSE4.2 and no AVX (--cpu v2)"
            ));
        }
        self.cpu_max = matches!(model, "max" | "host");
        if !matches!(model, "max" | "host" | "qemu64") {
            self.note(format!(
                "-cpu {model}: ferrovm runs it as its v2 model (x86-64-v2: SSE4.2, no AVX); -cpu max gives x86-64-v3"
            ));
        }
        if parts.next().is_some() {
            self.note(format!("-cpu {v}: CPU features are fixed in ferrovm's models; the feature list is not applied"));
        }
        Ok(())
    }

    fn machine(&mut self, option: &str, v: &str) -> Result<(), String> {
        let o = parse_opts(v, Some("type"))?;
        o.only(
            option,
            &[
                "type",
                "accel",
                "usb",
                "vmport",
                "graphics",
                "dump-guest-core",
                "mem-merge",
                "hpet",
                "acpi",
                "smm",
                "kernel-irqchip",
            ],
        )?;
        if let Some(k) = o.get("kernel-irqchip") {
            self.kernel_irqchip(option, k)?;
        }
        // ferrovm's CPU has no System Management Mode: QEMU's smm=off.
        if let Some(v) = o.get("smm").filter(|v| on_off(option, "smm", v) != Ok(false)) {
            return Err(format!(
                "{option} smm={v} is not supported: ferrovm's CPU has no System Management Mode (smm=off)"
            ));
        }
        if let Some(h) = o.get("hpet") {
            self.no_hpet = !on_off(option, "hpet", h)?;
        }
        // acpi=auto is on for a PC.
        match o.get("acpi") {
            Some("auto") | None => {}
            Some(a) => self.no_acpi = !on_off(option, "acpi", a)?,
        }
        if let Some(t) = o.get("type") {
            let q35 = t == "q35" || t.starts_with("pc-q35-");
            let pc = t == "pc" || t.starts_with("pc-i440fx-");
            if q35 {
                self.note(format!("-machine {t}: ferrovm's PC has the i440FX chipset (as -machine pc)"));
            } else if !pc {
                return Err(format!("{option} type={t} is not supported: ferrovm's machine is the PC (pc or q35)"));
            }
        }
        if let Some(a) = o.get("accel") {
            let list: Vec<String> = a.split(':').map(str::to_string).collect();
            for x in &list {
                check_accel(option, x)?;
            }
            self.machine_accel = Some(list);
        }
        if let Some(u) = o.get("usb") {
            self.usb |= on_off(option, "usb", u)?;
        }
        if o.get("graphics").is_some_and(|g| on_off(option, "graphics", g) != Ok(false)) {
            return Err(format!("{option} graphics=on is not supported: ferrovm has no display"));
        }
        Ok(())
    }

    /// `-display`: `none`, or `vnc=SPEC`; ferrovm has no window.
    fn display(&mut self, option: &str, v: &str) -> Result<(), String> {
        if let Some(spec) = v.strip_prefix("vnc=") {
            vnc::parse_vnc_spec(spec).map_err(|e| format!("{option} {v}: {e}"))?;
            self.vnc = Some(spec.to_string());
            return Ok(());
        }
        let o = parse_opts(v, Some("type"))?;
        match o.get("type") {
            Some("none") => Ok(()),
            Some("curses") => {
                o.only(option, &["type", "charset"])?;
                self.curses = true;
                Ok(())
            }
            Some("vnc") => Err(format!("{option} {v}: name the display, as -display vnc=HOST:N")),
            _ => Err(format!(
                "{option} {v} is not supported: ferrovm has no window; show the screen over VNC \
                 (-display vnc=127.0.0.1:0 or -vnc 127.0.0.1:0), or -display none"
            )),
        }
    }

    /// `-chardev BACKEND,id=ID,...`: kept for a `-mon`, `-serial chardev:`
    /// or `-device isa-serial` that names it. Sockets and stdio serve
    /// monitors; stdio, file, pty and null serve the serial port; stdio
    /// with `mux=on` serves both at once (QEMU's `mon:stdio`).
    fn chardev(&mut self, option: &str, v: &str) -> Result<(), String> {
        let o = parse_opts(v, Some("backend"))?;
        let backend = o.get("backend").unwrap_or_default().to_string();
        let id = o.get("id").filter(|i| !i.is_empty()).ok_or_else(|| format!("{option} {v}: id= is missing"))?;
        let mut dev = Chardev { id: id.to_string(), backend: backend.clone(), ..Default::default() };
        let what = format!("{option} {backend}");
        match backend.as_str() {
            "file" => {
                o.only(&what, &["backend", "id", "path"])?;
                let path =
                    o.get("path").filter(|p| !p.is_empty()).ok_or_else(|| format!("{what}: path= is missing"))?;
                dev.serial = Some(format!("file:{path}"));
                dev.vport = Some(format!("file={path}"));
            }
            "null" => {
                o.only(&what, &["backend", "id"])?;
                dev.serial = Some("none".into());
                dev.vport = Some("null".into());
            }
            "pty" => {
                o.only(&what, &["backend", "id"])?;
                // QEMU names the terminal by the chardev's id.
                dev.serial = Some(format!("pty,id={id}"));
                dev.vport = Some(format!("pty={id}"));
            }
            "stdio" | "socket" => {
                let mux = match o.get("mux") {
                    Some(m) => on_off(option, "mux", m)?,
                    None => false,
                };
                if mux && backend != "stdio" {
                    return Err(format!("{what},mux=on is not supported: ferrovm shares stdio (stdio,mux=on) only"));
                }
                // The monitor's parser knows the rest; mux= is this one's.
                let rest: Vec<String> = o
                    .pairs
                    .iter()
                    .filter(|(k, _)| k != "mux")
                    .map(|(k, val)| if k == "backend" { val.clone() } else { format!("{k}={val}") })
                    .collect();
                let (_, spec) = monitor::parse_chardev(&rest.join(",")).map_err(|e| {
                    format!("{option} {v}: {e} (ferrovm takes socket and stdio character devices for monitors)")
                })?;
                let mut uri = match &spec.endpoint {
                    monitor::Endpoint::Unix(p) => format!("unix:{}", p.display()),
                    monitor::Endpoint::Tcp(h, port) => format!("tcp:{h}:{port}"),
                    monitor::Endpoint::Stdio => "stdio".to_string(),
                };
                if let (monitor::Endpoint::Unix(p), false) = (&spec.endpoint, spec.wait) {
                    dev.vport = Some(format!("socket={}", p.display()));
                }
                if !matches!(spec.endpoint, monitor::Endpoint::Stdio) {
                    uri.push_str(&format!(",server=on,wait={}", if spec.wait { "on" } else { "off" }));
                } else {
                    dev.serial = Some("stdio".into());
                    dev.vport = Some("stdio".into());
                }
                dev.monitor = Some(uri);
                dev.mux = mux;
            }
            _ => {
                return Err(format!(
                    "{option} {backend} is not supported: ferrovm's character devices are stdio, file, pty, null \
                     and socket (for monitors)"
                ))
            }
        }
        self.chardevs.push(dev);
        Ok(())
    }

    /// The chardev `id`, given before `option`, taken by `option`'s front
    /// end: one that another front end took already is refused unless it
    /// has `mux=on`, as QEMU refuses it.
    fn find_chardev(&self, option: &str, v: &str, id: &str) -> Result<&Chardev, String> {
        let c = self
            .chardevs
            .iter()
            .rev()
            .find(|c| c.id == id)
            .ok_or_else(|| format!("{option} {v}: no -chardev with id={id} before it"))?;
        let mut used = c.used_by.borrow_mut();
        if let (false, Some(by)) = (c.mux, used.as_ref()) {
            return Err(format!(
                "{option} {v}: the chardev {id} already serves {by}; a chardev serves one front end unless it is \
                 stdio with mux=on"
            ));
        }
        *used = Some(format!("{option} {v}"));
        drop(used);
        Ok(c)
    }

    /// What COM1 becomes on the chardev `id` (`-serial chardev:ID`,
    /// `-device isa-serial,chardev=ID`).
    fn chardev_serial(&self, option: &str, v: &str, id: &str) -> Result<String, String> {
        let c = self.find_chardev(option, v, id)?;
        c.serial.clone().ok_or_else(|| {
            format!(
                "{option} {v}: a serial port on a {} chardev is not supported (stdio, file, pty or null)",
                c.backend
            )
        })
    }

    /// `-mon chardev=ID[,mode=control|readline]`: a monitor on a `-chardev`.
    fn mon(&mut self, option: &str, v: &str) -> Result<(), String> {
        let (id, mode) = monitor::parse_mon(v).map_err(|e| format!("{option} {v}: {e}"))?;
        let c = self.find_chardev(option, v, &id)?;
        let control = matches!(mode, monitor::Mode::Control { .. });
        if c.mux {
            // Resolved with the serial ports: COM1 on the same chardev
            // makes it mon:stdio.
            self.mux_monitors.push((id, control));
            return Ok(());
        }
        let uri = match (&c.monitor, c.backend.as_str()) {
            (Some(u), _) => u.clone(),
            // A monitor on null hears nothing and says nothing: none.
            (None, "null") => return Ok(()),
            (None, b) => {
                return Err(format!("{option} {v}: a monitor on a {b} chardev is not supported (socket or stdio)"))
            }
        };
        if control {
            self.qmp.push(uri);
        } else {
            self.monitor.push(uri);
        }
        Ok(())
    }

    /// Places `-device isa-serial` and the monitors of `stdio,mux=on`
    /// chardevs: an ISA serial port is COM1 only where neither `-serial`
    /// nor QEMU's default takes COM1, and a mux monitor on COM1's chardev
    /// makes COM1 `mon:stdio`.
    fn chardev_ports(&mut self) -> Result<(), String> {
        let mut com1_chardev = self.serial_chardevs.iter().find(|(i, _)| *i == 0).map(|(_, id)| id.clone());
        if let Some((first, id)) = self.isa_serials.first().cloned() {
            let default_com1 = self.serial.is_empty() && !self.nodefaults;
            let taken = self.serial.iter().any(|s| s != "none");
            if default_com1 || taken || self.isa_serials.len() > 1 {
                return Err("-device isa-serial: ferrovm has one serial port (COM1), and here it would be a second \
                            one (-serial or QEMU's default serial port has COM1: give -serial none or -nodefaults)"
                    .into());
            }
            self.serial = vec![first];
            com1_chardev = Some(id);
        }
        for (id, control) in std::mem::take(&mut self.mux_monitors) {
            if control {
                return Err(format!(
                    "-mon chardev={id},mode=control: QMP on a mux=on chardev is not supported (give QMP a socket)"
                ));
            }
            let port = self.vport_chardevs.iter().position(|c| *c == id);
            if com1_chardev.as_deref() == Some(id.as_str()) {
                if port.is_some() {
                    return Err(format!(
                        "-chardev stdio,mux=on,id={id}: COM1 and a virtio-serial port on one mux is not supported \
                         (give the port or COM1 a chardev of its own)"
                    ));
                }
                self.serial[0] = "mon:stdio".into();
            } else if let Some(spec) = port.and_then(|i| self.vports.get_mut(i)) {
                // The port shares stdio with the human monitor: Ctrl-A c.
                if let Some(head) = spec.strip_suffix("stdio") {
                    *spec = format!("{head}mon:stdio");
                }
            } else {
                self.monitor.push("stdio".into());
            }
        }
        Ok(())
    }

    /// `-device isa-serial,chardev=ID`: a serial port after those of
    /// `-serial` (and QEMU's default one).
    fn isa_serial(&mut self, option: &str, v: &str, o: &Opts) -> Result<(), String> {
        o.only(&format!("{option} isa-serial"), &["driver", "chardev", "id", "index"])?;
        let id = o.get("chardev").ok_or_else(|| format!("{option} {v}: chardev= is missing"))?;
        if o.get("index").is_some_and(|i| i != "0") {
            return Err(format!("{option} {v}: ferrovm has one serial port (COM1, index=0)"));
        }
        let b = self.chardev_serial(option, v, id)?;
        self.isa_serials.push((b, id.to_string()));
        Ok(())
    }

    fn accel(&mut self, option: &str, v: &str) -> Result<(), String> {
        let o = parse_opts(v, Some("accel"))?;
        o.only(option, &["accel", "thread", "tb-size", "kernel-irqchip"])?;
        let a = o.get("accel").ok_or_else(|| format!("{option} {v}: no accelerator"))?;
        check_accel(option, a)?;
        if let Some(k) = o.get("kernel-irqchip") {
            if a != "kvm" {
                return Err(format!("{option} {a},kernel-irqchip={k}: kernel-irqchip= belongs to kvm"));
            }
            self.kernel_irqchip(option, k)?;
        }
        match o.get("thread") {
            None => {}
            Some(t @ ("single" | "multi")) if a == "tcg" => self.tcg_thread = Some(t.to_string()),
            Some(t) if a == "tcg" => return Err(format!("{option} thread={t}: expected single or multi")),
            Some(t) => return Err(format!("{option} {a},thread={t}: thread= belongs to tcg")),
        }
        self.accel.push(a.to_string());
        Ok(())
    }

    /// `kernel-irqchip=`: KVM's interrupt controllers (`on`, the default)
    /// or the machine's own (`off`); `split` (the local APIC in KVM, the
    /// rest in userspace) is refused.
    fn kernel_irqchip(&mut self, option: &str, v: &str) -> Result<(), String> {
        if v == "split" {
            return Err(format!(
                "{option} kernel-irqchip=split is not supported: ferrovm keeps every interrupt controller in KVM \
                 (kernel-irqchip=on) or in ferrovm (kernel-irqchip=off)"
            ));
        }
        self.kvm_irqchip_off = !on_off(option, "kernel-irqchip", v)?;
        Ok(())
    }

    fn action(&mut self, option: &str, v: &str) -> Result<(), String> {
        let o = parse_opts(v, None)?;
        o.only(option, &["reboot", "shutdown"])?;
        match o.get("reboot") {
            Some("shutdown") => self.no_reboot = true,
            Some("reset") | None => {}
            Some(r) => return Err(format!("{option} reboot={r} is not supported (reset or shutdown)")),
        }
        match o.get("shutdown") {
            Some("poweroff") | None => Ok(()),
            // -no-shutdown.
            Some("pause") => {
                self.no_shutdown = true;
                Ok(())
            }
            Some(s) => Err(format!("{option} shutdown={s} is not supported (poweroff or pause)")),
        }
    }

    fn netdev(&mut self, option: &str, v: &str) -> Result<(), String> {
        let o = parse_opts(v, Some("type"))?;
        self.net_given = true;
        match o.get("type").unwrap_or_default() {
            "user" => {
                let mut known = vec!["type", "id"];
                known.extend_from_slice(USER_KEYS);
                o.only(option, &known)?;
            }
            "tap" | "bridge" => check_tap(option, &o, &["id"])?,
            t => {
                return Err(format!(
                    "{option} {t} is not supported: ferrovm's network backends are the user-mode NAT \
                     (-netdev user) and host TAP interfaces (-netdev tap, -netdev bridge)"
                ))
            }
        }
        let id = o.get("id").ok_or_else(|| format!("{option} {v}: id= is missing"))?.to_string();
        self.netdevs.push((id, o));
        Ok(())
    }

    fn nic(&mut self, option: &str, v: &str) -> Result<(), String> {
        let o = parse_opts(v, Some("type"))?;
        self.net_given = true;
        match o.get("type").unwrap_or_default() {
            "none" => return Ok(()),
            "user" => {
                let mut known = vec!["type", "id", "model", "mac"];
                known.extend_from_slice(USER_KEYS);
                o.only(option, &known)?;
            }
            "tap" | "bridge" => check_tap(option, &o, &["id", "model", "mac"])?,
            t => {
                return Err(format!(
                    "{option} {t} is not supported: ferrovm's network backends are the user-mode NAT \
                     (-nic user) and host TAP interfaces (-nic tap, -nic bridge)"
                ))
            }
        }
        let m = o.get("model").unwrap_or("e1000");
        let model = nic_model(m).ok_or_else(|| {
            format!("{option} model={m} is not supported: ferrovm's NICs are e1000 and virtio-net-pci")
        })?;
        let mac = o.get("mac").map(str::to_string);
        self.nics.push(Nic { netdev: None, opts: o, model, mac, vectors: None, hub: None, romfile: None });
        Ok(())
    }

    /// QEMU's legacy `-net`: `nic[,model=][,macaddr=][,vectors=][,vlan=]`,
    /// `user[,vlan=][,name=][,...]` with `-netdev user`'s keys, and `none`.
    /// Each NIC and NAT sits on a hub (`vlan=`, default 0, as QEMU before
    /// 3.0 numbered them; 7.2 puts every `-net` on hub 0).
    fn legacy_net(&mut self, option: &str, v: &str) -> Result<(), String> {
        let o = parse_opts(v, Some("type"))?;
        self.net_given = true;
        let vlan = match o.get("vlan") {
            Some(n) => n.parse::<u32>().map_err(|_| format!("{option} vlan={n}: expected a hub number"))?,
            None => 0,
        };
        match o.get("type").unwrap_or_default() {
            "none" => o.only(option, &["type"]),
            "nic" => {
                o.only(option, &["type", "vlan", "model", "macaddr", "name", "vectors"])?;
                let m = o.get("model").unwrap_or("e1000");
                let model = nic_model(m).ok_or_else(|| {
                    format!("{option} model={m} is not supported: ferrovm's NICs are e1000 and virtio-net-pci")
                })?;
                let (mac, vectors) = (o.get("macaddr").map(str::to_string), o.get("vectors").map(str::to_string));
                self.legacy_nets.push(LegacyNet::Nic { vlan, model, mac, vectors });
                Ok(())
            }
            "user" => {
                let mut known = vec!["type", "vlan", "name", "id"];
                known.extend_from_slice(USER_KEYS);
                o.only(option, &known)?;
                self.legacy_nets.push(LegacyNet::Backend { vlan, opts: o });
                Ok(())
            }
            "tap" | "bridge" => {
                check_tap(option, &o, &["vlan", "name", "id"])?;
                self.legacy_nets.push(LegacyNet::Backend { vlan, opts: o });
                Ok(())
            }
            t => Err(format!(
                "{option} {t} is not supported: ferrovm's network backends are the user-mode NAT (-net user) \
                 and host TAP interfaces (-net tap, -net bridge)"
            )),
        }
    }

    /// The NICs of the legacy `-net` options, hub by hub: a NIC with a
    /// `-net user` on its hub is on that NAT; NICs without one share an
    /// internal hub of their own (they reach each other and nothing else,
    /// as on QEMU's hub).
    fn legacy_nics(&mut self) -> Result<(), String> {
        let mut vlans: Vec<u32> = self
            .legacy_nets
            .iter()
            .map(|n| match n {
                LegacyNet::Nic { vlan, .. } | LegacyNet::Backend { vlan, .. } => *vlan,
            })
            .collect();
        vlans.sort_unstable();
        vlans.dedup();
        for vlan in vlans {
            let nics: Vec<_> = self
                .legacy_nets
                .iter()
                .filter_map(|n| match n {
                    LegacyNet::Nic { vlan: v, model, mac, vectors } if *v == vlan => {
                        Some((*model, mac.clone(), vectors.clone()))
                    }
                    _ => None,
                })
                .collect();
            let users: Vec<&Opts> = self
                .legacy_nets
                .iter()
                .filter_map(|n| match n {
                    LegacyNet::Backend { vlan: v, opts } if *v == vlan => Some(opts),
                    _ => None,
                })
                .collect();
            if users.len() > 1 {
                return Err(format!(
                    "-net {}: two backends on hub {vlan}: ferrovm puts one NAT or TAP on a hub",
                    users[1].get("type").unwrap_or("user")
                ));
            }
            match (nics.len(), users.first()) {
                (0, Some(u)) => self.notes.push(format!(
                    "-net {} (hub {vlan}): no -net nic on it, so no NIC uses it",
                    u.get("type").unwrap_or("user")
                )),
                (0, None) => {}
                (1, Some(u)) => {
                    let (model, mac, vectors) = nics[0].clone();
                    let opts = (*u).clone();
                    self.nics.push(Nic { netdev: None, opts, model, mac, vectors, hub: None, romfile: None });
                }
                (_, Some(u)) => {
                    let t = u.get("type").unwrap_or("user");
                    return Err(format!(
                        "-net nic: {} NICs on hub {vlan} with -net {t}: ferrovm's NAT or TAP serves one NIC \
                         (-nic {t} for each)",
                        nics.len()
                    ));
                }
                (_, None) => {
                    let hub = format!("qemu-net{vlan}-{}", std::process::id());
                    for (model, mac, vectors) in nics {
                        self.nics.push(Nic {
                            netdev: None,
                            opts: Opts::default(),
                            model,
                            mac,
                            vectors,
                            hub: Some(hub.clone()),
                            romfile: None,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// `-object`: the entropy sources a virtio-rng reads. Other objects
    /// are refused by their type.
    fn object(&mut self, option: &str, v: &str) -> Result<(), String> {
        let o = parse_opts(v, Some("qom-type"))?;
        let kind = o.get("qom-type").unwrap_or_default();
        let id = || o.get("id").map(str::to_string).ok_or_else(|| format!("{option} {kind}: id= is missing"));
        match kind {
            "rng-random" => {
                o.only(&format!("{option} {kind}"), &["qom-type", "id", "filename"])?;
                // QEMU's rng-random reads /dev/urandom unless told otherwise.
                let file = o.get("filename").unwrap_or(devices::virtio::rng::DEFAULT_SOURCE).to_string();
                self.rng_objects.push((id()?, file));
            }
            "rng-builtin" => {
                o.only(&format!("{option} {kind}"), &["qom-type", "id"])?;
                self.rng_objects.push((id()?, devices::virtio::rng::DEFAULT_SOURCE.to_string()));
            }
            _ => {
                return Err(format!(
                    "{option} {kind} is not supported: ferrovm's objects are the entropy sources of a virtio-rng \
                     (rng-random, rng-builtin)"
                ))
            }
        }
        Ok(())
    }

    fn device(&mut self, option: &str, v: &str) -> Result<(), String> {
        let o = parse_opts(v, Some("driver"))?;
        let driver = o.get("driver").unwrap_or_default();
        if driver == "isa-serial" {
            return self.isa_serial(option, v, &o);
        }
        if let Some(model) = nic_model(driver) {
            let mut known = vec!["driver", "netdev", "mac", "id", "romfile"];
            if model == "virtio" {
                known.push("vectors");
            }
            o.only(&format!("{option} {driver}"), &known)?;
            // The boot ROM, found as QEMU finds firmware; empty for none.
            let romfile = o.get("romfile").map(|r| if r.is_empty() { String::new() } else { self.find_firmware(r) });
            if let Some(r) = romfile.as_deref().filter(|r| r.contains(',')) {
                return Err(format!("{option} {driver},romfile={r}: a comma in the path is not supported"));
            }
            // Without netdev= QEMU makes the NIC anyway, on no network.
            let netdev = o.get("netdev");
            let mut opts = Opts::default();
            if netdev.is_none() {
                self.note(format!(
                    "{option} {driver}: no netdev= (QEMU: \"nic {driver} has no peer\"): it is on no network"
                ));
                opts.pairs.push(("type".into(), "unconnected".into()));
            }
            self.nics.push(Nic {
                netdev: netdev.map(str::to_string),
                opts,
                model,
                mac: o.get("mac").map(str::to_string),
                vectors: o.get("vectors").map(str::to_string),
                hub: None,
                romfile,
            });
            return Ok(());
        }
        match driver {
            "virtio-rng-pci" | "virtio-rng" => {
                o.only(&format!("{option} {driver}"), &["driver", "rng", "max-bytes", "period", "id"])?;
                // Without rng=, QEMU reads its built-in source: the host's urandom.
                let source = match o.get("rng") {
                    None => devices::virtio::rng::DEFAULT_SOURCE.to_string(),
                    Some(id) => self.rng_objects.iter().find(|(i, _)| i == id).map(|(_, f)| f.clone()).ok_or_else(
                        || format!("{option} {driver}: rng={id}: no -object rng-random or rng-builtin with id={id} before it"),
                    )?,
                };
                let mut spec = format!("filename={}", source.replace(',', ",,"));
                for k in ["max-bytes", "period"] {
                    if let Some(x) = o.get(k) {
                        spec.push_str(&format!(",{k}={x}"));
                    }
                }
                crate::cli::parse_rng(&spec).map_err(|e| format!("{option} {v}: {e}"))?;
                self.rngs.push(spec);
                Ok(())
            }
            "virtio-serial-pci" | "virtio-serial" => {
                o.only(&format!("{option} {driver}"), &["driver", "id", "max_ports"])?;
                if self.virtio_serial {
                    return Err(format!("{option} {driver}: a second virtio-serial function is not supported"));
                }
                self.virtio_serial = true;
                Ok(())
            }
            "virtserialport" | "virtconsole" => {
                o.only(&format!("{option} {driver}"), &["driver", "chardev", "name", "id", "bus"])?;
                let id = o.get("chardev").ok_or_else(|| format!("{option} {v}: chardev= is missing"))?;
                let c = self.find_chardev(option, v, id)?;
                let host = c.vport.clone().ok_or_else(|| {
                    format!(
                        "{option} {v}: a virtio-serial port on a {} chardev is not supported (socket with path= \
                         and wait=off, file, pty or null)",
                        c.backend
                    )
                })?;
                let mut spec = if driver == "virtconsole" { "console,".to_string() } else { String::new() };
                match o.get("name") {
                    Some(n) if n.contains(',') || n.is_empty() => {
                        return Err(format!("{option} {v}: name={n} is not a port name"))
                    }
                    Some(n) => spec.push_str(&format!("name={n},")),
                    None if driver == "virtserialport" => {
                        return Err(format!("{option} {v}: name= is missing (the name the guest finds the port by)"))
                    }
                    None => {}
                }
                spec.push_str(&host);
                crate::cli::parse_vport(&spec).map_err(|e| format!("{option} {v}: {e}"))?;
                self.vports.push(spec);
                self.vport_chardevs.push(id.to_string());
                Ok(())
            }
            "usb-tablet" | "usb-mouse" | "usb-kbd" => {
                o.only(&format!("{option} {driver}"), &["driver", "id", "bus", "port"])?;
                if let Some(b) = o.get("bus").filter(|b| !b.starts_with("usb-bus")) {
                    return Err(format!("{option} {driver},bus={b}: ferrovm's USB bus is the PIIX3's (usb-bus.0)"));
                }
                self.usb_devices.push(match driver {
                    "usb-tablet" => "tablet",
                    "usb-mouse" => "mouse",
                    _ => "kbd",
                });
                Ok(())
            }
            "virtio-blk-pci" | "virtio-blk" => {
                o.only(&format!("{option} {driver}"), &["driver", "drive", "id"])?;
                let id = o.get("drive").ok_or_else(|| format!("{option} {driver}: drive= is missing"))?;
                let at = self
                    .drives_by_id
                    .iter()
                    .position(|(d, _)| d == id)
                    .ok_or_else(|| format!("{option} {driver}: drive={id}: no -drive if=none,id={id} before it"))?;
                let (_, disk) = self.drives_by_id.remove(at);
                self.disks.push(disk);
                Ok(())
            }
            "isa-debug-exit" => {
                o.only(&format!("{option} {driver}"), &["driver", "iobase", "iosize", "id"])?;
                // QEMU's defaults: iobase 0x501, iosize 2.
                let base = number(option, "iobase", o.get("iobase").unwrap_or("0x501"))?;
                let size = number(option, "iosize", o.get("iosize").unwrap_or("2"))?;
                if base != u64::from(devices::legacy::debug_exit::DEBUG_EXIT_PORT) {
                    return Err(format!(
                        "{option} isa-debug-exit,iobase={base:#x} is not supported: ferrovm's debug-exit port \
                         is at 0xf4 (iobase=0xf4)"
                    ));
                }
                if !matches!(size, 1 | 2 | 4) {
                    return Err(format!("{option} isa-debug-exit,iosize={size}: expected 1, 2 or 4"));
                }
                // ferrovm's machine always has the port (vmm/src/machine.rs).
                Ok(())
            }
            "" => Err(format!("{option} {v}: no device name")),
            d => Err(format!("{option} {d} is not supported: ferrovm has no such device")),
        }
    }

    fn drive(&mut self, option: &str, v: &str) -> Result<(), String> {
        let o = parse_opts(v, None)?;
        o.only(
            option,
            &[
                "file",
                "if",
                "format",
                "readonly",
                "read-only",
                "snapshot",
                "cache",
                "media",
                "id",
                "index",
                "aio",
                "bus",
                "unit",
                "driver",
            ],
        )?;
        let file =
            o.get("file").ok_or_else(|| format!("{option} {v}: file= is missing (ferrovm has no empty drives)"))?;
        let format = drive_format(option, &o)?;
        if o.get("if") == Some("pflash") {
            return self.pflash_drive(option, file, &o);
        }
        let cdrom = match o.get("media") {
            None | Some("disk") => false,
            Some("cdrom") => true,
            Some(m) => return Err(format!("{option} media={m}: use media=disk or media=cdrom")),
        };
        let index = match (o.get("index"), o.get("bus"), o.get("unit")) {
            (None, None, None) => None,
            (Some(i), None, None) => Some(
                i.parse::<u8>()
                    .ok()
                    .filter(|&i| i < 4)
                    .ok_or_else(|| format!("{option} index={i}: the IDE positions are 0 to 3"))?,
            ),
            // QEMU's bus= and unit=: the IDE channel and the drive on it
            // (index = bus * 2 + unit), or the floppy drive (unit=).
            (None, bus, unit) => {
                let floppy = o.get("if") == Some("floppy");
                let n = |k: &str, v: Option<&str>, max: u8| -> Result<u8, String> {
                    match v {
                        None => Ok(0),
                        Some(x) => x
                            .parse::<u8>()
                            .ok()
                            .filter(|&n| n <= max)
                            .ok_or_else(|| format!("{option} {k}={x}: expected 0 to {max}")),
                    }
                };
                let (b, u) = (n("bus", bus, if floppy { 0 } else { 1 })?, n("unit", unit, 1)?);
                Some(b * 2 + u)
            }
            (Some(_), _, _) => return Err(format!("{option}: index= and bus=/unit= name the same thing; give one")),
        };
        let format = match format {
            Some(f @ ("raw" | "qcow2")) => Some(f.to_string()),
            Some(f) => return Err(format!("{option} format={f} is not supported: ferrovm reads raw and qcow2")),
            None => None,
        };
        let flag = |k: &str| o.get(k).map(|x| on_off(option, k, x)).transpose().map(Option::unwrap_or_default);
        let disk = Disk {
            format,
            readonly: flag("readonly")? || flag("read-only")? || cdrom,
            snapshot: flag("snapshot")?,
            cdrom,
            index,
            ..Disk::plain(file)
        };
        let interface = o.get("if").unwrap_or("ide");
        match interface {
            "ide" => {}
            "floppy" if cdrom => return Err(format!("{option} if=floppy: media=cdrom is for if=ide")),
            "floppy" if index.is_some_and(|i| i > 1) => {
                return Err(format!("{option} if=floppy: index= is 0 (A:) or 1 (B:)"))
            }
            "floppy" => {}
            _ if cdrom || index.is_some() => {
                return Err(format!("{option} if={interface}: media=cdrom and index= are for if=ide and if=floppy"))
            }
            _ => {}
        }
        match interface {
            "virtio" => self.disks.push(disk),
            "none" => {
                let id =
                    o.get("id").ok_or_else(|| format!("{option} if=none needs id= (for -device virtio-blk-pci)"))?;
                self.drives_by_id.push((id.to_string(), disk));
            }
            "ide" => self.disks.push(Disk { ide: true, ..disk }),
            "floppy" => self.disks.push(Disk { floppy: true, ..disk }),
            i => {
                return Err(format!(
                    "{option} if={i} is not supported: ferrovm's drives are IDE (if=ide), virtio-blk (if=virtio) \
                     and floppy (if=floppy)"
                ))
            }
        }
        Ok(())
    }

    /// `-drive if=pflash`: a flash drive (`--pflash`), unit 0 the firmware.
    fn pflash_drive(&mut self, option: &str, file: &str, o: &Opts) -> Result<(), String> {
        match drive_format(option, o)? {
            None | Some("raw") => {}
            Some(f) => return Err(format!("{option} if=pflash,format={f}: ferrovm's flash drives are raw images")),
        }
        for k in ["media", "index", "bus", "cdrom"] {
            if o.get(k).is_some() {
                return Err(format!("{option} if=pflash: {k}= is not a flash drive's option"));
            }
        }
        let unit = o
            .get("unit")
            .map(|u| {
                u.parse::<u8>().ok().filter(|&u| u < 4).ok_or_else(|| format!("{option} unit={u}: expected 0 to 3"))
            })
            .transpose()?;
        let flag = |k: &str| o.get(k).map(|x| on_off(option, k, x)).transpose().map(Option::unwrap_or_default);
        let mut spec = file.to_string();
        if flag("readonly")? || flag("read-only")? {
            spec.push_str(",readonly=on");
        }
        if flag("snapshot")? || self.snapshot {
            spec.push_str(",snapshot=on");
        }
        self.pflash.push((unit, spec));
        Ok(())
    }

    /// The `--pflash` arguments in unit order: units given or counted in
    /// order, from 0 without a gap, as QEMU stacks them.
    fn pflash_args(&self) -> Result<Vec<String>, String> {
        let mut units: Vec<(u8, &String)> = Vec::new();
        for (i, (unit, spec)) in self.pflash.iter().enumerate() {
            let u = unit.unwrap_or(u8::try_from(i).unwrap_or(u8::MAX));
            if units.iter().any(|(v, _)| *v == u) {
                return Err(format!("-drive if=pflash: unit {u} is given twice"));
            }
            units.push((u, spec));
        }
        units.sort_by_key(|(u, _)| *u);
        if let Some((i, (u, _))) = units.iter().enumerate().find(|(i, (u, _))| usize::from(*u) != *i) {
            return Err(format!(
                "-drive if=pflash: unit {u} without unit {i}: the flash units start at 0, without a gap"
            ));
        }
        Ok(units.into_iter().flat_map(|(_, s)| ["--pflash".to_string(), s.clone()]).collect())
    }

    /// The accelerator: QEMU's list in order of preference (KVM, or TCG,
    /// QEMU's default, which is ferrovm's JIT).
    fn accel_arg(&self) -> &'static str {
        let list =
            if self.accel.is_empty() { self.machine_accel.clone().unwrap_or_default() } else { self.accel.clone() };
        match list.first().map(String::as_str) {
            Some("kvm") if list.iter().any(|a| a == "tcg") => "auto",
            Some("kvm") => "kvm",
            _ => "jit",
        }
    }

    /// A firmware file as QEMU finds it: the name as given, else in the
    /// folders of `-L`, else where Debian's packages put them.
    fn find_firmware(&self, name: &str) -> String {
        if Path::new(name).exists() {
            return name.to_string();
        }
        let dirs = self.data_dirs.iter().map(String::as_str).chain(DATA_DIRS.iter().copied());
        dirs.map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
            .map_or_else(|| name.to_string(), |p| p.display().to_string())
    }

    /// Why `-kernel KERNEL` boots directly rather than through the BIOS,
    /// when it does: an ELF that is not a multiboot kernel (a vmlinux,
    /// which QEMU boots through its PVH option ROM when it has a PVH note;
    /// ferrovm's BIOS boot has no PVH ROM, its direct boot loads a vmlinux),
    /// or less RAM than ferrovm's BIOS boot takes. A file that cannot be
    /// read goes to the BIOS boot, whose error names it.
    fn direct_boot(&self, kernel: &str) -> Option<String> {
        let mem = self.mem.unwrap_or(128 << 20);
        if mem < vmm::bios::MIN_RAM {
            return Some(format!(
                "-kernel {kernel} boots directly: -m {} KiB is below the {} MiB ferrovm's BIOS takes",
                mem >> 10,
                vmm::bios::MIN_RAM >> 20
            ));
        }
        use std::io::Read;
        let mut head = Vec::new();
        std::fs::File::open(kernel)
            .and_then(|f| f.take(firmware::multiboot::MULTIBOOT_SEARCH as u64 + 16).read_to_end(&mut head))
            .ok()?;
        let multiboot = firmware::multiboot::probe(&head);
        (firmware::elf::is_elf(&head) && matches!(multiboot, Ok(None))).then(|| {
            format!(
                "-kernel {kernel} is an ELF vmlinux, which QEMU boots through its PVH option ROM: ferrovm boots it \
                 directly (its BIOS boot takes a bzImage or a multiboot kernel)"
            )
        })
    }

    fn finish(mut self) -> Result<Translation, String> {
        let mut args: Vec<String> = vec!["--accel".into(), self.accel_arg().into()];
        // QEMU's default model (qemu64) and the named ones run as v2;
        // `ferrovm run`'s own default under the JIT is max.
        args.extend(["--cpu".into(), if self.cpu_max { "max" } else { "v2" }.into()]);
        if let Some(smp) = &self.smp {
            args.extend(["--cpus".into(), smp.clone()]);
        }
        if let Some(t) = &self.tcg_thread {
            args.extend(["--vcpu-threads".into(), t.clone()]);
        }
        // QEMU's default RAM is 128 MiB.
        args.extend(["--mem".into(), format!("{}K", self.mem.unwrap_or(128 << 20) >> 10)]);
        self.chardev_ports()?;
        // QEMU's default devices, which -nodefaults leaves out.
        let default_monitor = !self.monitor_given && !self.nodefaults;
        let default_serial = self.serial.is_empty() && !self.nodefaults;
        let default_parallel = !self.parallel_given && !self.nodefaults;
        if self.daemonize && self.nographic && (default_monitor || default_serial || default_parallel) {
            return Err("-nographic cannot be used with -daemonize (its serial port, parallel port and monitor are \
                        on stdio; give -serial, -parallel and -monitor, or -nodefaults)"
                .into());
        }
        // The first -serial is COM1; ferrovm has no other serial port.
        let serial = match self.serial.split_first() {
            Some((first, rest)) => {
                if rest.iter().any(|s| s != "none") {
                    return Err("-serial: ferrovm has one serial port (COM1); a second -serial is not supported".into());
                }
                first.clone()
            }
            // -nodefaults leaves COM1 out; -display curses shows COM1 on a
            // console of its own.
            None if self.nodefaults || self.curses => "none".into(),
            // -nographic: COM1 and the monitor share stdio (`Ctrl-A c`).
            None if self.nographic && default_monitor => "mon:stdio".into(),
            None if self.nographic => "stdio".into(),
            // QEMU shows COM1 on its display; ferrovm has none, and shows
            // it on stdio, which a background process does not have.
            None if self.daemonize => "none".into(),
            // The debug console has stdio; QEMU shows COM1 on its display.
            None if self.debugcon.as_deref() == Some("stdio") && !self.nographic => {
                self.note("-debugcon stdio: COM1 goes nowhere (QEMU shows it on its display; ferrovm has none)".into());
                "none".into()
            }
            None => "stdio".into(),
        };
        if let Some(d) = self.debugcon.clone() {
            if d == "stdio" && serial.ends_with("stdio") {
                return Err(format!(
                    "-debugcon stdio: cannot use stdio by multiple character devices (COM1 is on {serial})"
                ));
            }
            if d == "stdio" && self.daemonize {
                return Err("-debugcon stdio: cannot use stdio with -daemonize".into());
            }
            args.extend(["--debugcon".into(), d]);
        }
        // -nographic with a -serial of its own: the monitor alone on stdio.
        if self.nographic && default_monitor && !self.serial.is_empty() {
            if serial.ends_with("stdio") {
                return Err(format!(
                    "-serial {serial}: cannot use stdio by multiple character devices (-nographic puts the \
                     monitor on stdio: add -monitor none, or leave -serial out for QEMU's mon:stdio)"
                ));
            }
            self.monitor.push("stdio".into());
        }
        if self.daemonize {
            if serial.ends_with("stdio") {
                return Err(format!("-serial {serial}: cannot use stdio with -daemonize"));
            }
            if let Some(m) = self.monitor.iter().chain(&self.qmp).find(|m| m.starts_with("stdio")) {
                return Err(format!("-monitor {m}: cannot use stdio with -daemonize"));
            }
            if self.curses {
                return Err("curses display cannot be used with -daemonize".into());
            }
        }
        args.extend(["--serial".into(), serial]);
        if let Some(v) = &self.vga {
            args.extend(["--vga".into(), v.clone()]);
        }
        if let Some(v) = &self.vnc {
            if self.vga.as_deref() == Some("none") {
                return Err(format!("-vnc {v} shows the VGA screen, and -vga none leaves the VGA out"));
            }
            args.extend(["--vnc".into(), v.clone()]);
        }
        for q in &self.qmp {
            args.extend(["--qmp".into(), q.clone()]);
        }
        for m in &self.monitor {
            args.extend(["--monitor".into(), m.clone()]);
        }
        if self.paused {
            args.push("--paused".into());
        }
        if let Some(g) = &self.gdb {
            args.extend(["--gdb".into(), g.clone()]);
        }
        if let Some(b) = &self.rtc_base {
            args.extend(["--rtc-base".into(), b.clone()]);
        }
        if self.no_hpet {
            args.push("--no-hpet".into());
        }
        if self.kvm_irqchip_off {
            args.extend(["--kvm-irqchip".into(), "user".into()]);
        }
        if self.no_acpi {
            args.push("--no-acpi".into());
        }
        for r in &self.rngs {
            args.extend(["--rng".into(), r.clone()]);
        }
        match (self.virtio_serial, self.vports.is_empty()) {
            (false, false) => {
                return Err(
                    "-device virtserialport/virtconsole: there is no -device virtio-serial-pci for the port".into()
                )
            }
            (true, true) => {
                return Err("-device virtio-serial-pci with no port is not supported: give it a -device virtconsole \
                            or virtserialport"
                    .into())
            }
            _ => {}
        }
        for p in &self.vports {
            args.extend(["--vport".into(), p.clone()]);
        }
        for set in &self.smbios {
            args.extend(["--smbios".into(), set.clone()]);
        }
        if let Some(u) = &self.uuid {
            args.extend(["--uuid".into(), u.clone()]);
        }
        match (&self.log, &self.log_file) {
            (Some(l), f) => {
                args.extend(["--log".into(), l.clone()]);
                if let Some(f) = f {
                    args.extend(["--log-file".into(), f.clone()]);
                }
            }
            // QEMU opens the file even with nothing to log; ferrovm has nothing to write.
            (None, Some(f)) => self.notes.push(format!("-D {f}: no -d items, so nothing is logged")),
            (None, None) => {}
        }
        if self.curses {
            args.extend(["--display".into(), "curses".into()]);
        }
        if !self.usb_devices.is_empty() && !self.usb {
            return Err(format!(
                "-device usb-{}: there is no USB bus: add -usb (or -machine usb=on), as QEMU asks",
                self.usb_devices[0]
            ));
        }
        if self.usb {
            args.push("--usb".into());
        }
        for d in &self.usb_devices {
            args.extend(["--usb-device".into(), (*d).to_string()]);
        }
        if let Some(uri) = &self.incoming {
            args.extend(["--incoming".into(), uri.clone()]);
        }
        if let Some(name) = &self.loadvm {
            args.extend(["--loadvm".into(), name.clone()]);
        }
        if self.kernel.is_none() && (self.initrd.is_some() || self.append.is_some()) {
            return Err("-initrd and -append need -kernel".into());
        }
        for (flag, v) in [("--kernel", &self.kernel), ("--initrd", &self.initrd), ("--append", &self.append)] {
            if let Some(v) = v {
                args.extend([flag.into(), v.clone()]);
            }
        }
        // A -kernel the BIOS cannot boot boots directly, with a note.
        let direct = self.kernel.clone().and_then(|k| self.direct_boot(&k));
        if let Some(why) = direct.clone() {
            self.note(why);
            if let Some(b) = self.bios.take() {
                self.note(format!("-bios {b} is not used: the kernel boots without firmware"));
            }
        }
        if !self.pflash.is_empty() {
            if self.kernel.is_some() {
                return Err("-drive if=pflash with -kernel: ferrovm boots -kernel through SeaBIOS (or directly), \
                            not through UEFI firmware"
                    .into());
            }
            if let Some(b) = self.bios.take() {
                self.note(format!("-bios {b}: the firmware is the first -drive if=pflash, as QEMU takes it"));
            }
            args.extend(self.pflash_args()?);
        } else if direct.is_none() {
            // QEMU runs its BIOS (SeaBIOS) whether or not there is a disk,
            // and boots a -kernel through it: a bzImage through its
            // linuxboot option ROM, a multiboot kernel through its
            // multiboot ROM. So does ferrovm here (`ferrovm run --kernel`
            // boots directly, which is faster).
            let bios = self.find_firmware(self.bios.as_deref().unwrap_or(DEFAULT_BIOS));
            args.extend(["--bios".into(), bios]);
        }
        for d in &self.disks {
            if d.file.contains(',') {
                return Err(format!("-drive file={}: ferrovm cannot open an image whose path has a comma", d.file));
            }
            let mut spec = d.file.clone();
            if let Some(f) = &d.format {
                spec.push_str(&format!(",format={f}"));
            }
            if d.readonly {
                spec.push_str(",readonly=on");
            }
            if d.snapshot {
                spec.push_str(",snapshot=on");
            }
            if d.ide {
                spec.push_str(",if=ide");
            }
            if d.floppy {
                spec.push_str(",if=floppy");
            }
            if d.cdrom {
                spec.push_str(",media=cdrom");
            }
            if let Some(i) = d.index {
                spec.push_str(&format!(",index={i}"));
            }
            args.extend(["--disk".into(), spec]);
        }
        if let Some(order) = &self.boot_order {
            args.extend(["--boot".into(), order.clone()]);
        }
        if self.snapshot {
            args.push("--snapshot".into());
        }
        self.legacy_nics()?;
        if !self.net_given && !self.nodefaults {
            // QEMU's default network: an e1000 on the user-mode NAT.
            self.nics.push(Nic {
                netdev: None,
                opts: Opts::default(),
                model: "e1000",
                mac: None,
                vectors: None,
                hub: None,
                romfile: None,
            });
        }
        let mut used = Vec::new();
        for nic in &self.nics {
            let opts = match &nic.netdev {
                Some(id) => {
                    let (_, o) = self
                        .netdevs
                        .iter()
                        .find(|(n, _)| n == id)
                        .ok_or_else(|| format!("-netdev {id} is missing: a NIC names it (netdev={id}) and there is no -netdev user,id={id} (or tap, bridge)"))?;
                    if used.contains(id) {
                        return Err(format!("-netdev {id} is used by two NICs"));
                    }
                    used.push(id.clone());
                    o
                }
                None => &nic.opts,
            };
            let mut spec = match (&nic.hub, opts.get("type")) {
                (Some(id), _) => format!("hub,id={id},model={}", nic.model),
                (None, Some(t @ ("tap" | "bridge"))) => format!("{},model={}", tap_spec(t, opts), nic.model),
                (None, Some("unconnected")) => format!("unconnected,model={}", nic.model),
                (None, _) => format!("user,model={}", nic.model),
            };
            for (k, v) in [("mac", &nic.mac), ("vectors", &nic.vectors), ("romfile", &nic.romfile)] {
                if let Some(v) = v {
                    spec.push_str(&format!(",{k}={v}"));
                }
            }
            for (k, v) in &opts.pairs {
                if USER_KEYS.contains(&k.as_str()) {
                    if v.contains(',') {
                        return Err(format!("-netdev {k}={v}: a comma in this value is not supported"));
                    }
                    spec.push_str(&format!(",{k}={v}"));
                }
            }
            args.extend(["--nic".into(), spec]);
        }
        for (id, _) in self.netdevs.iter().filter(|(id, _)| !used.contains(id)) {
            self.notes.push(format!("-netdev {id}: no NIC uses it (QEMU: \"netdev has no peer\")"));
        }
        for (id, _) in &self.drives_by_id {
            self.notes.push(format!("-drive id={id}: no -device virtio-blk-pci,drive={id} uses it"));
        }
        if self.no_reboot {
            args.push("--no-reboot".into());
        }
        if self.no_shutdown {
            args.push("--no-shutdown".into());
        }
        if self.daemonize {
            args.push("--daemonize".into());
        }
        if let Some(p) = &self.pidfile {
            args.extend(["--pidfile".into(), p.display().to_string()]);
        }
        Ok(Translation { args, notes: self.notes, info: None })
    }
}

fn check_accel(option: &str, a: &str) -> Result<(), String> {
    match a {
        "kvm" | "tcg" => Ok(()),
        _ => Err(format!("{option} {a} is not supported: ferrovm's accelerators are kvm and tcg (its JIT)")),
    }
}

/// The keys a `tap` or `bridge` backend takes besides `extra` (the
/// option's own), with the values ferrovm honours: one queue, no vhost-net,
/// no virtio-net header on the interface (frames go whole), no file
/// descriptors handed in, and QEMU's own bridge helper only.
fn check_tap(option: &str, o: &Opts, extra: &[&str]) -> Result<(), String> {
    let t = o.get("type").unwrap_or_default();
    let mut known = vec!["type", "vhost", "vnet_hdr", "queues"];
    known.extend_from_slice(if t == "tap" { &["ifname", "script", "downscript"] } else { &["br"] });
    known.extend_from_slice(extra);
    if t == "tap" && (o.get("fd").is_some() || o.get("fds").is_some()) {
        return Err(format!("{option} tap,fd=: handing in a TAP file descriptor is not supported (use ifname=)"));
    }
    if o.get("helper").is_some() {
        return Err(format!("{option} {t},helper=: ferrovm joins the bridge itself (br=), with no helper"));
    }
    o.only(option, &known)?;
    if o.get("vhost").is_some_and(|v| on_off(option, "vhost", v) != Ok(false)) {
        return Err(format!("{option} {t},vhost=on is not supported: ferrovm moves the frames itself (vhost=off)"));
    }
    if o.get("vnet_hdr").is_some_and(|v| on_off(option, "vnet_hdr", v) != Ok(false)) {
        return Err(format!(
            "{option} {t},vnet_hdr=on is not supported: ferrovm's TAP carries whole frames (vnet_hdr=off)"
        ));
    }
    if o.get("queues").is_some_and(|q| q != "1") {
        return Err(format!("{option} {t},queues=: ferrovm's TAP has one queue (queues=1)"));
    }
    for k in ["ifname", "br"] {
        if let Some(v) = o.get(k) {
            // A comma would split the `--nic` value the name goes into.
            let comma = if v.contains(',') { Err(format!("'{v}' has a comma")) } else { Ok(()) };
            comma.and_then(|()| net::tap::check_ifname(v)).map_err(|e| format!("{option} {k}={v}: {e}"))?;
        }
    }
    for k in ["script", "downscript"] {
        if o.get(k).is_some_and(|v| v.contains(',')) {
            return Err(format!("{option} {k}=: a comma in the path is not supported"));
        }
    }
    Ok(())
}

/// `--nic`'s backend for a `tap` or `bridge` (`t`) with QEMU's defaults:
/// a tap runs /etc/qemu-ifup and /etc/qemu-ifdown unless told otherwise
/// (`script=no`), and a bridge is br0.
fn tap_spec(t: &str, o: &Opts) -> String {
    if t == "bridge" {
        return format!("bridge,br={}", o.get("br").unwrap_or("br0"));
    }
    let mut spec = "tap".to_string();
    if let Some(n) = o.get("ifname") {
        spec.push_str(&format!(",ifname={n}"));
    }
    let script = o.get("script").unwrap_or("/etc/qemu-ifup");
    let downscript = o.get("downscript").unwrap_or("/etc/qemu-ifdown");
    spec.push_str(&format!(",script={script},downscript={downscript}"));
    spec
}

/// A drive's format: `format=`, or QEMU's `driver=` naming the same
/// (`driver=file` is the file itself, raw).
fn drive_format<'a>(option: &str, o: &'a Opts) -> Result<Option<&'a str>, String> {
    let driver = o.get("driver").map(|d| if d == "file" { "raw" } else { d });
    match (o.get("format"), driver) {
        (Some(f), Some(d)) if f != d => Err(format!("{option}: format={f} and driver={d} name two formats; give one")),
        (f, d) => Ok(f.or(d)),
    }
}

/// A number as QEMU writes them: decimal, or hex with 0x.
fn number(option: &str, key: &str, v: &str) -> Result<u64, String> {
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    n.map_err(|_| format!("{option}: {key}={v} is not a number"))
}

/// Whether the program was started under QEMU's name.
pub fn invoked_as_qemu(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0).file_name().is_some_and(|n| n == PROGRAM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str, implied: Option<&str>) -> Vec<(String, String)> {
        parse_opts(s, implied).unwrap().pairs
    }

    fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn tr(line: &str) -> Result<Translation, String> {
        translate(&line.split_whitespace().map(str::to_string).collect::<Vec<_>>())
    }

    /// The arguments of `ferrovm run` for `line`.
    fn run_args(line: &str) -> Vec<String> {
        tr(line).unwrap_or_else(|e| panic!("{line}: {e}")).args
    }

    fn has(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    fn refused(line: &str, needle: &str) {
        let e = tr(line).expect_err(line);
        assert!(e.contains(needle), "{line}: {e}");
    }

    #[test]
    fn key_value_lists_follow_qemu() {
        assert_eq!(
            opts("user,id=n0,hostfwd=tcp::1-:2", Some("type")),
            kv(&[("type", "user"), ("id", "n0"), ("hostfwd", "tcp::1-:2")])
        );
        assert_eq!(opts("file=a,,b.img,if=virtio", None), kv(&[("file", "a,b.img"), ("if", "virtio")]));
        assert_eq!(opts("a,,b,x=1", Some("file")), kv(&[("file", "a,b"), ("x", "1")]));
        assert_eq!(opts("1G", Some("size")), kv(&[("size", "1G")]));
        assert_eq!(opts("size=1G", Some("size")), kv(&[("size", "1G")]));
        // A bare key past the first element is a flag.
        assert_eq!(opts("pc,usb", Some("type")), kv(&[("type", "pc"), ("usb", "on")]));
        assert_eq!(opts("snapshot,file=x", None), kv(&[("snapshot", "on"), ("file", "x")]));
        // Values may hold `=` and `:`; a trailing comma ends nothing.
        assert_eq!(opts("append=a=b:c,", None), kv(&[("append", "a=b:c")]));
        assert_eq!(opts("x=,y=2", None), kv(&[("x", ""), ("y", "2")]));
        assert_eq!(opts("", None), kv(&[]));
        assert!(parse_opts("=x", None).is_err());
        let o = parse_opts("user,hostfwd=a,hostfwd=b,id=1,id=2", Some("type")).unwrap();
        let fwds: Vec<&str> = o.pairs.iter().filter(|(k, _)| k == "hostfwd").map(|(_, v)| v.as_str()).collect();
        assert_eq!(fwds, ["a", "b"]);
        assert_eq!(o.get("id"), Some("2"), "the last value wins");
    }

    #[test]
    fn the_bench_boot_line_maps_onto_run() {
        let a = run_args(
            "-accel tcg -cpu max -m 512 -nodefaults -display none -serial stdio -no-reboot -kernel k -initrd i \
             -append console=ttyS0",
        );
        assert_eq!(
            a,
            [
                "--accel",
                "jit",
                "--cpu",
                "max",
                "--mem",
                "524288K",
                "--serial",
                "stdio",
                "--kernel",
                "k",
                "--initrd",
                "i",
                "--append",
                "console=ttyS0",
                "--bios",
                &State::default().find_firmware(DEFAULT_BIOS),
                "--no-reboot"
            ]
        );
    }

    #[test]
    fn accelerators() {
        let accel = |l: &str| run_args(&format!("{l} -nodefaults -kernel k"))[1].clone();
        assert_eq!(accel(""), "jit", "QEMU's default is TCG");
        assert_eq!(accel("-accel tcg,thread=single"), "jit");
        assert_eq!(accel("--enable-kvm"), "kvm");
        assert_eq!(accel("-accel kvm"), "kvm");
        assert_eq!(accel("-accel kvm -accel tcg"), "auto");
        assert_eq!(accel("-machine q35,accel=kvm:tcg"), "auto");
        assert_eq!(accel("-M pc,accel=tcg"), "jit");
        refused("-accel hvf", "hvf");
        refused("-machine microvm", "microvm");
    }

    #[test]
    fn memory_and_cpus() {
        assert!(has(&run_args("-m 1G -nodefaults -kernel k"), "--mem", "1048576K"));
        assert!(has(&run_args("-m size=256M -nodefaults -kernel k"), "--mem", "262144K"));
        assert!(has(&run_args("-nodefaults -kernel k"), "--mem", "131072K"), "QEMU's default is 128 MiB");
        refused("-m 5Q", "-m");
        refused("-m 1G,slots=2,maxmem=4G", "slots");
        run_args("-smp 1 -smp cpus=1,sockets=1,cores=1,threads=1 -nodefaults -kernel k");
        let a = run_args("-smp 4,sockets=2 -accel tcg,thread=single -nodefaults -kernel k");
        assert!(a.windows(2).any(|w| w == ["--cpus", "4,sockets=2"]), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["--vcpu-threads", "single"]), "{a:?}");
        refused("-smp 4,maxcpus=8", "hotplug");
        refused("-smp cpus=2,cores=3", "do not divide");
        refused("-smp 4,sockets=2,cores=2,threads=2", "not the CPU count");
        refused("-smp 2,books=2", "books");
        refused("-accel tcg,thread=many", "single or multi");
        let t = tr("-cpu Skylake-Client,+avx -nodefaults -kernel k").unwrap();
        assert_eq!(t.notes.len(), 2, "{:?}", t.notes);
        assert!(t.notes[0].contains("v2 model"), "{:?}", t.notes);
        assert!(has(&t.args, "--cpu", "v2"), "other models run as v2: {:?}", t.args);
        for (line, max) in [("-cpu host", true), ("-cpu max", true), ("-cpu qemu64", false), ("", false)] {
            let t = tr(&format!("{line} -nodefaults -kernel k")).unwrap();
            assert!(t.notes.is_empty(), "{line}: {:?}", t.notes);
            assert_eq!(has(&t.args, "--cpu", "max"), max, "{line}: {:?}", t.args);
            assert_eq!(has(&t.args, "--cpu", "v2"), !max, "{line}: QEMU's default qemu64 is v2: {:?}", t.args);
        }
        // The last -cpu wins.
        assert!(!has(&run_args("-cpu max -cpu qemu64 -nodefaults -kernel k"), "--cpu", "max"));
        refused("-cpu help", "x86-64-v3");
    }

    #[test]
    fn console_options() {
        assert!(has(&run_args("-nographic -nodefaults -kernel k"), "--serial", "none"), "as QEMU");
        assert!(has(&run_args("-nodefaults -kernel k"), "--serial", "none"));
        assert!(has(&run_args("-kernel k"), "--serial", "stdio"));
        assert!(has(&run_args("-serial mon:stdio -kernel k"), "--serial", "mon:stdio"));
        // -nographic: COM1 and the monitor share stdio, unless either is given.
        assert!(has(&run_args("-nographic -kernel k"), "--serial", "mon:stdio"));
        let a = run_args("-nographic -qmp unix:/tmp/q.sock,server=on,wait=off -kernel k");
        assert!(has(&a, "--serial", "stdio") && !has(&a, "--monitor", "stdio"), "{a:?}");
        assert!(has(&run_args("-nographic -monitor none -kernel k"), "--serial", "stdio"));
        let a = run_args("-nographic -serial file:/tmp/s.log -kernel k");
        assert!(has(&a, "--serial", "file:/tmp/s.log") && has(&a, "--monitor", "stdio"), "{a:?}");
        refused("-nographic -serial stdio -kernel k", "multiple character devices");
        assert!(has(&run_args("-nographic -serial stdio -monitor none -kernel k"), "--serial", "stdio"));
        assert!(has(&run_args("-serial null -kernel k"), "--serial", "none"));
        assert!(has(&run_args("-serial file:/tmp/x.log -kernel k"), "--serial", "file:/tmp/x.log"));
        run_args("-display none -vga none -monitor none -parallel none -kernel k -no-user-config");
        refused("-serial tcp::4444,server -kernel k", "-serial");
        refused("-serial stdio -serial file:x -kernel k", "one serial port");
        refused("-display gtk", "VNC");
        let a = run_args("-display curses -kernel k");
        assert!(has(&a, "--display", "curses") && has(&a, "--serial", "none"), "{a:?}");
        refused("-vga cirrus", "-vga std");
        refused("-vga qxl", "-vga std");
    }

    #[test]
    fn lifecycle_options() {
        let a = run_args("-no-shutdown -kernel k");
        assert!(a.contains(&"--no-shutdown".to_string()), "{a:?}");
        assert!(run_args("-action shutdown=pause -kernel k").contains(&"--no-shutdown".to_string()));
        let a = run_args("-action reboot=shutdown,shutdown=pause -kernel k");
        assert!(a.contains(&"--no-shutdown".to_string()) && a.contains(&"--no-reboot".to_string()), "{a:?}");
        assert!(!run_args("-action shutdown=poweroff -kernel k").contains(&"--no-shutdown".to_string()));
        refused("-action shutdown=reset -kernel k", "poweroff or pause");
        // -daemonize: COM1 goes nowhere by default, and stdio is refused as by QEMU.
        let a = run_args("-daemonize -pidfile /run/vm.pid -qmp unix:/tmp/q.sock,server=on,wait=off -kernel k");
        assert!(a.contains(&"--daemonize".to_string()), "{a:?}");
        assert!(has(&a, "--serial", "none") && has(&a, "--pidfile", "/run/vm.pid"), "{a:?}");
        assert!(has(&run_args("-daemonize -serial file:/tmp/s -kernel k"), "--serial", "file:/tmp/s"));
        assert!(has(&run_args("-daemonize -nographic -nodefaults -kernel k"), "--serial", "none"));
        refused("-daemonize -nographic -kernel k", "-nographic cannot be used with -daemonize");
        refused("-daemonize -nographic -serial null -monitor none -kernel k", "-nographic cannot be used");
        run_args("-daemonize -nographic -serial null -monitor none -parallel none -kernel k");
        refused("-daemonize -serial stdio -kernel k", "cannot use stdio with -daemonize");
        refused("-daemonize -serial mon:stdio -kernel k", "cannot use stdio with -daemonize");
        refused("-daemonize -monitor stdio -kernel k", "cannot use stdio with -daemonize");
        refused("-daemonize -chardev stdio,id=c -mon chardev=c -kernel k", "cannot use stdio with -daemonize");
        refused("-daemonize -display curses -kernel k", "curses display cannot be used with -daemonize");
    }

    #[test]
    fn incoming_and_loadvm_pass_on() {
        let a = run_args("-incoming tcp:127.0.0.1:4444 -kernel k");
        assert!(has(&a, "--incoming", "tcp:127.0.0.1:4444"), "{a:?}");
        let a = run_args("-incoming unix:/tmp/m.sock -S -kernel k");
        assert!(has(&a, "--incoming", "unix:/tmp/m.sock") && a.contains(&"--paused".to_string()), "{a:?}");
        assert!(has(&run_args("-incoming defer -qmp unix:/tmp/q,server=on,wait=off -kernel k"), "--incoming", "defer"));
        refused("-incoming rdma:host:1 -kernel k", "exec:CMD");
        let a = run_args("-loadvm snap1 -drive file=d.qcow2,if=virtio -kernel k");
        assert!(has(&a, "--loadvm", "snap1"), "{a:?}");
    }

    #[test]
    fn usb_options() {
        let a = run_args("-usb -device usb-tablet -device usb-kbd,id=k -kernel k");
        assert!(a.contains(&"--usb".to_string()), "{a:?}");
        assert!(has(&a, "--usb-device", "tablet") && has(&a, "--usb-device", "kbd"), "{a:?}");
        let a = run_args("-machine pc,usb=on -usbdevice tablet -kernel k");
        assert!(has(&a, "--usb-device", "tablet"), "{a:?}");
        let a = run_args("-usb -device usb-mouse,id=m,bus=usb-bus.0 -kernel k");
        assert!(has(&a, "--usb-device", "mouse"), "{a:?}");
        assert!(has(&run_args("-usbdevice mouse -kernel k"), "--usb-device", "mouse"));
        refused("-device usb-mouse -kernel k", "-device usb-mouse: there is no USB bus");
        refused("-usb -device usb-mouse,serial=1 -kernel k", "serial");
        assert!(!run_args("-machine usb=off -kernel k").contains(&"--usb".to_string()));
    }

    #[test]
    fn display_and_monitor_options() {
        let a = run_args("-vga std -kernel k");
        assert!(has(&a, "--vga", "std") && !a.contains(&"--vnc".to_string()), "{a:?}");
        let a = run_args("-vnc 127.0.0.1:3,websocket=5703 -kernel k");
        assert!(has(&a, "--vnc", "127.0.0.1:3,websocket=5703"), "{a:?}");
        assert!(has(&run_args("-display vnc=:1 -kernel k"), "--vnc", ":1"));
        let a = run_args("-vnc unix:/tmp/v.sock,password=on -kernel k");
        assert!(has(&a, "--vnc", "unix:/tmp/v.sock,password=on"), "{a:?}");
        assert!(has(&run_args("-display vnc=unix:/tmp/v.sock -kernel k"), "--vnc", "unix:/tmp/v.sock"));
        refused("-vnc unix:/tmp/v.sock,to=5 -kernel k", "Port range");
        refused("-vnc unix:/tmp/v.sock,websocket=on -kernel k", "websocket");
        refused("-vga none -vnc :1 -kernel k", "-vga none");
        refused("-vnc 127.0.0.1 -kernel k", "-vnc");
        let a =
            run_args("-qmp unix:/tmp/q.sock,server,nowait -monitor tcp:127.0.0.1:4444,server=on,wait=off -S -kernel k");
        assert!(has(&a, "--qmp", "unix:/tmp/q.sock,server,nowait"), "{a:?}");
        assert!(has(&a, "--monitor", "tcp:127.0.0.1:4444,server=on,wait=off"), "{a:?}");
        assert!(a.contains(&"--paused".to_string()), "{a:?}");
        let a = run_args(
            "-chardev socket,id=mon0,path=/tmp/m.sock,server=on,wait=off -mon chardev=mon0,mode=control \
             -chardev socket,id=h,host=127.0.0.1,port=5555,server=on,wait=off -mon chardev=h,mode=readline -kernel k",
        );
        assert!(has(&a, "--qmp", "unix:/tmp/m.sock,server=on,wait=off"), "{a:?}");
        assert!(has(&a, "--monitor", "tcp:127.0.0.1:5555,server=on,wait=off"), "{a:?}");
        refused("-mon chardev=nope,mode=control -kernel k", "id=nope");
        // Character devices for COM1.
        let a = run_args(
            "-nodefaults -chardev stdio,id=s1,signal=off -serial none -device isa-serial,chardev=s1 -kernel k",
        );
        assert!(has(&a, "--serial", "stdio"), "{a:?}");
        let a = run_args("-chardev stdio,mux=on,id=c -serial chardev:c -mon chardev=c,mode=readline -kernel k");
        assert!(has(&a, "--serial", "mon:stdio") && !a.contains(&"--monitor".to_string()), "{a:?}");
        let a = run_args("-chardev stdio,id=char0,signal=off -serial chardev:char0 -kernel k");
        assert!(has(&a, "--serial", "stdio"), "{a:?}");
        let a = run_args("-chardev file,id=f,path=/tmp/com1.log -serial chardev:f -kernel k");
        assert!(has(&a, "--serial", "file:/tmp/com1.log"), "{a:?}");
        assert!(has(&run_args("-chardev pty,id=p -serial chardev:p -kernel k"), "--serial", "pty,id=p"));
        assert!(has(&run_args("-serial pty -kernel k"), "--serial", "pty"));
        assert!(has(&run_args("-chardev null,id=n -serial chardev:n -kernel k"), "--serial", "none"));
        // A mux monitor with COM1 elsewhere has stdio to itself.
        let a = run_args("-chardev stdio,mux=on,id=c -mon chardev=c -serial file:/tmp/s -kernel k");
        assert!(has(&a, "--monitor", "stdio") && has(&a, "--serial", "file:/tmp/s"), "{a:?}");
        refused("-chardev stdio,mux=on,id=c -mon chardev=c -device isa-serial,chardev=c -kernel k", "one serial port");
        refused("-serial stdio -chardev pty,id=p -device isa-serial,chardev=p -kernel k", "one serial port");
        refused("-chardev socket,id=m,path=/tmp/m,server=on,wait=off -serial chardev:m -kernel k", "socket chardev");
        refused("-chardev vc,id=v -kernel k", "vc is not supported");
        refused("-chardev file,id=f -kernel k", "path=");
        refused("-serial chardev:nope -kernel k", "id=nope");
        refused("-chardev stdio,mux=on,id=c -mon chardev=c,mode=control -serial chardev:c -kernel k", "QMP on a mux");
        refused("-chardev socket,id=s,path=/tmp/x,server=on,mux=on -kernel k", "mux=on");
        // One front end a chardev, unless it is a mux.
        refused(
            "-chardev file,id=f,path=/tmp/x -serial chardev:f -device virtio-serial-pci -device virtconsole,chardev=f \
             -kernel k",
            "already serves -serial chardev:f",
        );
        refused(
            "-chardev socket,id=m,path=/tmp/m,server=on,wait=off -mon chardev=m -mon chardev=m,mode=control -kernel k",
            "the chardev m already serves",
        );
        refused("-qmp unix:/tmp/q.sock -kernel k", "-qmp");
        refused("-qmp tcp:127.0.0.1:4444,server=on,telnet=on -kernel k", "telnet");
        assert!(run_args("-no-reboot -kernel k").contains(&"--no-reboot".to_string()));
        assert!(run_args("-action reboot=shutdown -kernel k").contains(&"--no-reboot".to_string()));
    }

    #[test]
    fn network_options() {
        let a = run_args(
            "-netdev user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22,restrict=on,net=10.0.3.0/24,dns=10.0.3.5 \
             -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:99 -kernel k",
        );
        assert!(
            has(
                &a,
                "--nic",
                "user,model=virtio,mac=52:54:00:12:34:99,hostfwd=tcp:127.0.0.1:2222-:22,restrict=on,\
                 net=10.0.3.0/24,dns=10.0.3.5"
            ),
            "{a:?}"
        );
        assert!(has(&run_args("-netdev user,id=x -device e1000,netdev=x -kernel k"), "--nic", "user,model=e1000"));
        assert!(has(
            &run_args("-nic user,model=virtio-net-pci,hostfwd=tcp::1-:2 -kernel k"),
            "--nic",
            "user,model=virtio,hostfwd=tcp::1-:2"
        ));
        assert!(has(&run_args("-nic user -kernel k"), "--nic", "user,model=e1000"));
        // QEMU's default NIC, and none with -nic none or -nodefaults.
        assert!(has(&run_args("-kernel k"), "--nic", "user,model=e1000"));
        assert!(!run_args("-nic none -kernel k").contains(&"--nic".to_string()));
        assert!(!run_args("-nodefaults -kernel k").contains(&"--nic".to_string()));
        let t = tr("-netdev user,id=lonely -kernel k").unwrap();
        assert!(!t.args.contains(&"--nic".to_string()) && t.notes.iter().any(|n| n.contains("lonely")));
        for line in [
            "-enable-kvm -machine pc,kernel-irqchip=off -kernel k",
            "-accel kvm,kernel-irqchip=off -kernel k",
            "-enable-kvm -no-kvm-irqchip -kernel k",
        ] {
            let a = run_args(line);
            assert!(a.windows(2).any(|w| w == ["--kvm-irqchip", "user"]), "{line}: {a:?}");
        }
        assert!(!run_args("-enable-kvm -machine kernel-irqchip=on -kernel k").contains(&"--kvm-irqchip".to_string()));
        refused("-enable-kvm -machine kernel-irqchip=split -kernel k", "kernel-irqchip=split");
        refused("-accel tcg,kernel-irqchip=off -kernel k", "belongs to kvm");
        refused("-machine pc,smm=on -kernel k", "System Management Mode");
        refused("-machine smm=auto -kernel k", "smm=auto");
        run_args("-machine pc,smm=off -kernel k");
        run_args("-netdev user,id=n -device e1000,netdev=n,romfile= -kernel k");
        let a = run_args("-netdev user,id=n -device virtio-net-pci,netdev=n,romfile=pxe-virtio.rom -boot n");
        let rom = if Path::new("/usr/lib/ipxe/qemu/pxe-virtio.rom").is_file() {
            "/usr/lib/ipxe/qemu/pxe-virtio.rom"
        } else {
            "pxe-virtio.rom"
        };
        assert!(has(&a, "--nic", &format!("user,model=virtio,romfile={rom}")), "{a:?}");
        assert!(has(
            &run_args("-netdev user,id=n -device e1000,netdev=n,romfile= -boot n"),
            "--nic",
            "user,model=e1000,romfile="
        ));
        refused("-netdev user,id=n -device e1000,netdev=n,romfile=/x,,y.rom -kernel k", "comma");
        run_args("-k en-us -vnc 127.0.0.1:1 -kernel k");
        refused("-k de -vnc 127.0.0.1:1 -kernel k", "US layout");
        refused("-netdev vde,id=t0", "TAP interfaces");
        refused("-netdev tap,id=t0,fd=3 -device e1000,netdev=t0", "file descriptor");
        refused("-netdev tap,id=t0,vhost=on -device e1000,netdev=t0", "vhost=on");
        refused("-netdev tap,id=t0,queues=4 -device e1000,netdev=t0", "one queue");
        refused("-netdev tap,id=t0,vnet_hdr=on -device e1000,netdev=t0", "vnet_hdr=on");
        refused("-netdev bridge,id=b,helper=/x -device e1000,netdev=b", "helper");
        refused("-netdev tap,id=t0,br=br0 -device e1000,netdev=t0", "br");
        refused("-netdev tap,id=t0,ifname=a/b -device e1000,netdev=t0", "interface name");
        refused("-netdev user,id=n0,tftp-server-name=x", "tftp-server-name");
        let a = run_args("-netdev user,id=n0,tftp=/srv/tftp,bootfile=pxelinux.0 -device e1000,netdev=n0 -kernel k");
        assert!(has(&a, "--nic", "user,model=e1000,tftp=/srv/tftp,bootfile=pxelinux.0"), "{a:?}");
        let a = run_args("-netdev user,id=n0,ipv6=on,ipv6-net=fd00:1::/64,ipv6-dns=fd00:1::53 -device e1000,netdev=n0");
        assert!(has(&a, "--nic", "user,model=e1000,ipv6=on,ipv6-net=fd00:1::/64,ipv6-dns=fd00:1::53"), "{a:?}");
        refused("-device e1000,netdev=nope -kernel k", "nope");
        let a = run_args("-device e1000 -kernel k");
        assert!(has(&a, "--nic", "unconnected,model=e1000"), "{a:?}");
        refused("-device rtl8139,netdev=n0", "rtl8139");
        refused("-nic user,model=rtl8139", "rtl8139");
        let a = run_args("-net nic,model=virtio,macaddr=52:54:00:12:34:56 -net user,hostfwd=tcp::2222-:22 -kernel k");
        assert!(has(&a, "--nic", "user,model=virtio,mac=52:54:00:12:34:56,hostfwd=tcp::2222-:22"), "{a:?}");
        let a = run_args("-net user -net nic -kernel k");
        assert!(has(&a, "--nic", "user,model=e1000"), "{a:?}");
        // Two hubs: one NAT each; a NIC alone on a hub of its own.
        let a = run_args("-net nic,vlan=1 -net user,vlan=1 -net nic,vlan=2,model=virtio -kernel k");
        assert!(has(&a, "--nic", "user,model=e1000"), "{a:?}");
        let hub = a.iter().find(|x| x.starts_with("hub,id=qemu-net2-")).unwrap_or_else(|| panic!("{a:?}"));
        assert!(hub.ends_with(",model=virtio"), "{hub}");
        assert!(!a.iter().any(|x| x.starts_with("user,") && x.contains("virtio")), "{a:?}");
        assert!(!has(&run_args("-net none -kernel k"), "--nic", "user,model=e1000"));
        refused("-net nic,model=rtl8139 -net user", "model=rtl8139");
        refused("-net nic -net nic -net user", "2 NICs");
        refused("-net vde", "TAP interfaces");
        refused("-net nic -net nic -net tap", "2 NICs");
        refused("-net nic,addr=5", "addr=");
        let a = run_args("-d int,cpu_reset -D /tmp/q.log -no-reboot -kernel k");
        assert!(has(&a, "--log", "int,cpu_reset") && has(&a, "--log-file", "/tmp/q.log"), "{a:?}");
        refused("-d int,exec -kernel k", "-d exec");
        // -monitor /dev/null is no monitor; -serial mon: replaces the default one.
        let a = run_args("-nographic -monitor /dev/null -kernel k");
        assert!(has(&a, "--serial", "stdio") && !a.contains(&"--monitor".to_string()), "{a:?}");
        let a = run_args("-nographic -serial mon:stdio -kernel k");
        assert!(has(&a, "--serial", "mon:stdio") && !a.contains(&"--monitor".to_string()), "{a:?}");
        assert!(has(&run_args("-curses -kernel k"), "--display", "curses"));
        run_args("-nodefconfig -kernel k");
        // bus= and unit= place IDE drives; read-only= is readonly=.
        let a = run_args("-drive file=d.img,if=ide,bus=1,unit=1,read-only=on -nodefaults");
        assert!(has(&a, "--disk", "d.img,readonly=on,if=ide,index=3"), "{a:?}");
        refused("-drive file=d.img,index=1,unit=1", "index=");
        // A folder as a FAT disk goes to the block layer as given.
        let a = run_args("-drive file=fat:rw:esp,format=raw -nodefaults");
        assert!(a.iter().any(|x| x.starts_with("fat:rw:esp,format=raw")), "{a:?}");
        assert!(run_args("-hda fat:rw:./dir -nodefaults").iter().any(|x| x.starts_with("fat:rw:./dir")));
    }

    #[test]
    fn tap_and_bridge_backends() {
        let a = run_args(
            "-netdev tap,id=t0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=t0 -kernel k",
        );
        assert!(has(&a, "--nic", "tap,ifname=tap0,script=no,downscript=no,model=virtio"), "{a:?}");
        // QEMU's default scripts.
        let a = run_args("-netdev tap,id=t0 -device e1000,netdev=t0,mac=52:54:00:00:00:07 -kernel k");
        assert!(
            has(&a, "--nic", "tap,script=/etc/qemu-ifup,downscript=/etc/qemu-ifdown,model=e1000,mac=52:54:00:00:00:07"),
            "{a:?}"
        );
        let a = run_args("-nic tap,ifname=t1,script=/s/up,model=virtio-net-pci -kernel k");
        assert!(has(&a, "--nic", "tap,ifname=t1,script=/s/up,downscript=/etc/qemu-ifdown,model=virtio"), "{a:?}");
        let a = run_args("-netdev bridge,id=b -device e1000,netdev=b -kernel k");
        assert!(has(&a, "--nic", "bridge,br=br0,model=e1000"), "{a:?}");
        let a = run_args("-nic bridge,br=virbr0 -kernel k");
        assert!(has(&a, "--nic", "bridge,br=virbr0,model=e1000"), "{a:?}");
        // The legacy syntax: a NIC and a TAP on hub 0.
        let a = run_args("-net nic,model=virtio -net tap,ifname=tap0,script=no,downscript=no -kernel k");
        assert!(has(&a, "--nic", "tap,ifname=tap0,script=no,downscript=no,model=virtio"), "{a:?}");
        let a =
            run_args("-netdev tap,id=t0,vhost=off,vnet_hdr=off,queues=1,script=no -device e1000,netdev=t0 -kernel k");
        assert!(has(&a, "--nic", "tap,script=no,downscript=/etc/qemu-ifdown,model=e1000"), "{a:?}");
    }

    #[test]
    fn disk_options() {
        let a = run_args("-drive file=disk.img,if=virtio,format=raw,cache=writeback -nodefaults -kernel k");
        assert!(has(&a, "--disk", "disk.img,format=raw"), "{a:?}");
        let a = run_args("-drive file=d.qcow2,if=none,id=d0,format=qcow2,readonly=on,snapshot=on -device virtio-blk-pci,drive=d0 -snapshot -nodefaults");
        assert!(has(&a, "--disk", "d.qcow2,format=qcow2,readonly=on,snapshot=on"), "{a:?}");
        assert!(a.contains(&"--snapshot".to_string()));
        // Without -kernel QEMU runs its BIOS.
        assert!(a.windows(2).any(|w| w[0] == "--bios" && w[1].ends_with("bios-256k.bin")), "{a:?}");
        // IDE: QEMU's default interface, -hda..-hdd, -cdrom, media=cdrom.
        assert!(has(&run_args("-hda a.img -nodefaults"), "--disk", "a.img,if=ide,index=0"));
        assert!(has(&run_args("-hdd d.img -nodefaults"), "--disk", "d.img,if=ide,index=3"));
        assert!(has(&run_args("b.img -nodefaults"), "--disk", "b.img,if=ide,index=0"));
        assert!(has(&run_args("-drive file=c.img,format=raw -nodefaults"), "--disk", "c.img,format=raw,if=ide"));
        let a = run_args("-cdrom x.iso -boot d -nodefaults");
        assert!(has(&a, "--disk", "x.iso,readonly=on,if=ide,media=cdrom,index=2"), "{a:?}");
        assert!(has(&a, "--boot", "d"), "{a:?}");
        let a = run_args("-drive file=y.iso,media=cdrom,index=1 -boot order=dc,menu=off -nodefaults");
        assert!(has(&a, "--disk", "y.iso,readonly=on,if=ide,media=cdrom,index=1"), "{a:?}");
        assert!(has(&a, "--boot", "dc"), "{a:?}");
        refused("-drive file=x,if=virtio,media=cdrom", "if=ide");
        assert!(has(&run_args("-fda f.img -boot a -nodefaults"), "--disk", "f.img,if=floppy,index=0"));
        assert!(has(&run_args("-fdb g.img -nodefaults"), "--disk", "g.img,if=floppy,index=1"));
        assert!(has(&run_args("-drive file=h.img,if=floppy -nodefaults"), "--disk", "h.img,if=floppy"));
        refused("-drive file=x,if=floppy,index=2", "A:");
        refused("-drive file=x,index=4", "0 to 3");
        refused("-drive file=x,media=floppy", "media=floppy");
        assert!(has(&run_args("-boot order=nc"), "--boot", "nc"));
        // virtio-serial: a named port on a listening socket, a console on a file.
        let a = run_args(
            "-chardev socket,path=/run/qga.sock,server=on,wait=off,id=qga0 -chardev file,id=c,path=/tmp/con \
             -device virtio-serial-pci -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
             -device virtconsole,chardev=c -kernel k",
        );
        assert!(has(&a, "--vport", "name=org.qemu.guest_agent.0,socket=/run/qga.sock"), "{a:?}");
        assert!(has(&a, "--vport", "console,file=/tmp/con"), "{a:?}");
        refused("-chardev null,id=n -device virtserialport,chardev=n,name=x -kernel k", "virtio-serial-pci");
        refused("-device virtio-serial-pci -kernel k", "no port");
        refused("-chardev null,id=n -device virtio-serial-pci -device virtserialport,chardev=n -kernel k", "name=");
        refused(
            "-chardev socket,path=/s,server=on,wait=on,id=s -device virtio-serial-pci -device virtconsole,chardev=s \
             -kernel k",
            "wait=off",
        );
        let a = run_args(
            "-chardev stdio,id=s,mux=on -device virtio-serial-pci -device virtconsole,chardev=s -mon chardev=s \
             -serial none -kernel k",
        );
        assert!(has(&a, "--vport", "console,mon:stdio"), "a console sharing stdio with the monitor: {a:?}");
        let a = run_args("-chardev stdio,id=s -device virtio-serial-pci -device virtconsole,chardev=s -kernel k");
        assert!(has(&a, "--vport", "console,stdio"), "{a:?}");
        refused(
            "-chardev stdio,id=s,mux=on -serial chardev:s -device virtio-serial-pci -device virtconsole,chardev=s \
             -mon chardev=s -kernel k",
            "one mux",
        );
        let a = run_args("-chardev pty,id=p -device virtio-serial-pci -device virtconsole,chardev=p -kernel k");
        assert!(has(&a, "--vport", "console,pty=p"), "a console on a pseudo-terminal named by the chardev: {a:?}");
        refused("-boot menu=yes", "menu=yes");
        refused("-boot splash-time=65536", "65535");
        refused("-boot strict=on", "strict=");
        refused("-boot splash=logo.bmp", "splash=");
        let a = run_args("-cdrom x.iso -hda y.img -boot once=d,order=c,menu=on,splash-time=900 -nodefaults");
        assert!(has(&a, "--boot", "c,once=d,menu=on,splash-time=900"), "{a:?}");
        assert!(has(&run_args("-cdrom x.iso -boot once=d -nodefaults"), "--boot", "cad,once=d"));
        assert!(!run_args("-cdrom x.iso -boot menu=off -nodefaults").contains(&"--boot".to_string()));
        refused("-drive file=x,if=scsi", "if=scsi");
        refused("-drive file=x,format=vmdk", "vmdk");
        assert!(has(
            &run_args("-drive driver=qcow2,file=d.qcow2,if=virtio -kernel k"),
            "--disk",
            "d.qcow2,format=qcow2"
        ));
        assert!(has(&run_args("-drive driver=file,file=d.img,if=virtio -kernel k"), "--disk", "d.img,format=raw"));
        refused("-drive driver=qcow2,format=raw,file=x,if=virtio", "two formats");
        refused("-drive driver=nbd,file=x,if=virtio", "nbd");
        refused("-drive if=none,id=d0", "file=");
        refused("-drive file=x,if=virtio,discard=unmap", "discard=");
        refused("-device virtio-blk-pci,drive=d9", "d9");
        refused("-drive file=a,,b.img,if=virtio", "comma");
    }

    #[test]
    fn firmware_and_misc() {
        // -bios with -kernel: the BIOS boots the kernel.
        let t = tr("-bios /no/such.bin -kernel k -nodefaults").unwrap();
        assert!(has(&t.args, "--bios", "/no/such.bin") && has(&t.args, "--kernel", "k"), "{:?}", t.args);
        // -kernel alone: QEMU's SeaBIOS boots it, through the linuxboot or
        // multiboot ROM; an ELF vmlinux and a small machine boot directly.
        let dir = std::env::temp_dir().join(format!("ferrovm-qemu-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let seabios = State::default().find_firmware(DEFAULT_BIOS);
        let mut bz = vec![0u8; 0x1000];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let mut vmlinux = b"\x7fELF\x02\x01\x01".to_vec();
        vmlinux.resize(0x1000, 0);
        let mut multiboot = vmlinux.clone();
        let (magic, flags) = (0x1bad_b002u32, 2u32);
        for (i, v) in [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags)].into_iter().enumerate() {
            multiboot[0x100 + 4 * i..0x104 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        for (name, bytes) in [("bz", &bz), ("vmlinux", &vmlinux), ("mb", &multiboot)] {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let k = |name: &str| dir.join(name).display().to_string();
        for (line, through_bios) in [
            ("-kernel k -nodefaults".to_string(), true),
            (format!("-kernel {} -nodefaults", k("bz")), true),
            (format!("-kernel {} -initrd a,b -nodefaults", k("mb")), true),
            (format!("-kernel {} -nodefaults", k("vmlinux")), false),
            (format!("-m 8 -kernel {} -nodefaults", k("bz")), false),
        ] {
            let t = tr(&line).unwrap();
            assert_eq!(has(&t.args, "--bios", &seabios), through_bios, "{line}: {:?}", t.args);
            assert_eq!(
                t.notes.iter().any(|n| n.contains("boots") && n.contains("directly")),
                !through_bios,
                "{line}: {:?}",
                t.notes
            );
        }
        let t = tr(&format!("-bios /no/such.bin -kernel {} -nodefaults", k("vmlinux"))).unwrap();
        assert!(!t.args.contains(&"--bios".to_string()), "{:?}", t.args);
        assert!(
            t.notes.iter().any(|n| n.contains("PVH"))
                && t.notes.iter().any(|n| n.contains("-bios /no/such.bin is not used")),
            "{:?}",
            t.notes
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let dir = std::env::temp_dir().join(format!("ferrovm-qemu-L-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mine.bin"), b"x").unwrap();
        let a = run_args(&format!("-L {} -bios mine.bin -nodefaults", dir.display()));
        assert!(has(&a, "--bios", &dir.join("mine.bin").display().to_string()), "{a:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        let t = tr("-name guest=g1,debug-threads=on -pidfile /tmp/p -rtc base=utc,clock=host -kernel k").unwrap();
        assert!(has(&t.args, "--pidfile", "/tmp/p"), "{:?}", t.args);
        run_args("-device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel k");
        run_args("-device isa-debug-exit,iobase=0xf4,iosize=0x4 -kernel k");
        refused("-device isa-debug-exit", "0x501");
        refused("-device isa-debug-exit,iobase=0xf4,iosize=3", "iosize");
        assert!(has(&run_args("-rtc base=localtime -kernel k"), "--rtc-base", "localtime"));
        assert!(has(&run_args("-localtime -kernel k"), "--rtc-base", "localtime"));
        assert!(has(
            &run_args("-rtc base=2006-06-17T16:01:21,clock=host -kernel k"),
            "--rtc-base",
            "2006-06-17T16:01:21"
        ));
        refused("-rtc base=yesterday", "base='yesterday'");
        let a =
            run_args("-smbios type=1,serial=ds=nocloud;s=http://10.0.2.2:8000/ -smbios type=11,value=a,,b -kernel k");
        assert!(has(&a, "--smbios", "type=1,serial=ds=nocloud;s=http://10.0.2.2:8000/"), "{a:?}");
        assert!(has(&a, "--smbios", "type=11,value=a,,b"), "{a:?}");
        let u = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";
        assert!(has(&run_args(&format!("-uuid {u} -kernel k")), "--uuid", u));
        refused("-uuid 6ba7b810 -kernel k", "not a UUID");
        refused("-smbios type=17,speed=3200 -kernel k", "type=17 is not supported");
        refused("-smbios file=t.bin -kernel k", "file=");
        refused("-smbios type=1,color=red -kernel k", "'color=' is not supported for type 1");
        refused("-smbios type=0,release=1.x -kernel k", "MAJOR.MINOR");
        refused("-smbios serial=x -kernel k", "type= is missing");
        let a = run_args("-object rng-random,filename=/dev/random,id=r0 -device virtio-rng-pci,rng=r0,max-bytes=1024,period=500 -kernel k");
        assert!(has(&a, "--rng", "filename=/dev/random,max-bytes=1024,period=500"), "{a:?}");
        let a = run_args("-object rng-builtin,id=b -device virtio-rng-pci,rng=b -device virtio-rng -kernel k");
        assert_eq!(a.iter().filter(|x| *x == "--rng").count(), 2, "{a:?}");
        assert!(has(&a, "--rng", "filename=/dev/urandom"), "{a:?}");
        refused("-device virtio-rng-pci,rng=nope -kernel k", "no -object rng-random");
        refused("-object memory-backend-ram,id=m,size=1G -kernel k", "memory-backend-ram is not supported");
        refused("-device virtio-rng-pci,max-bytes=x -kernel k", "max-bytes=x");
        assert!(run_args("-no-hpet -kernel k").contains(&"--no-hpet".to_string()));
        assert!(run_args("-machine pc,hpet=off -kernel k").contains(&"--no-hpet".to_string()));
        assert!(!run_args("-machine pc,hpet=on -kernel k").contains(&"--no-hpet".to_string()));
        refused("-machine hpet=maybe -kernel k", "hpet");
        assert!(run_args("-no-acpi -kernel k").contains(&"--no-acpi".to_string()));
        assert!(run_args("-machine pc,acpi=off -kernel k").contains(&"--no-acpi".to_string()));
        assert!(!run_args("-machine acpi=auto -kernel k").contains(&"--no-acpi".to_string()));
        refused("-rtc clock=vm", "clock=vm");
        refused("-append x", "-kernel");
        let a = run_args("-s -S -kernel k");
        assert!(has(&a, "--gdb", "tcp::1234") && a.contains(&"--paused".to_string()), "{a:?}");
        let a = run_args("-gdb unix:/tmp/g.sock,server,nowait -kernel k");
        assert!(has(&a, "--gdb", "unix:/tmp/g.sock,server,nowait"), "{a:?}");
        assert!(tr("-version").unwrap().info.is_some());
        assert!(tr("--help").unwrap().info.is_some());
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        for (line, name) in [
            ("-device usb-tablet", "no USB bus"),
            ("-usb -device qemu-xhci", "qemu-xhci"),
            ("-frobnicate", "-frobnicate is not supported"),
            ("--frobnicate", "-frobnicate is not supported"),
            ("-object memory-backend-ram,id=m", "-object"),
            ("-device qxl-vga", "qxl-vga"),
            ("-kernel", "requires an argument"),
            ("-action panic=pause", "panic="),
            ("-usbdevice disk:f.img", "-usbdevice disk:f.img is not supported"),
        ] {
            refused(line, name);
        }
    }

    /// `-debugcon` becomes `--debugcon` (port 0xE9); on stdio it leaves COM1
    /// nowhere unless COM1 was put on stdio, which is refused as QEMU
    /// refuses it.
    #[test]
    fn debugcon_takes_the_port_0xe9_console() {
        let a = run_args("-debugcon file:/tmp/k.log -kernel k");
        assert!(has(&a, "--debugcon", "file:/tmp/k.log") && has(&a, "--serial", "stdio"), "{a:?}");
        let t = tr("-debugcon stdio -kernel k").unwrap();
        assert!(has(&t.args, "--debugcon", "stdio") && has(&t.args, "--serial", "none"), "{:?}", t.args);
        assert!(t.notes.iter().any(|n| n.contains("COM1 goes nowhere")), "{:?}", t.notes);
        assert!(has(&run_args("-debugcon null -kernel k"), "--debugcon", "none"));
        assert!(has(&run_args("-debugcon stdio -serial file:/tmp/s -kernel k"), "--serial", "file:/tmp/s"));
        refused("-debugcon stdio -serial stdio -kernel k", "cannot use stdio by multiple character devices");
        refused("-nographic -debugcon stdio -kernel k", "cannot use stdio by multiple character devices");
        refused("-daemonize -debugcon stdio -kernel k", "cannot use stdio with -daemonize");
        refused("-debugcon pty -kernel k", "debug console takes stdio");
        refused("-debugcon mon:stdio -kernel k", "debug console takes stdio");
    }

    #[test]
    fn the_program_name_selects_the_syntax() {
        assert!(invoked_as_qemu(std::ffi::OsStr::new("/tmp/bin/qemu-system-x86_64")));
        assert!(invoked_as_qemu(std::ffi::OsStr::new("qemu-system-x86_64")));
        assert!(!invoked_as_qemu(std::ffi::OsStr::new("/usr/bin/ferrovm")));
    }
}
