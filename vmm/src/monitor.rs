//! The machine behind QEMU's monitors: the commands of QMP (`-qmp`) and
//! HMP (`-monitor`), carried out on a running [`Machine`].
//!
//! The `monitor` crate speaks the protocols and checks the arguments;
//! [`MachineBackend`] carries out the commands:
//!
//! | command | what it does here |
//! | --- | --- |
//! | `stop`, `cont` | [`crate::RunControl`]: the vCPUs stop at an instruction boundary and wait; `STOP` and `RESUME` events |
//! | `system_reset` | a machine reset, as the reset control register files it; `RESET` |
//! | `system_powerdown` | the ACPI power button (PM1 status PWRBTN_STS and an SCI); `POWERDOWN` |
//! | `quit` | the run ends (exit status 0); `SHUTDOWN` |
//! | `query-status`, `query-cpus-fast`, `query-kvm`, `query-name`, `query-block` | the machine's state |
//! | `screendump` | the VGA screen as PPM or PNG ([`crate::display::Screen`]) |
//! | `eject`, `blockdev-change-medium` | the IDE CD-ROMs (`ide1-cd0` is `-cdrom`'s drive); `DEVICE_TRAY_MOVED` |
//! | `set_password vnc` | the VNC server's password |
//!
//! Snapshots (`savevm`, `loadvm`) and migration are refused with an error
//! that says so: the machine's state can be saved ([`persist::Persist`]),
//! but no file format or stream carries it yet.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use devices::ide::{IdeController, IdeSlot};
use devices::{VmEvent, VmEvents};
use monitor::{Command, ErrorClass, Event, Monitor, QmpError};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::display::{Display, DumpFormat};
use crate::machine::{Machine, RunControl};

/// How long `stop` waits for the vCPUs to reach an instruction boundary.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The machine's side of the monitors.
pub struct MachineBackend {
    control: Arc<RunControl>,
    events: Arc<VmEvents>,
    acpi_pm: Arc<Mutex<devices::legacy::acpi_pm::AcpiPm>>,
    ide: Option<Arc<Mutex<IdeController>>>,
    display: Option<Arc<Display>>,
    /// Set while the machine is stopped (`stop`, `-S`).
    paused: AtomicBool,
    /// Set once `quit` asked the run to end.
    quit: AtomicBool,
    cpus: usize,
    accel: &'static str,
    name: Option<String>,
    /// The monitor, for events; set once it exists.
    monitor: Mutex<Option<Arc<Monitor>>>,
}

