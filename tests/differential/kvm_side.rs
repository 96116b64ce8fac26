//! The KVM side: one VM and one vCPU, reused for every sequence (the code
//! page, the data page and the state are rewritten each time).
//!
//! The handler's port write stops the run before KVM re-enters the guest;
//! one more `KVM_RUN` with `immediate_exit` set then completes the `out` (KVM
//! finishes a port instruction only on the next entry), so RIP and the state
//! read back are those after it, as in the interpreter.
//!
//! A sequence that never ends (a loop through RET, a REP with a huge count)
//! would keep `KVM_RUN` busy forever: a watchdog on another thread signals
//! the vCPU thread once a run has lasted too long, which makes `KVM_RUN`
//! return.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hvf_kvm_accel::kvm::{ExtendedState, Kvm, KvmVcpu, KvmVm};
use hvf_kvm_accel::{Platform, Vcpu, VmExit};
use mmu::GuestMemory;

use crate::gen::{Assembled, Case};
use crate::interp::{load_case, PortLog};
use crate::machine;
use crate::outcome::{End, Outcome};

/// How long one sequence may run under KVM.
pub const RUN_LIMIT_MS: u64 = 1500;

/// Shared between the vCPU thread and the watchdog.
pub struct Watchdog {
    base: Instant,
    /// Milliseconds since `base` + 1 when the current run started; 0 when idle.
    started: AtomicU64,
    pub fired: AtomicBool,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog { base: Instant::now(), started: AtomicU64::new(0), fired: AtomicBool::new(false) }
    }
}

impl Watchdog {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }
    fn arm(&self) {
        self.fired.store(false, Ordering::SeqCst);
        self.started.store(self.now_ms(), Ordering::SeqCst);
    }
    fn disarm(&self) {
        self.started.store(0, Ordering::SeqCst);
    }
    /// Called by the watchdog thread: whether the vCPU thread must be kicked.
    pub fn overdue(&self) -> bool {
        let s = self.started.load(Ordering::SeqCst);
        if s != 0 && self.now_ms().saturating_sub(s) > RUN_LIMIT_MS {
            self.fired.store(true, Ordering::SeqCst);
            true
        } else {
            false
        }
    }
}

struct Io {
    log: PortLog,
    watchdog: Arc<Watchdog>,
}

impl Platform for Io {
    fn io_read(&mut self, _port: u16, size: u8) -> u32 {
        u32::MAX >> (32 - 8 * u32::from(size.clamp(1, 4)))
    }
    fn io_write(&mut self, port: u16, _size: u8, _value: u32) {
        self.log.write(port);
    }
    fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) {}
    fn stop_requested(&self) -> bool {
        self.log.stop.is_some() || self.watchdog.fired.load(Ordering::SeqCst)
    }
}

pub struct KvmSide {
    pub mem: Arc<GuestMemory>,
    vcpu: KvmVcpu,
    _vm: KvmVm,
    io: Io,
    /// The vCPU's XSAVE image holds YMM state from an earlier run: it is put
    /// back to the init state before a case that does not set it (the
    /// host's XSAVE family, which kvm_pvm runs ring 3 under, sees it).
    ymm_dirty: bool,
}

impl KvmSide {
    pub fn new(watchdog: Arc<Watchdog>) -> Result<Self, String> {
        let mut kvm = Kvm::new().map_err(|e| format!("KVM is not usable here: {e}"))?;
        kvm.set_in_kernel_irqchip(false);
        let mem = Arc::new(machine::build_memory());
        let vm = kvm.create_kvm_vm(mem.clone()).map_err(|e| format!("KVM cannot create a VM here: {e}"))?;
        let vcpu = vm.create_kvm_vcpu(0).map_err(|e| format!("KVM cannot create a vCPU here: {e}"))?;
        Ok(KvmSide { mem, vcpu, _vm: vm, io: Io { log: PortLog::default(), watchdog }, ymm_dirty: false })
    }

