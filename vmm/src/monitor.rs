//! The machine behind QEMU's monitors: the commands of QMP (`-qmp`) and
//! HMP (`-monitor`), carried out on a running [`Machine`].
//!
//! The `monitor` crate speaks the protocols and checks the arguments;
//! [`MachineBackend`] carries out the commands:
//!
//! | command | what it does here |
//! | --- | --- |
//! | `stop`, `cont` | [`crate::RunControl`]: the vCPUs stop at an instruction boundary and wait; `STOP` and `RESUME` events |
//! | `system_reset` | a machine reset, as the reset control register files it, done at once even while the vCPUs are stopped (the status is then "prelaunch" until `cont`); `RESET` |
//! | a guest's power-off under `--no-shutdown` | the vCPUs stop, `SHUTDOWN` and `STOP`, status "shutdown"; `cont` is refused until a `system_reset` |
//! | `system_powerdown` | the ACPI power button (PM1 status PWRBTN_STS and an SCI); `POWERDOWN` |
//! | `quit` | the run ends (exit status 0); `SHUTDOWN` |
//! | `query-status`, `query-cpus-fast`, `query-kvm`, `query-name`, `query-block` | the machine's state |
//! | `screendump` | the VGA screen as PPM or PNG ([`crate::display::Screen`]) |
//! | `eject`, `blockdev-change-medium` | the IDE CD-ROMs (`ide1-cd0` is `-cdrom`'s drive); `DEVICE_TRAY_MOVED` |
//! | `set_password vnc` | the VNC server's password |
//! | `savevm`, `loadvm`, `delvm`, `info snapshots` | snapshots inside the machine's qcow2 disks, as QEMU keeps them (`crate::snapshot::qcow2`), or, for a machine without one, in the `--snapshot-dir` directory (`crate::snapshot`); `loadvm` leaves the guest running or paused as it was saved |
//! | `migrate-incoming` (HMP `migrate_incoming`) | with `--incoming defer` (status "inmigrate"): listens on the URI (or starts its command) before it answers, then the stopped machine takes the stream; the guest runs if it ran when it was sent (no `--paused`, or a `cont` while it waited); a failed one can be tried again |
//! | `migrate`, `query-migrate`, `migrate_cancel`, `migrate-set-capabilities` (`auto-converge`; HMP `migrate_set_capability`), `migrate-set-parameters` (`downtime-limit`, `max-bandwidth`, `cpu-throttle-initial`, `cpu-throttle-increment`; HMP `migrate_set_parameter`) | a live migration to `exec:CMD`, `unix:PATH` or `tcp:HOST:PORT` ([`crate::snapshot::live`]): RAM goes while the guest runs, then the pages it dirtied, round after round, then the guest stops for the last pages and its state, and stays stopped ("postmigrate"); `migrate_cancel` lets it run on; `MIGRATION` events |
//!
//! Snapshots and migration stop every vCPU for their work
//! ([`crate::RunControl::request`]), which needs the machine to run under
//! [`Machine::run_lifecycle`].

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
use crate::machine::{Machine, RunControl, Stopped};

/// How long `stop` waits for the vCPUs to reach an instruction boundary.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// How long `savevm` and `loadvm` wait for their work.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(600);

