//! What to do with each KVM exit, in one function that tests can feed
//! fabricated exits.
//!
//! [`KvmExit`] mirrors kvm-ioctls' `VcpuExit` with the data the decision
//! needs (the port access size, the internal-error payload, the RIP), and can
//! be built without a VM. [`handle_exit`] serves port and MMIO accesses
//! through the machine's I/O interface ([`Platform`]) and turns everything else into a [`VmExit`].

use crate::{ExitCounts, Platform, VmExit};

/// `KVM_SYSTEM_EVENT_SHUTDOWN`.
pub const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
/// `KVM_SYSTEM_EVENT_RESET`.
pub const SYSTEM_EVENT_RESET: u32 = 2;

/// One exit from `KVM_RUN`, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum KvmExit<'a> {
    /// `in`/`ins`: `data` holds `data.len() / size` elements of `size` bytes.
    IoIn {
        port: u16,
        size: usize,
        data: &'a mut [u8],
    },
    /// `out`/`outs`: `data` holds `data.len() / size` elements of `size` bytes.
    IoOut {
        port: u16,
        size: usize,
        data: &'a [u8],
    },
    MmioRead {
        addr: u64,
        data: &'a mut [u8],
    },
    MmioWrite {
        addr: u64,
        data: &'a [u8],
    },
    Hlt,
    /// Triple fault.
    Shutdown,
    FailEntry {
        reason: u64,
        cpu: u32,
    },
    /// `KVM_EXIT_INTERNAL_ERROR`: `data` is the `internal.data[..ndata]`
    /// payload, `insn_bytes` the failing instruction when known.
    InternalError {
        suberror: u32,
        data: Vec<u64>,
        insn_bytes: Vec<u8>,
        rip: u64,
    },
    /// A signal or `immediate_exit` interrupted `KVM_RUN`.
    Intr,
    /// `KVM_EXIT_IRQ_WINDOW_OPEN`: the guest can take the interrupt the
    /// run loop asked the window for; also `KVM_EXIT_SET_TPR`, the guest
    /// lowering CR8 (with the machine's own local APIC), after which an
    /// interrupt held back may go in.
    IrqWindowOpen,
    /// `KVM_EXIT_SYSTEM_EVENT` of the given type.
    SystemEvent {
        kind: u32,
    },
    /// `KVM_EXIT_DEBUG`: the guest debugging KVM_SET_GUEST_DEBUG armed
    /// stopped it.
    Debug {
        dr6: u64,
        pc: u64,
    },
    /// Anything else, by name.
    Other(String),
}

/// What the run loop does next.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// Return this to the caller of `run`.
    Stop(VmExit),
}

/// Count `exit` by kind.
pub fn count_exit(c: &mut ExitCounts, exit: &KvmExit<'_>) {
    let slot = match exit {
        KvmExit::IoIn { .. } => &mut c.pio_in,
        KvmExit::IoOut { .. } => &mut c.pio_out,
        KvmExit::MmioRead { .. } => &mut c.mmio_read,
        KvmExit::MmioWrite { .. } => &mut c.mmio_write,
        KvmExit::Hlt => &mut c.hlt,
        KvmExit::Shutdown => &mut c.shutdown,
        KvmExit::FailEntry { .. } => &mut c.fail_entry,
        KvmExit::InternalError { .. } => &mut c.internal_error,
        KvmExit::Intr => &mut c.interrupted,
        KvmExit::IrqWindowOpen => &mut c.irq_window,
        KvmExit::SystemEvent { .. } => &mut c.system_event,
        KvmExit::Debug { .. } => &mut c.debug,
        KvmExit::Other(_) => &mut c.other,
    };
    *slot += 1;
}