impl MachineBackend {
    /// The backend of `machine`, which runs under `accel` ("tcg" or "kvm").
    /// `paused`: the machine starts stopped (`-S`); [`MachineBackend::hold`]
    /// makes it so.
    pub fn new(
        machine: &Machine,
        display: Option<Arc<Display>>,
        accel: &'static str,
        name: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            control: machine.control(),
            events: machine.events.clone(),
            acpi_pm: machine.chipset.acpi_pm.clone(),
            ide: machine.ide(),
            display,
            paused: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            cpus: machine.config.cpus(),
            accel,
            name,
            monitor: Mutex::new(None),
        })
    }

    /// The monitor events go to.
    pub fn set_monitor(&self, monitor: Arc<Monitor>) {
        *self.monitor.lock() = Some(monitor);
    }

    /// Keeps the machine stopped from its first instruction until `cont`
    /// (QEMU's `-S`).
    pub fn hold(&self) {
        self.control.hold();
        self.paused.store(true, Ordering::Release);
    }

    fn emit(&self, event: Event) {
        if let Some(m) = &*self.monitor.lock() {
            m.emit(event);
        }
    }

    /// Tells the monitors how the run ended, unless a `quit` ended it
    /// (which told them already).
    pub fn run_ended(&self, guest: bool, reason: &str) {
        if !self.quit.load(Ordering::Acquire) {
            self.emit(Event::Shutdown { guest, reason: reason.to_string() });
        }
    }

    fn stop(&self) -> Result<Value, QmpError> {
        if !self.paused.swap(true, Ordering::AcqRel) {
            if self.control.pause(STOP_WAIT).is_none() {
                tracing::warn!(target: "vmm", "stop: the vCPUs did not reach a stop within {STOP_WAIT:?}; they stop when they do");
            }
            self.emit(Event::Stop);
        }
        Ok(json!({}))
    }

    fn cont(&self) -> Result<Value, QmpError> {
        if self.paused.swap(false, Ordering::AcqRel) {
            self.control.resume();
            self.emit(Event::Resume);
        }
        Ok(json!({}))
    }

    /// The IDE position QEMU's drive name `ide{bus}-{cd|hd}{unit}` names.
    fn ide_slot(
        &self,
        device: Option<&str>,
        id: Option<&str>,
    ) -> Result<(Arc<Mutex<IdeController>>, IdeSlot, String), QmpError> {
        let name = device.or(id).ok_or_else(|| QmpError::generic("Need exactly one of 'device' and 'id'"))?;
        let not_found = || QmpError::new(ErrorClass::DeviceNotFound, format!("Device '{name}' not found"));
        let slot = name
            .strip_prefix("ide")
            .and_then(|r| {
                let (bus, rest) = r.split_at_checked(1)?;
                let unit = rest.strip_prefix("-cd").or_else(|| rest.strip_prefix("-hd"))?;
                let i = match (bus, unit) {
                    ("0", "0") => 0,
                    ("0", "1") => 1,
                    ("1", "0") => 2,
                    ("1", "1") => 3,
                    _ => return None,
                };
                Some(IdeSlot::ALL[i])
            })
            .ok_or_else(not_found)?;
        let ide = self.ide.clone().ok_or_else(not_found)?;
        if ide.lock().kind(slot) == devices::ide::DriveKind::Empty {
            return Err(not_found());
        }
        Ok((ide, slot, name.to_string()))
    }

    fn change_medium(
        &self,
        device: Option<&str>,
        id: Option<&str>,
        medium: Option<(PathBuf, Option<String>)>,
        force: bool,
    ) -> Result<Value, QmpError> {
        let (ide, slot, name) = self.ide_slot(device, id)?;
        let image = match medium {
            None => None,
            Some((path, format)) => {
                let format = match format.as_deref() {
                    None | Some("raw") => devices::block::ImageFormat::Raw,
                    Some("qcow2") => devices::block::ImageFormat::Qcow2,
                    Some(f) => return Err(QmpError::generic(format!("Unknown driver '{f}'"))),
                };
                let spec = devices::block::DiskSpec {
                    path: path.clone(),
                    format: Some(format),
                    read_only: true,
                    interface: devices::block::DiskInterface::Ide,
                    media: devices::block::DiskMedia::Cdrom,
                    ..Default::default()
                };
                let image = devices::block::open(&spec, false)
                    .map_err(|e| QmpError::generic(format!("Could not open '{}': {e}", path.display())))?;
                Some(Box::new(image) as Box<dyn devices::block::BlockBackend>)
            }
        };
        let inserted = image.is_some();
        ide.lock().change_medium(slot, image, force).map_err(|e| match e {
            devices::ide::MediaError::Locked { .. } => QmpError::generic(format!(
                "Device '{name}' is locked and force was not specified, wait for tray to open and try again"
            )),
            other => QmpError::generic(format!("Device '{name}': {other}")),
        })?;
        let id = String::new();
        self.emit(Event::DeviceTrayMoved { device: name.clone(), id: id.clone(), tray_open: true });
        if inserted {
            self.emit(Event::DeviceTrayMoved { device: name, id, tray_open: false });
        }
        Ok(json!({}))
    }

    fn query_block(&self) -> Value {
        let Some(ide) = &self.ide else { return json!([]) };
        let ide = ide.lock();
        let list: Vec<Value> = IdeSlot::ALL
            .iter()
            .filter_map(|&slot| {
                let kind = ide.kind(slot);
                let (bus, unit) = (slot.index() / 2, slot.index() % 2);
                let (name, removable, inserted) = match kind {
                    devices::ide::DriveKind::Empty => return None,
                    devices::ide::DriveKind::Disk { sectors, read_only } => {
                        (format!("ide{bus}-hd{unit}"), false, Some((sectors * 512, read_only)))
                    }
                    devices::ide::DriveKind::Cdrom { medium_sectors } => {
                        (format!("ide{bus}-cd{unit}"), true, medium_sectors.map(|n| (n * 2048, true)))
                    }
                };
                let mut v = json!({
                    "device": name,
                    "qdev": format!("/machine/unattached/device[{}]", slot.index()),
                    "removable": removable,
                    "locked": ide.medium_locked(slot),
                    "type": "unknown",
                });
                if let Some((bytes, ro)) = inserted {
                    v["inserted"] =
                        json!({ "ro": ro, "drv": "raw", "encrypted": false, "image": { "virtual-size": bytes } });
                }
                if removable {
                    v["tray_open"] = json!(false);
                }
                Some(v)
            })
            .collect();
        Value::Array(list)
    }
}