/// The machine's side of the monitors.
pub struct MachineBackend {
    control: Arc<RunControl>,
    events: Arc<VmEvents>,
    acpi_pm: Arc<Mutex<devices::legacy::acpi_pm::AcpiPm>>,
    ide: Option<Arc<Mutex<IdeController>>>,
    display: Option<Arc<Display>>,
    /// Set while the machine is stopped (`stop`, `-S`, a migration's end).
    paused: Arc<AtomicBool>,
    /// Set after a migration completed, until `cont` or `loadvm`.
    postmigrate: Arc<AtomicBool>,
    /// The status while stopped (and not after a migration): "paused",
    /// "shutdown" (the guest shut down under `--no-shutdown`) or
    /// "prelaunch" (`-S`, or reset while stopped).
    stopped_as: Arc<Mutex<&'static str>>,
    /// Where `savevm` and `loadvm` keep snapshots (`--snapshot-dir`).
    snapshots: Mutex<Option<crate::snapshot::SnapshotDir>>,
    /// The machine's drives: snapshots go inside its qcow2 disks when it
    /// has any the guest writes ([`crate::snapshot::qcow2`]).
    disks: Vec<crate::storage::WeakMachineDisk>,
    /// The last migration, for `query-migrate`.
    migration: Arc<Mutex<crate::snapshot::live::Progress>>,
    /// How the next migration goes (`migrate-set-parameters`,
    /// `migrate-set-capabilities`).
    migration_params: Mutex<crate::snapshot::live::Params>,
    /// Set by `migrate_cancel` while a migration runs.
    migration_cancel: Arc<AtomicBool>,
    /// Guest memory, whose writes a live migration logs.
    mem: Arc<mmu::GuestMemory>,
    /// Set once `quit` asked the run to end.
    quit: AtomicBool,
    /// `--no-reboot`: `system_reset` ends (or stops) the run.
    no_reboot: bool,
    cpus: usize,
    accel: &'static str,
    name: Option<String>,
    /// The monitor, for events; set once it exists.
    monitor: Arc<Mutex<Option<Arc<Monitor>>>>,
    /// `--incoming defer`: set until `migrate-incoming` takes the
    /// migration (or again after one failed).
    deferred_incoming: Arc<AtomicBool>,
    /// The guest runs once its incoming migration arrived, if it ran when
    /// it was sent (no `--paused`, or a `cont` while it waited).
    incoming_autostart: Arc<AtomicBool>,
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
        let backend = Arc::new(Self {
            control: machine.control(),
            events: machine.events.clone(),
            acpi_pm: machine.chipset.acpi_pm.clone(),
            ide: machine.ide(),
            display,
            paused: Arc::new(AtomicBool::new(false)),
            postmigrate: Arc::default(),
            stopped_as: Arc::new(Mutex::new("paused")),
            snapshots: Mutex::new(None),
            disks: machine.disks().iter().map(crate::storage::MachineDisk::downgrade).collect(),
            migration: Arc::default(),
            migration_params: Mutex::new(crate::snapshot::live::Params::default()),
            migration_cancel: Arc::default(),
            mem: machine.mem.clone(),
            quit: AtomicBool::new(false),
            no_reboot: machine.config.no_reboot,
            cpus: machine.config.cpus(),
            accel,
            name,
            monitor: Arc::default(),
            deferred_incoming: Arc::default(),
            incoming_autostart: Arc::default(),
        });
        let (paused, stopped_as, postmigrate, monitor) =
            (backend.paused.clone(), backend.stopped_as.clone(), backend.postmigrate.clone(), backend.monitor.clone());
        backend.control.set_shutdown_listener(Box::new(move |reason| {
            *stopped_as.lock() = "shutdown";
            postmigrate.store(false, Ordering::Release);
            emit(&monitor, Event::Shutdown { guest: reason.starts_with("guest-"), reason: reason.to_string() });
            if !paused.swap(true, Ordering::AcqRel) {
                emit(&monitor, Event::Stop);
            }
        }));
        backend
    }

    /// Where `savevm` keeps snapshots and `loadvm` finds them
    /// (`--snapshot-dir`).
    pub fn set_snapshot_dir(&self, dir: crate::snapshot::SnapshotDir) {
        *self.snapshots.lock() = Some(dir);
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

    /// `--incoming defer` (QEMU's `-incoming defer`): the machine waits,
    /// stopped ("inmigrate"), for `migrate-incoming`; `autostart`: it
    /// runs after the migration if the guest ran when it was sent.
    pub fn defer_incoming(&self, autostart: bool) {
        self.hold();
        *self.stopped_as.lock() = "inmigrate";
        self.incoming_autostart.store(autostart, Ordering::Release);
        self.deferred_incoming.store(true, Ordering::Release);
    }

    /// Fails while the machine waits for its incoming migration (there is
    /// no guest yet to save or send).
    fn check_not_incoming(&self) -> Result<(), QmpError> {
        let waiting = *self.stopped_as.lock() == "inmigrate";
        if waiting {
            return Err(QmpError::generic("Guest is waiting for an incoming migration"));
        }
        Ok(())
    }

    /// `migrate-incoming URI`: listens (or starts the command) now, and
    /// the stopped machine takes the stream, restores it and, if the guest
    /// ran when it was sent (and no `--paused`), lets it run.
    fn migrate_incoming(&self, uri: &str) -> Result<Value, QmpError> {
        if !self.deferred_incoming.load(Ordering::Acquire) {
            return Err(QmpError::generic(if *self.stopped_as.lock() == "inmigrate" {
                "The incoming migration has already been started"
            } else {
                "'-incoming' was not specified on the command line"
            }));
        }
        let parsed: crate::snapshot::MigrationUri = uri.parse().map_err(QmpError::generic)?;
        {
            let mut mig = self.migration.lock();
            if mig.status == "active" {
                return Err(QmpError::generic("The incoming migration has already been started"));
            }
            *mig = crate::snapshot::live::Progress {
                status: "active".into(),
                started: Some(std::time::Instant::now()),
                ..Default::default()
            };
        }
        let listening = crate::snapshot::Incoming::listen(&parsed).map_err(|e| {
            self.migration.lock().status = "failed".into();
            QmpError::generic(e.to_string())
        })?;
        self.deferred_incoming.store(false, Ordering::Release);
        let (migration, monitor, paused, stopped_as, deferred, autostart) = (
            self.migration.clone(),
            self.monitor.clone(),
            self.paused.clone(),
            self.stopped_as.clone(),
            self.deferred_incoming.clone(),
            self.incoming_autostart.clone(),
        );
        let what = format!("migrate-incoming {uri}");
        self.control
            .request(Box::new(move |m, s| {
                let got = listening.receive(m).map(|(r, _)| r).map_err(|e| e.to_string());
                let mut mig = migration.lock();
                match got {
                    Ok(r) => {
                        tracing::info!(target: "vmm", "{what}: the guest arrived in {:.1} ms", r.took.as_secs_f64() * 1e3);
                        s.vcpus = r.vcpus;
                        mig.status = "completed".into();
                        drop(mig);
                        let run = autostart.load(Ordering::Acquire) && r.run_state == crate::snapshot::RunState::Running;
                        *stopped_as.lock() = "paused";
                        m.control().set_pause(!run);
                        if run && paused.swap(false, Ordering::AcqRel) {
                            emit(&monitor, Event::Resume);
                        }
                    }
                    Err(e) => {
                        // The machine waits on for another migrate-incoming.
                        tracing::error!(target: "vmm", "{what}: {e}");
                        (mig.status, mig.error) = ("failed".into(), Some(e));
                        deferred.store(true, Ordering::Release);
                    }
                }
            }))
            .map_err(|e| {
                self.deferred_incoming.store(true, Ordering::Release);
                QmpError::generic(e)
            })?;
        Ok(json!({}))
    }

    /// A machine held by [`MachineBackend::hold`] has not run yet (QEMU's
    /// `-S` without a saved state): its status is "prelaunch" until `cont`.
    pub fn prelaunch(&self) {
        *self.stopped_as.lock() = "prelaunch";
    }

    fn emit(&self, event: Event) {
        emit(&self.monitor, event);
    }

    /// Where snapshots go: inside the machine's qcow2 disks when the guest
    /// writes any, else the snapshot directory, or the error that asks for
    /// one.
    fn snapshot_place(&self, what: &str) -> Result<SnapshotPlace, QmpError> {
        match crate::snapshot::qcow2::snapshot_disks(&self.disks()?) {
            Ok(Some(disks)) => Ok(SnapshotPlace::Disks(disks)),
            Ok(None) => self.snapshots.lock().clone().map(SnapshotPlace::Dir).ok_or_else(|| {
                QmpError::generic(format!(
                    "{what} needs a place for snapshots: the machine has no qcow2 disk the guest writes \
                     (snapshots go inside one, as QEMU keeps them); start ferrovm with --snapshot-dir DIR"
                ))
            }),
            Err(e) => Err(QmpError::generic(format!("{what}: {e}"))),
        }
    }

    /// Runs `op` with every vCPU stopped and waits for its answer.
    fn on_stopped_machine<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Machine, &mut Stopped) -> Result<T, String> + Send + 'static,
    ) -> Result<T, QmpError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control
            .request(Box::new(move |m: &mut Machine, s: &mut Stopped| {
                let _ = tx.send(op(m, s));
            }))
            .map_err(QmpError::generic)?;
        match rx.recv_timeout(SNAPSHOT_WAIT) {
            Ok(r) => r.map_err(QmpError::generic),
            Err(_) => Err(QmpError::generic("the machine stopped running before the work was done")),
        }
    }

    fn savevm(&self, name: &str) -> Result<Value, QmpError> {
        let place = self.snapshot_place("savevm")?;
        self.check_not_incoming()?;
        let report = match place {
            SnapshotPlace::Disks(_) => {
                let name = name.to_string();
                self.on_stopped_machine(move |m, s| {
                    let disks = machine_snapshot_disks(m)?;
                    crate::snapshot::qcow2::save(m, s, &disks, &name).map_err(|e| e.to_string())
                })?
            }
            SnapshotPlace::Dir(dir) => {
                let path = dir.entry(name).map_err(|e| QmpError::generic(e.to_string()))?;
                self.on_stopped_machine(move |m, s| crate::snapshot::save_to(m, s, &path).map_err(|e| e.to_string()))?
            }
        };
        tracing::info!(
            target: "vmm",
            "savevm: {} bytes of state, {} of {} bytes of RAM written in {:.3} s",
            report.state_bytes,
            report.ram.written,
            report.ram.total,
            report.took.as_secs_f64()
        );
        Ok(json!({}))
    }

    fn loadvm(&self, name: &str) -> Result<Value, QmpError> {
        let place = self.snapshot_place("loadvm")?;
        let name = name.to_string();
        let paused = match place {
            SnapshotPlace::Disks(_) => self.on_stopped_machine(move |m, s| {
                let disks = machine_snapshot_disks(m)?;
                let r = crate::snapshot::qcow2::load(m, &disks, &name).map_err(|e| e.to_string())?;
                tracing::info!(target: "vmm", "loadvm {name}: {:.3} s", r.took.as_secs_f64());
                s.vcpus = r.vcpus;
                let paused = r.run_state == crate::snapshot::RunState::Paused;
                m.control().set_pause(paused);
                Ok(paused)
            })?,
            SnapshotPlace::Dir(dir) => {
                let path = dir.entry(&name).map_err(|e| QmpError::generic(e.to_string()))?;
                if !path.join("state").is_file() {
                    return Err(QmpError::generic(format!(
                        "Snapshot '{name}' does not exist in {}",
                        dir.path().display()
                    )));
                }
                self.on_stopped_machine(move |m, s| {
                    let r = crate::snapshot::restore_from(m, &path).map_err(|e| e.to_string())?;
                    s.vcpus = r.vcpus;
                    let paused = r.run_state == crate::snapshot::RunState::Paused;
                    m.control().set_pause(paused);
                    Ok(paused)
                })?
            }
        };
        self.postmigrate.store(false, Ordering::Release);
        *self.stopped_as.lock() = "paused";
        let was = self.paused.swap(paused, Ordering::AcqRel);
        match (was, paused) {
            (false, true) => self.emit(Event::Stop),
            (true, false) => self.emit(Event::Resume),
            _ => {}
        }
        Ok(json!({}))
    }

    fn delvm(&self, name: &str) -> Result<Value, QmpError> {
        match self.snapshot_place("delvm")? {
            // Under the disks' locks, between two of the guest's requests:
            // the vCPUs go on.
            SnapshotPlace::Disks(disks) => {
                crate::snapshot::qcow2::delete(&disks, name).map_err(|e| QmpError::generic(e.to_string()))?
            }
            SnapshotPlace::Dir(dir) => dir.delete(name).map_err(|e| QmpError::generic(e.to_string()))?,
        }
        Ok(json!({}))
    }

    /// The machine's drives, while it runs.
    fn disks(&self) -> Result<Vec<crate::storage::MachineDisk>, QmpError> {
        self.disks
            .iter()
            .map(crate::storage::WeakMachineDisk::upgrade)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| QmpError::generic("the machine's disks are closed: its run ended"))
    }

    fn info_snapshots(&self) -> Result<Value, QmpError> {
        match crate::snapshot::qcow2::snapshot_disks(&self.disks()?) {
            // QEMU's text, as QEMU prints it.
            Ok(Some(disks)) => {
                let text = crate::snapshot::qcow2::info_text(&disks).map_err(|e| QmpError::generic(e.to_string()))?;
                return Ok(Value::String(text));
            }
            Ok(None) => {}
            Err(e) => return Err(QmpError::generic(e.to_string())),
        }
        let Some(dir) = self.snapshots.lock().clone() else { return Ok(json!([])) };
        let list = dir.list().map_err(|e| QmpError::generic(e.to_string()))?;
        Ok(Value::Array(
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    json!({
                        "id": (i + 1).to_string(),
                        "name": s.name,
                        "vm-state-size": s.disk_bytes,
                        "date-sec": s.saved_at,
                        "date-nsec": 0,
                        "vm-clock-sec": s.guest_ns / 1_000_000_000,
                        "vm-clock-nsec": s.guest_ns % 1_000_000_000,
                    })
                })
                .collect(),
        ))
    }

    /// `migrate`: a live migration (pre-copy while the guest runs, then
    /// the last pages and the state with the guest stopped) on a thread
    /// of its own. Writes made in KVM (split execution's user code) are
    /// logged by KVM's dirty log; where it cannot log them, the guest
    /// stops first and everything goes at once.
    fn migrate(&self, uri: &str) -> Result<Value, QmpError> {
        use crate::snapshot::live::{self, Progress};
        let uri: crate::snapshot::MigrationUri = uri.parse().map_err(QmpError::generic)?;
        self.check_not_incoming()?;
        for d in self.disks()? {
            let Some(shared) = &d.disk else { continue };
            if let Some(dir) = shared.lock().image().and_then(|i| i.written_back_folder()) {
                // The destination builds its own disk from the folder, which
                // the guest's view of this one need not match (QEMU refuses
                // the same).
                return Err(QmpError::generic(format!(
                    "migration is not possible here: {} is a fat:rw: folder, whose disk does not migrate",
                    dir.display()
                )));
            }
        }
        {
            let mut mig = self.migration.lock();
            if matches!(mig.status.as_str(), "setup" | "active" | "cancelling") {
                return Err(QmpError::generic("There's a migration process in progress"));
            }
            *mig = Progress { status: "setup".into(), started: Some(std::time::Instant::now()), ..Default::default() };
        }
        self.migration_cancel.store(false, Ordering::Release);
        self.emit(Event::Migration { status: "setup".into() });
        let out = match live::connect(&uri) {
            Ok(o) => o,
            Err(e) => {
                let mut mig = self.migration.lock();
                (mig.status, mig.error) = ("failed".into(), Some(e.to_string()));
                drop(mig);
                self.emit(Event::Migration { status: "failed".into() });
                return Err(QmpError::generic(e.to_string()));
            }
        };
        let was_paused = self.paused.load(Ordering::Acquire);
        let sender = live::LiveSender::new(
            self.mem.clone(),
            self.control.clone(),
            *self.migration_params.lock(),
            self.migration.clone(),
            self.migration_cancel.clone(),
            out.writer,
        );
        let (migration, monitor, paused, postmigrate, control) = (
            self.migration.clone(),
            self.monitor.clone(),
            self.paused.clone(),
            self.postmigrate.clone(),
            self.control.clone(),
        );
        let mut child = out.child;
        let reply = out.reply;
        emit(&monitor, Event::Migration { status: "active".into() });
        let spawned = std::thread::Builder::new().name("migration".into()).spawn(move || {
            let mut r = sender.run(reply);
            if let Some(c) = child.as_mut() {
                match c.wait() {
                    Ok(st) if !st.success() && r.is_ok() => {
                        r = Err(crate::snapshot::SnapshotError::Io(format!("the migration command failed ({st})")))
                    }
                    _ => {}
                }
            }
            let mut mig = migration.lock();
            mig.total_ms = mig.started.map_or(0, |t| t.elapsed().as_millis() as u64);
            match r {
                Ok(()) => {
                    mig.status = "completed".into();
                    drop(mig);
                    // The guest stays stopped, as QEMU's does ("postmigrate"):
                    // the stopped phase left it paused.
                    postmigrate.store(true, Ordering::Release);
                    if !paused.swap(true, Ordering::AcqRel) {
                        emit(&monitor, Event::Stop);
                    }
                    emit(&monitor, Event::Migration { status: "completed".into() });
                }
                Err(e) => {
                    let cancelled = mig.status == "cancelling";
                    tracing::warn!(target: "vmm", "migration {}: {e}", if cancelled { "cancelled" } else { "failed" });
                    mig.status = if cancelled { "cancelled" } else { "failed" }.into();
                    if !cancelled {
                        mig.error = Some(e.to_string());
                    }
                    drop(mig);
                    // The guest runs on where it was (unless it was paused).
                    if !was_paused && !paused.load(Ordering::Acquire) {
                        control.resume();
                    }
                    emit(&monitor, Event::Migration { status: if cancelled { "cancelled" } else { "failed" }.into() });
                }
            }
        });
        if let Err(e) = spawned {
            let mut mig = self.migration.lock();
            (mig.status, mig.error) = ("failed".into(), Some(e.to_string()));
            return Err(QmpError::generic(e.to_string()));
        }
        Ok(json!({}))
    }

    fn query_migrate(&self) -> Value {
        let mig = self.migration.lock();
        if mig.status.is_empty() {
            return json!({});
        }
        let mut v = json!({ "status": mig.status });
        let running = matches!(mig.status.as_str(), "setup" | "active" | "cancelling");
        let total_ms = if running { mig.started.map_or(0, |t| t.elapsed().as_millis() as u64) } else { mig.total_ms };
        v["total-time"] = json!(total_ms);
        if mig.status != "setup" {
            v["setup-time"] = json!(mig.setup_ms);
            let remaining = if mig.status == "completed" { 0 } else { mig.remaining };
            v["ram"] = json!({
                "transferred": mig.transferred,
                "remaining": remaining,
                "total": mig.total,
                "duplicate": mig.duplicate,
                "normal": mig.normal,
                "normal-bytes": mig.normal * mmu::PAGE_SIZE,
                "precopy-bytes": mig.precopy_bytes,
                "downtime-bytes": mig.downtime_bytes,
                "dirty-pages-rate": mig.dirty_pages_rate,
                "dirty-sync-count": mig.dirty_sync_count,
                "page-size": mmu::PAGE_SIZE,
                "mbps": if mig.mbps > 0.0 || running {
                    mig.mbps
                } else {
                    mig.transferred as f64 * 8.0 / 1e6 / (total_ms as f64 / 1000.0).max(0.001)
                },
            });
            if running {
                v["expected-downtime"] = json!(self.migration_params.lock().downtime_limit.as_millis() as u64);
            }
        }
        if let Some(d) = mig.downtime_ms {
            v["downtime"] = json!(d);
        }
        if self.migration_params.lock().auto_converge && (running || mig.throttle > 0) {
            v["cpu-throttle-percentage"] = json!(if running { self.control.throttle() } else { mig.throttle });
        }
        if let Some(e) = &mig.error {
            v["error-desc"] = json!(e);
        }
        v
    }

    /// `migrate_cancel`: a migration in its rounds stops, dirty logging
    /// ends, and the guest runs on.
    fn migrate_cancel(&self) -> Value {
        let mut mig = self.migration.lock();
        if matches!(mig.status.as_str(), "setup" | "active") {
            mig.status = "cancelling".into();
            self.migration_cancel.store(true, Ordering::Release);
        }
        json!({})
    }

    fn set_capabilities(&self, capabilities: &[(String, bool)]) -> Result<Value, QmpError> {
        if let Some((name, _)) =
            capabilities.iter().find(|(name, on)| *on && name != "events" && name != "auto-converge")
        {
            return Err(QmpError::generic(format!(
                "ferrovm migrates without the capability '{name}' (it has events and auto-converge)"
            )));
        }
        if let Some((_, on)) = capabilities.iter().rev().find(|(name, _)| name == "auto-converge") {
            self.migration_params.lock().auto_converge = *on;
        }
        Ok(json!({}))
    }

    fn set_parameters(&self, parameters: &[(String, u64)]) -> Result<Value, QmpError> {
        let mut p = *self.migration_params.lock();
        for (name, v) in parameters {
            match name.as_str() {
                "downtime-limit" if *v <= 2_000_000 => p.downtime_limit = Duration::from_millis(*v),
                "max-bandwidth" => p.max_bandwidth = *v,
                "cpu-throttle-initial" if (1..=99).contains(v) => p.throttle_initial = *v as u32,
                "cpu-throttle-increment" if (1..=99).contains(v) => p.throttle_increment = *v as u32,
                _ => {
                    return Err(QmpError::generic(format!("Parameter '{name}' expects a value in its range, not {v}")))
                }
            }
        }
        *self.migration_params.lock() = p;
        Ok(json!({}))
    }

    /// Ends the run as QMP's `quit` does, stopped or not; the monitors
    /// hear `SHUTDOWN` with `reason` (`host-qmp-quit`, `host-signal`).
    pub fn quit(&self, reason: &str) {
        self.quit.store(true, Ordering::Release);
        self.events.request(VmEvent::Quit);
        self.emit(Event::Shutdown { guest: false, reason: reason.to_string() });
        // A stopped machine goes on to see the request.
        if self.paused.swap(false, Ordering::AcqRel) {
            self.control.resume();
        }
    }

    /// Tells the monitors how the run ended, unless a `quit` ended it
    /// (which told them already), and waits until each QMP client's
    /// events are written.
    pub fn run_ended(&self, guest: bool, reason: &str) {
        if !self.quit.load(Ordering::Acquire) {
            self.emit(Event::Shutdown { guest, reason: reason.to_string() });
        }
        // The process ends next: the clients get their events first.
        if let Some(m) = self.monitor.lock().clone() {
            m.flush_events();
        }
    }

    fn stop(&self) -> Result<Value, QmpError> {
        if !self.paused.swap(true, Ordering::AcqRel) {
            *self.stopped_as.lock() = "paused";
            if self.control.pause(STOP_WAIT).is_none() {
                tracing::warn!(target: "vmm", "stop: the vCPUs did not reach a stop within {STOP_WAIT:?}; they stop when they do");
            }
            self.emit(Event::Stop);
        }
        Ok(json!({}))
    }

    fn cont(&self) -> Result<Value, QmpError> {
        if *self.stopped_as.lock() == "inmigrate" {
            // As QEMU: waiting for its migration, the guest starts once
            // it has arrived.
            self.incoming_autostart.store(true, Ordering::Release);
            return Ok(json!({}));
        }
        if self.paused.load(Ordering::Acquire) && *self.stopped_as.lock() == "shutdown" {
            return Err(QmpError::generic("Resetting the Virtual Machine is required"));
        }
        self.postmigrate.store(false, Ordering::Release);
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
                let status = match (paused, self.postmigrate.load(Ordering::Acquire)) {
                    (false, _) => "running",
                    (true, true) => "postmigrate",
                    (true, false) => *self.stopped_as.lock(),
                };
                Ok(json!({ "running": !paused, "singlestep": false, "status": status }))
            }
            Command::Stop => self.stop(),
            Command::Cont => self.cont(),
            Command::SystemReset => {
                if !self.control.host_reset(&self.events) {
                    // Another machine event (a power-off, a quit) is
                    // under way and ends the run first: nothing to reset.
                    return Ok(json!({}));
                }
                if self.no_reboot {
                    // As QEMU: under -no-reboot a reset is a shutdown, whose
                    // SHUTDOWN (reason host-qmp-system-reset) comes when the
                    // run ends or, with -no-shutdown, stops.
                    return Ok(json!({}));
                }
                // The machine is reset at once, stopped or not; a stopped
                // one (shut down, too) waits for `cont`, as before its start.
                if self.paused.load(Ordering::Acquire) && !self.postmigrate.load(Ordering::Acquire) {
                    *self.stopped_as.lock() = "prelaunch";
                }
                self.emit(Event::Reset { guest: false, reason: "host-qmp-system-reset".into() });
                Ok(json!({}))
            }
            Command::SystemPowerdown => {
                self.acpi_pm.lock().power_button();
                self.emit(Event::Powerdown);
                Ok(json!({}))
            }
            Command::Quit => {
                self.quit("host-qmp-quit");
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
            Command::SaveVm { name } => self.savevm(&name),
            Command::LoadVm { name } => self.loadvm(&name),
            Command::DelVm { name } => self.delvm(&name),
            Command::InfoSnapshots => self.info_snapshots(),
            Command::Migrate { uri } => self.migrate(&uri),
            Command::MigrateIncoming { uri } => self.migrate_incoming(&uri),
            Command::QueryMigrate => Ok(self.query_migrate()),
            Command::MigrateCancel => Ok(self.migrate_cancel()),
            Command::MigrateSetCapabilities { capabilities } => self.set_capabilities(&capabilities),
            Command::MigrateSetParameters { parameters } => self.set_parameters(&parameters),
            other => Err(QmpError::new(
                ErrorClass::CommandNotFound,
                format!("The command {} is not supported by ferrovm", command_name(&other)),
            )),
        }
    }
}