/// Serve `exit` and say what comes next.
pub fn handle_exit(exit: KvmExit<'_>, io: &mut dyn Platform) -> ExitAction {
    match exit {
        KvmExit::IoIn { port, size, data } => {
            // A string instruction moves `count` elements in one exit; the
            // device sees one access per element, as on hardware.
            for chunk in data.chunks_mut(size.max(1)) {
                let n = chunk.len().min(4);
                let v = io.io_read(port, n as u8);
                chunk[..n].copy_from_slice(&v.to_le_bytes()[..n]);
            }
            ExitAction::Continue
        }
        KvmExit::IoOut { port, size, data } => {
            for chunk in data.chunks(size.max(1)) {
                let n = chunk.len().min(4);
                let mut v = [0u8; 4];
                v[..n].copy_from_slice(&chunk[..n]);
                io.io_write(port, n as u8, u32::from_le_bytes(v));
            }
            ExitAction::Continue
        }
        KvmExit::MmioRead { addr, data } => {
            io.mmio_read(addr, data);
            ExitAction::Continue
        }
        KvmExit::MmioWrite { addr, data } => {
            io.mmio_write(addr, data);
            ExitAction::Continue
        }
        KvmExit::Hlt => ExitAction::Stop(VmExit::Hlt),
        KvmExit::Shutdown => ExitAction::Stop(VmExit::Shutdown),
        KvmExit::FailEntry { reason, cpu } => {
            tracing::error!(reason = format_args!("{reason:#x}"), cpu, "KVM could not enter the guest");
            ExitAction::Stop(VmExit::FailEntry { reason })
        }
        KvmExit::InternalError { suberror, data, insn_bytes, rip } => {
            tracing::debug!(suberror, ?data, ?insn_bytes, rip = format_args!("{rip:#x}"), "KVM internal error");
            ExitAction::Stop(VmExit::InternalError { suberror, insn_bytes, rip })
        }
        KvmExit::Intr => ExitAction::Stop(VmExit::Interrupted),
        // The run loop injects the interrupt before it enters again.
        KvmExit::IrqWindowOpen => ExitAction::Continue,
        KvmExit::SystemEvent { kind: SYSTEM_EVENT_SHUTDOWN } => ExitAction::Stop(VmExit::Shutdown),
        KvmExit::SystemEvent { kind: SYSTEM_EVENT_RESET } => {
            ExitAction::Stop(VmExit::Other("system reset requested".into()))
        }
        KvmExit::SystemEvent { kind } => ExitAction::Stop(VmExit::Other(format!("system event {kind}"))),
        KvmExit::Debug { dr6, pc } => ExitAction::Stop(VmExit::Debug { dr6, pc }),
        KvmExit::Other(what) => ExitAction::Stop(VmExit::Other(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every access; reads return a running counter.
    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        next: u8,
    }

    impl Platform for Recorder {
        fn io_read(&mut self, port: u16, size: u8) -> u32 {
            let mut data = [0u8; 4];
            for b in data.iter_mut().take(usize::from(size)) {
                self.next += 1;
                *b = self.next;
            }
            self.log.push(format!("in {port:#x} {size}"));
            u32::from_le_bytes(data)
        }
        fn io_write(&mut self, port: u16, size: u8, value: u32) {
            let data = &value.to_le_bytes()[..usize::from(size)];
            self.log.push(format!("out {port:#x} {data:02x?}"));
        }
        fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
            data.fill(0xab);
            self.log.push(format!("mr {addr:#x} {}", data.len()));
        }
        fn mmio_write(&mut self, addr: u64, data: &[u8]) {
            self.log.push(format!("mw {addr:#x} {data:02x?}"));
        }
    }

    #[test]
    fn pio_out_continues() {
        let mut r = Recorder::default();
        let a = handle_exit(KvmExit::IoOut { port: 0x3f8, size: 1, data: b"A" }, &mut r);
        assert_eq!(a, ExitAction::Continue);
        assert_eq!(r.log, ["out 0x3f8 [41]"]);
    }

    #[test]
    fn pio_in_fills_data() {
        let mut r = Recorder::default();
        let mut buf = [0u8; 4];
        let a = handle_exit(KvmExit::IoIn { port: 0xcfc, size: 4, data: &mut buf }, &mut r);
        assert_eq!(a, ExitAction::Continue);
        assert_eq!(buf, [1, 2, 3, 4]);
        assert_eq!(r.log, ["in 0xcfc 4"]);
    }

    #[test]
    fn string_io_is_split_per_element() {
        let mut r = Recorder::default();
        let data = [1u8, 0, 2, 0, 3, 0];
        handle_exit(KvmExit::IoOut { port: 0x1f0, size: 2, data: &data }, &mut r);
        assert_eq!(r.log, ["out 0x1f0 [01, 00]", "out 0x1f0 [02, 00]", "out 0x1f0 [03, 00]"]);
        let mut buf = [0u8; 3];
        handle_exit(KvmExit::IoIn { port: 0x60, size: 1, data: &mut buf }, &mut r);
        assert_eq!(buf, [1, 2, 3]);
        assert_eq!(r.log.len(), 6);
    }

    #[test]
    fn mmio_goes_to_handler() {
        let mut r = Recorder::default();
        let mut buf = [0u8; 8];
        assert_eq!(handle_exit(KvmExit::MmioRead { addr: 0xfec0_0000, data: &mut buf }, &mut r), ExitAction::Continue);
        assert_eq!(buf, [0xab; 8]);
        assert_eq!(
            handle_exit(KvmExit::MmioWrite { addr: 0xfee0_00b0, data: &[0, 0, 0, 0] }, &mut r),
            ExitAction::Continue
        );
        assert_eq!(r.log, ["mr 0xfec00000 8", "mw 0xfee000b0 [00, 00, 00, 00]"]);
    }

    #[test]
    fn stopping_exits() {
        let mut r = Recorder::default();
        assert_eq!(handle_exit(KvmExit::Hlt, &mut r), ExitAction::Stop(VmExit::Hlt));
        assert_eq!(handle_exit(KvmExit::Shutdown, &mut r), ExitAction::Stop(VmExit::Shutdown));
        assert_eq!(handle_exit(KvmExit::Intr, &mut r), ExitAction::Stop(VmExit::Interrupted));
        assert_eq!(
            handle_exit(KvmExit::FailEntry { reason: 0x21, cpu: 0 }, &mut r),
            ExitAction::Stop(VmExit::FailEntry { reason: 0x21 })
        );
        assert_eq!(
            handle_exit(KvmExit::SystemEvent { kind: SYSTEM_EVENT_SHUTDOWN }, &mut r),
            ExitAction::Stop(VmExit::Shutdown)
        );
        assert!(matches!(
            handle_exit(KvmExit::SystemEvent { kind: SYSTEM_EVENT_RESET }, &mut r),
            ExitAction::Stop(VmExit::Other(_))
        ));
        assert_eq!(
            handle_exit(KvmExit::Other("KVM_EXIT_DEBUG".into()), &mut r),
            ExitAction::Stop(VmExit::Other("KVM_EXIT_DEBUG".into()))
        );
        assert!(r.log.is_empty());
    }

    #[test]
    fn exits_are_counted_by_kind() {
        let mut c = ExitCounts::default();
        let mut buf = [0u8; 4];
        count_exit(&mut c, &KvmExit::IoOut { port: 0x80, size: 1, data: b"ab" });
        count_exit(&mut c, &KvmExit::IoIn { port: 0x60, size: 1, data: &mut buf });
        count_exit(&mut c, &KvmExit::MmioWrite { addr: 0xfee0_00b0, data: &[0; 4] });
        count_exit(&mut c, &KvmExit::Hlt);
        count_exit(&mut c, &KvmExit::Hlt);
        count_exit(&mut c, &KvmExit::Intr);
        count_exit(&mut c, &KvmExit::InternalError { suberror: 1, data: vec![], insn_bytes: vec![0xcc], rip: 0 });
        count_exit(&mut c, &KvmExit::Other("KVM_EXIT_DEBUG".into()));
        assert_eq!(c.pio_out, 1, "a string out is one exit");
        assert_eq!((c.pio_in, c.mmio_write, c.mmio_read), (1, 1, 0));
        assert_eq!((c.hlt, c.interrupted, c.internal_error, c.other), (2, 1, 1, 1));
        assert_eq!(c.total(), 8);
        assert_eq!(c.to_string(), "1 pio-in, 1 pio-out, 1 mmio-write, 2 hlt, 1 internal-error, 1 interrupted, 1 other");
        assert_eq!(ExitCounts::default().to_string(), "none");
    }

    #[test]
    fn internal_error_carries_instruction() {
        let mut r = Recorder::default();
        let exit = KvmExit::InternalError {
            suberror: 1,
            data: vec![1, 0xf0],
            insn_bytes: vec![0xf0, 0x48, 0x0f, 0xc7, 0x0e],
            rip: 0xffff_ffff_8100_1234,
        };
        assert_eq!(
            handle_exit(exit, &mut r),
            ExitAction::Stop(VmExit::InternalError {
                suberror: 1,
                insn_bytes: vec![0xf0, 0x48, 0x0f, 0xc7, 0x0e],
                rip: 0xffff_ffff_8100_1234
            })
        );
    }
}