    /// Whether the vCPU takes CR4.OSXSAVE with `xcr0` (x87|SSE for the xsave
    /// group, x87|SSE|YMM for the avx group) and gives it back: a KVM whose
    /// CPUID model hides XSAVE may refuse CR4.OSXSAVE. With YMM, the upper
    /// halves must make the round trip through the XSAVE image too.
    pub fn takes_xsave_state(&mut self, xcr0: u64) -> Result<(), String> {
        let mut s = machine::base_state(machine::Mode::Long64);
        s.cr4 |= cpu::state::cr::CR4_OSXSAVE;
        s.xcr0 = xcr0;
        self.vcpu.set_state(&s).map_err(|e| format!("KVM refuses CR4.OSXSAVE with XCR0 = {xcr0}: {e}"))?;
        let back = self.vcpu.get_state().map_err(|e| format!("KVM get_state: {e}"))?;
        if back.cr4 & cpu::state::cr::CR4_OSXSAVE == 0 || back.xcr0 != xcr0 {
            return Err(format!("KVM gives back CR4 {:#x} and XCR0 {:#x}", back.cr4, back.xcr0));
        }
        if xcr0 & 4 != 0 {
            self.ymm_dirty = true;
            let words: Vec<u32> = (0..64).map(|i| 0x0101_0101 * (i + 1)).collect();
            let e = ExtendedState { bv: 4, words: words.clone() };
            self.vcpu.set_extended_state(&e).map_err(|e| format!("KVM refuses YMM state: {e}"))?;
            let back = self.vcpu.extended_state().map_err(|e| format!("KVM extended_state: {e}"))?;
            match back {
                Some(b) if b.bv & 4 != 0 && b.words.get(..64) == Some(&words[..]) => {}
                _ => return Err("KVM does not give the YMM state back".into()),
            }
        }
        Ok(())
    }

    pub fn run(&mut self, case: &Case, asm: &Assembled) -> Outcome {
        load_case(&self.mem, case, asm);
        self.io.log = PortLog::default();
        if let Err(e) = self.vcpu.set_state(&case.init) {
            return Outcome::read(End::Other(format!("KVM set_state: {e}")), case.init, &self.mem);
        }
        // The YMM upper halves travel in the XSAVE image, as component 2 at
        // its standard offset (word 0 of the extended state).
        let avx = case.init.xcr0 & 4 != 0;
        if !avx && self.ymm_dirty {
            if let Err(e) = self.vcpu.set_extended_state(&ExtendedState::init()) {
                return Outcome::read(End::Other(format!("KVM set_extended_state: {e}")), case.init, &self.mem);
            }
            self.ymm_dirty = false;
        }
        if avx {
            self.ymm_dirty = true;
            let words = case.init.ymm_hi.iter().flat_map(|y| (0..4).map(move |k| (y >> (32 * k)) as u32)).collect();
            if let Err(e) = self.vcpu.set_extended_state(&ExtendedState { bv: 4, words }) {
                return Outcome::read(End::Other(format!("KVM set_extended_state: {e}")), case.init, &self.mem);
            }
        }
        let end = loop {
            self.io.watchdog.arm();
            let r = self.vcpu.run(&mut self.io);
            self.io.watchdog.disarm();
            match r {
                Ok(VmExit::Interrupted) => {
                    if let Some(end) = self.io.log.end() {
                        break end;
                    }
                    if self.io.watchdog.fired.swap(false, Ordering::SeqCst) {
                        break End::Timeout;
                    }
                }
                Ok(other) => break End::Other(format!("KVM exit: {other}")),
                Err(e) => break End::Other(format!("KVM run: {e}")),
            }
        };
        if matches!(end, End::Normal | End::Exception(_)) {
            // Complete the port write without running further.
            let fd = self.vcpu.fd();
            fd.set_kvm_immediate_exit(1);
            let _ = fd.run();
            fd.set_kvm_immediate_exit(0);
        }
        let mut state = match self.vcpu.get_state() {
            Ok(s) => s,
            Err(e) => return Outcome::read(End::Other(format!("KVM get_state: {e}")), case.init, &self.mem),
        };
        if avx {
            match self.vcpu.extended_state() {
                Ok(Some(e)) => {
                    for (i, y) in state.ymm_hi.iter_mut().enumerate() {
                        let w = |k: usize| u128::from(e.words.get(4 * i + k).copied().unwrap_or(0)) << (32 * k);
                        *y = if e.bv & 4 == 0 { 0 } else { w(0) | w(1) | w(2) | w(3) };
                    }
                }
                Ok(None) => return Outcome::read(End::Other("KVM has no XSAVE state".into()), case.init, &self.mem),
                Err(e) => return Outcome::read(End::Other(format!("KVM extended_state: {e}")), case.init, &self.mem),
            }
        }
        Outcome::read(end, state, &self.mem).ended(asm)
    }
}