/// The monitor of `--serial mon:stdio` (QEMU's mux): HMP on the
/// console's terminal, which `Ctrl-A c` gives the keys to.
pub fn serial_monitor(mon: Arc<Monitor>) -> Box<dyn devices::console::MuxMonitor> {
    Box::new(SerialMonitor(monitor::HmpTerminal::new(mon)))
}

struct SerialMonitor(monitor::HmpTerminal);

impl devices::console::MuxMonitor for SerialMonitor {
    fn focus_in(&mut self, out: &mut dyn std::io::Write) {
        show(out, &self.0.focus_in());
    }

    fn focus_out(&mut self, out: &mut dyn std::io::Write) {
        show(out, &self.0.focus_out());
    }

    fn input(&mut self, bytes: &[u8], out: &mut dyn std::io::Write) {
        show(out, &self.0.input(bytes));
    }
}

/// Writes the monitor's text to the console; a console gone is no error.
fn show(out: &mut dyn std::io::Write, text: &str) {
    if !text.is_empty() {
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}

/// The disks the stopped machine keeps its snapshots in.
fn machine_snapshot_disks(m: &Machine) -> Result<crate::snapshot::qcow2::SnapshotDisks, String> {
    crate::snapshot::qcow2::snapshot_disks(m.disks())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the machine has no qcow2 disk the guest writes".to_string())
}

/// Where a machine's snapshots go.
enum SnapshotPlace {
    /// Inside its qcow2 disks.
    Disks(crate::snapshot::qcow2::SnapshotDisks),
    /// In the `--snapshot-dir` directory.
    Dir(crate::snapshot::SnapshotDir),
}

/// Sends `event` to the monitor in `slot`, once there is one.
fn emit(slot: &Mutex<Option<Arc<Monitor>>>, event: Event) {
    if let Some(m) = &*slot.lock() {
        m.emit(event);
    }
}

/// A name for a command in an error message.
fn command_name(cmd: &Command) -> String {
    let debug = format!("{cmd:?}");
    debug.split([' ', '{', '(']).next().unwrap_or_default().to_string()
}