impl monitor::Backend for MachineBackend {
    fn execute(&self, cmd: Command) -> Result<Value, QmpError> {
        match cmd {
            Command::QueryStatus => {
                let paused = self.paused.load(Ordering::Acquire);
                Ok(
                    json!({ "running": !paused, "singlestep": false, "status": if paused { "paused" } else { "running" } }),
                )
            }
            Command::Stop => self.stop(),
            Command::Cont => self.cont(),
            Command::SystemReset => {
                self.events.request(VmEvent::Reset);
                self.emit(Event::Reset { guest: false, reason: "host-qmp-system-reset".into() });
                Ok(json!({}))
            }
            Command::SystemPowerdown => {
                self.acpi_pm.lock().power_button();
                self.emit(Event::Powerdown);
                Ok(json!({}))
            }
            Command::Quit => {
                self.quit.store(true, Ordering::Release);
                self.events.request(VmEvent::Quit);
                self.emit(Event::Shutdown { guest: false, reason: "host-qmp-quit".into() });
                // A stopped machine goes on to see the request.
                if self.paused.swap(false, Ordering::AcqRel) {
                    self.control.resume();
                }
                Ok(json!({}))
            }
            Command::QueryCpusFast => Ok(Value::Array(
                (0..self.cpus)
                    .map(|i| {
                        json!({
                            "cpu-index": i,
                            "qom-path": format!("/machine/unattached/device[{i}]"),
                            "thread-id": std::process::id(),
                            "target": "x86_64",
                        })
                    })
                    .collect(),
            )),
            Command::QueryKvm => Ok(json!({
                "enabled": self.accel == "kvm",
                "present": std::path::Path::new("/dev/kvm").exists(),
            })),
            Command::QueryName => Ok(match &self.name {
                Some(n) => json!({ "name": n }),
                None => json!({}),
            }),
            Command::QueryBlock => Ok(self.query_block()),
            Command::Screendump { filename, format, device } => {
                if device.is_some() {
                    return Err(QmpError::generic("ferrovm has one display; leave 'device' out"));
                }
                let format = DumpFormat::parse(format.as_deref().unwrap_or("ppm")).map_err(QmpError::generic)?;
                let display = self.display.as_ref().ok_or_else(|| {
                    QmpError::generic("There is no display to dump (the machine has no VGA: -vga std)")
                })?;
                display
                    .screen
                    .dump(std::path::Path::new(&filename), format)
                    .map_err(|e| QmpError::generic(format!("Could not write '{filename}': {e}")))?;
                Ok(json!({}))
            }
            Command::Eject { device, id, force } => self.change_medium(device.as_deref(), id.as_deref(), None, force),
            Command::BlockdevChangeMedium { device, id, filename, format, read_only_mode } => {
                if read_only_mode.as_deref().is_some_and(|m| m != "retain" && m != "read-only") {
                    return Err(QmpError::generic("a CD-ROM is read-only (read-only-mode=retain or read-only)"));
                }
                self.change_medium(device.as_deref(), id.as_deref(), Some((PathBuf::from(filename), format)), true)
            }
            Command::SetPassword { protocol, password } => {
                if protocol != "vnc" {
                    return Err(QmpError::generic(format!(
                        "Invalid parameter 'protocol': {protocol} (ferrovm has vnc)"
                    )));
                }
                match self.display.as_ref().and_then(|d| d.server.as_ref()) {
                    Some(s) => {
                        s.set_password(Some(password));
                        Ok(json!({}))
                    }
                    None => Err(QmpError::generic("Could not set password: there is no VNC server (-vnc)")),
                }
            }
            Command::SaveVm { .. } | Command::LoadVm { .. } | Command::DelVm { .. } | Command::InfoSnapshots => {
                Err(QmpError::generic("ferrovm cannot save or load snapshots yet"))
            }
            Command::Migrate { .. }
            | Command::QueryMigrate
            | Command::MigrateCancel
            | Command::MigrateSetCapabilities { .. } => Err(QmpError::generic("ferrovm cannot migrate a VM yet")),
            other => Err(QmpError::new(
                ErrorClass::CommandNotFound,
                format!("The command {} is not supported by ferrovm", command_name(&other)),
            )),
        }
    }
}

/// A name for a command in an error message.
fn command_name(cmd: &Command) -> String {
    let debug = format!("{cmd:?}");
    debug.split([' ', '{', '(']).next().unwrap_or_default().to_string()
}
