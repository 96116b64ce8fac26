//! The PCI-to-ISA bridge at 00:01.0, a PIIX3 look-alike, and its PCI
//! interrupt router.
//!
//! Datasheet: Intel 82371SB PCI-to-ISA/IDE Xcelerator (PIIX3), order number
//! 290550, section 2.2 "PCI to ISA Bridge Configuration Registers (Function
//! 0)": VID 8086h, DID 7000h, class 060100h, header type 80h; IORT (4Ch),
//! XBCS (4Eh), PIRQRC\[A:D\] (60h-63h), TOM (69h), MSTAT (6Ah), MBIRQ0 (70h),
//! MBDMA (76h-77h), PCSC (78h), APICBASE (80h), SMI registers (A0h-AFh).
//!
//! ```text
//! PIRQRC[A-D] (60h-63h), reset 80h
//!   7    IRQROUTEN: 1 = not routed
//!   6:4  reserved (0)
//!   3:0  IRQ: 3-7, 9-12, 14, 15 (0-2, 8 and 13 are reserved)
//! ```
//!
//! PCI INTx lines are wired to PIRQA-D with the usual rotation by slot: pin
//! INTA of slot `s` drives PIRQ[(s - 1) mod 4], INTB the next one, and so
//! on ([`pirq_of`]). The firmware's tables (the DSDT's `_PRT`, the MP
//! table) must describe the same wiring. A PIRQ line is wired-OR: it is
//! asserted while any function on it is.

use std::sync::Arc;

use parking_lot::Mutex;

use super::config::{PciConfigSpace, HEADER_TYPE_MULTIFUNCTION, PCI_COMMAND, PCI_STATUS};
use super::i440fx::INTEL_VENDOR_ID;
use super::{PciAddress, PciDevice, PciInterruptPin};
use crate::irq::IrqLine;

/// Device ID of the PIIX3 ISA bridge.
pub const PIIX3_ISA_DEVICE_ID: u16 = 0x7000;
/// Where the ISA bridge sits.
pub const PIIX_ISA_ADDRESS: PciAddress = PciAddress { bus: 0, device: 1, function: 0 };
/// The first PIRQ route control register (PIRQRCA).
pub const PIRQRC_FIRST: u8 = 0x60;
/// Number of PIRQ lines.
pub const NUM_PIRQS: usize = 4;
/// IRQROUTEN: the PIRQ is not routed.
pub const PIRQ_ROUTE_DISABLED: u8 = 0x80;
/// The IRQ field of a PIRQ route register.
pub const PIRQ_IRQ_MASK: u8 = 0x0f;
/// The bits of a PIRQ route register that exist.
const PIRQRC_WRITABLE: u8 = PIRQ_ROUTE_DISABLED | PIRQ_IRQ_MASK;
/// The ISA IRQs a PIRQ may be routed to.
const ROUTABLE_IRQS: [u8; 11] = [3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15];
/// PIRQA-D routing a machine without a BIOS sets up: IRQ 10 and 11, as
/// SeaBIOS routes them on QEMU's PIIX machines. The MADT gives these IRQs
/// level-triggered, active-high overrides.
pub const DEFAULT_PIRQ_IRQS: [u8; NUM_PIRQS] = [10, 10, 11, 11];

const REVISION: u8 = 0x00;
/// Class code: bridge, ISA bridge.
const CLASS_ISA_BRIDGE: u32 = 0x06_01_00;
/// Command at reset: I/O, memory and bus master always on (0007h).
const COMMAND_RESET: u16 = 0x0007;
/// Status at reset: medium DEVSEL (0200h).
const STATUS_RESET: u16 = 0x0200;

// Chipset registers and their reset values (section 2.2).
const IORT: usize = 0x4c;
const IORT_RESET: u8 = 0x4d;
const XBCS: usize = 0x4e;
const XBCS_RESET: u16 = 0x0003;
const TOM: usize = 0x69;
const TOM_RESET: u8 = 0x02;
const MBIRQ0: usize = 0x70;
const MBIRQ0_RESET: u8 = 0x80;
const MBDMA: usize = 0x76;
const MBDMA_RESET: [u8; 2] = [0x0c, 0x0c];
const PCSC: usize = 0x78;
const PCSC_RESET: u16 = 0x0002;
const SMICNTL: usize = 0xa0;
const SMICNTL_RESET: u8 = 0x08;
const FTMR: usize = 0xa8;
const FTMR_RESET: u8 = 0x0f;
const CHIPSET_FIRST: usize = 0x40;
const CHIPSET_LAST: usize = 0xff;

/// The PIRQ line (0 = PIRQA) INTx pin `pin` of slot `slot` drives.
pub fn pirq_of(slot: u8, pin: PciInterruptPin) -> usize {
    (usize::from(slot) + pin.index() + NUM_PIRQS - 1) % NUM_PIRQS
}

/// The ISA IRQ a PIRQ route register value selects, if it routes at all.
fn routed(value: u8) -> Option<u8> {
    let irq = value & PIRQ_IRQ_MASK;
    (value & PIRQ_ROUTE_DISABLED == 0 && ROUTABLE_IRQS.contains(&irq)).then_some(irq)
}

struct RouterState {
    /// PIRQRC[A-D].
    routes: [u8; NUM_PIRQS],
    /// Each handed-out line: its PIRQ and level.
    lines: Vec<(usize, bool)>,
    /// The ISA IRQs driven high now, bit n for IRQ n.
    driven: u16,
}

/// Turns PCI INTx lines into ISA IRQ lines through PIRQA-D.
pub struct PciIntxRouter {
    state: Mutex<RouterState>,
    /// The interrupt controller's line for each ISA IRQ a PIRQ can reach.
    isa_lines: Vec<(u8, Arc<dyn IrqLine>)>,
}

impl std::fmt::Debug for PciIntxRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("PciIntxRouter")
            .field("routes", &s.routes)
            .field("driven", &format_args!("{:#06x}", s.driven))
            .finish_non_exhaustive()
    }
}

impl PciIntxRouter {
    /// A router with every PIRQ unrouted; `isa_line(irq)` gives the line
    /// for each routable ISA IRQ (for example `intc.irq_line(irq)`).
    pub fn new(isa_line: impl Fn(u8) -> Arc<dyn IrqLine>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(RouterState { routes: [PIRQ_ROUTE_DISABLED; NUM_PIRQS], lines: Vec::new(), driven: 0 }),
            isa_lines: ROUTABLE_IRQS.iter().map(|&irq| (irq, isa_line(irq))).collect(),
        })
    }

    /// A line for INTx pin `pin` of the function in slot `slot`.
    pub fn intx_line(self: &Arc<Self>, slot: u8, pin: PciInterruptPin) -> Arc<dyn IrqLine> {
        let id = {
            let mut s = self.state.lock();
            s.lines.push((pirq_of(slot, pin), false));
            s.lines.len() - 1
        };
        Arc::new(IntxLine { router: Arc::clone(self), id })
    }

    /// Sets PIRQ `pirq`'s route register value (PIRQRC).
    pub fn set_route(&self, pirq: usize, value: u8) {
        let mut s = self.state.lock();
        if let Some(r) = s.routes.get_mut(pirq) {
            *r = value & PIRQRC_WRITABLE;
        }
        self.update(&mut s);
    }

    /// The ISA IRQ PIRQ `pirq` reaches now.
    pub fn route(&self, pirq: usize) -> Option<u8> {
        self.state.lock().routes.get(pirq).copied().and_then(routed)
    }

    fn set_line(&self, id: usize, level: bool) {
        let mut s = self.state.lock();
        if let Some(line) = s.lines.get_mut(id) {
            line.1 = level;
        }
        self.update(&mut s);
    }

    /// Drives each ISA IRQ to the OR of the PIRQs routed to it.
    fn update(&self, s: &mut RouterState) {
        let mut asserted = [false; NUM_PIRQS];
        for &(pirq, level) in &s.lines {
            asserted[pirq] |= level;
        }
        let mut want = 0u16;
        for (pirq, &on) in asserted.iter().enumerate() {
            if let (true, Some(irq)) = (on, routed(s.routes[pirq])) {
                want |= 1 << irq;
            }
        }
        let changed = want ^ s.driven;
        s.driven = want;
        for (irq, line) in &self.isa_lines {
            if changed & (1 << irq) != 0 {
                line.set_level(want & (1 << irq) != 0);
            }
        }
    }
}

/// One function's INTx pin.
struct IntxLine {
    router: Arc<PciIntxRouter>,
    id: usize,
}

impl IrqLine for IntxLine {
    fn set_level(&self, level: bool) {
        self.router.set_line(self.id, level);
    }
}

/// The PIIX3 ISA bridge (function 0).
pub struct PiixIsaBridge {
    config: PciConfigSpace,
    router: Arc<PciIntxRouter>,
}

impl std::fmt::Debug for PiixIsaBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiixIsaBridge").field("router", &self.router).finish_non_exhaustive()
    }
}

impl PiixIsaBridge {
    /// The bridge in its reset state (every PIRQ unrouted), driving `router`.
    pub fn new(router: Arc<PciIntxRouter>) -> Self {
        let mut config = PciConfigSpace::new(INTEL_VENDOR_ID, PIIX3_ISA_DEVICE_ID, CLASS_ISA_BRIDGE, REVISION);
        // The real part is multi-function (IDE at 01.1, USB at 01.2).
        config.set_header_type(HEADER_TYPE_MULTIFUNCTION);
        config.set_u16(PCI_COMMAND, COMMAND_RESET);
        config.set_writable(PCI_COMMAND, &[0, 0]);
        config.set_u16(PCI_STATUS, STATUS_RESET);
        config.set_writable(CHIPSET_FIRST, &[0xff; CHIPSET_LAST - CHIPSET_FIRST + 1]);
        config.set_writable(usize::from(PIRQRC_FIRST), &[PIRQRC_WRITABLE; NUM_PIRQS]);
        config.set_u8(IORT, IORT_RESET);
        config.set_u16(XBCS, XBCS_RESET);
        config.set_bytes(usize::from(PIRQRC_FIRST), &[PIRQ_ROUTE_DISABLED; NUM_PIRQS]);
        config.set_u8(TOM, TOM_RESET);
        config.set_u8(MBIRQ0, MBIRQ0_RESET);
        config.set_bytes(MBDMA, &MBDMA_RESET);
        config.set_u16(PCSC, PCSC_RESET);
        config.set_u8(SMICNTL, SMICNTL_RESET);
        config.set_u8(FTMR, FTMR_RESET);
        for pirq in 0..NUM_PIRQS {
            router.set_route(pirq, PIRQ_ROUTE_DISABLED);
        }
        Self { config, router }
    }

    /// Routes PIRQ `pirq` to ISA IRQ `irq` (`None` unroutes it), as a BIOS does.
    pub fn set_pirq_route(&mut self, pirq: usize, irq: Option<u8>) {
        let value = irq.map_or(PIRQ_ROUTE_DISABLED, |i| i & PIRQ_IRQ_MASK);
        self.write_config(usize::from(PIRQRC_FIRST) + pirq, &[value]);
    }

    /// The router this bridge programs.
    pub fn router(&self) -> &Arc<PciIntxRouter> {
        &self.router
    }
}

impl PciDevice for PiixIsaBridge {
    fn debug_label(&self) -> String {
        "PIIX3 ISA bridge".to_string()
    }

    fn config(&self) -> &PciConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let first = usize::from(PIRQRC_FIRST);
        for pirq in 0..NUM_PIRQS {
            if (offset..offset + data.len()).contains(&(first + pirq)) {
                self.router.set_route(pirq, self.config.u8_at(first + pirq));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::RecordingIrq;

    fn router() -> (Arc<PciIntxRouter>, Vec<Arc<RecordingIrq>>) {
        let lines: Vec<Arc<RecordingIrq>> = (0..16).map(|_| Arc::new(RecordingIrq::new())).collect();
        let l = lines.clone();
        let r = PciIntxRouter::new(move |irq| l[usize::from(irq)].clone() as Arc<dyn IrqLine>);
        (r, lines)
    }

    #[test]
    fn swizzle_rotates_pins_by_slot() {
        assert_eq!(pirq_of(1, PciInterruptPin::IntA), 0);
        assert_eq!(pirq_of(2, PciInterruptPin::IntA), 1);
        assert_eq!(pirq_of(3, PciInterruptPin::IntA), 2);
        assert_eq!(pirq_of(4, PciInterruptPin::IntA), 3);
        assert_eq!(pirq_of(5, PciInterruptPin::IntA), 0);
        assert_eq!(pirq_of(3, PciInterruptPin::IntB), 3);
        assert_eq!(pirq_of(0, PciInterruptPin::IntA), 3);
    }

    #[test]
    fn bridge_registers_and_routing() {
        let (r, lines) = router();
        let mut bridge = PiixIsaBridge::new(r.clone());
        assert_eq!(bridge.read_config(0), 0x7000_8086);
        assert_eq!(bridge.read_config(2), 0x0601_0000);
        assert_eq!(bridge.config().u8_at(0x0e), 0x80);
        assert_eq!(bridge.read_config(0x60 / 4), 0x8080_8080);
        assert_eq!(bridge.config().u8_at(TOM), TOM_RESET);
        bridge.write_config(0x60, &[0xff, 0x0b, 0x70, 0x0a]);
        assert_eq!(bridge.read_config(0x60 / 4), 0x0a00_0b8f, "reserved bits stay 0");
        assert_eq!(r.route(0), None);
        assert_eq!(r.route(1), Some(11));
        assert_eq!(r.route(2), None, "IRQ0 is not routable");
        assert_eq!(r.route(3), Some(10));
        let dev = r.intx_line(3, PciInterruptPin::IntB); // PIRQD
        dev.set_level(true);
        assert!(lines[10].level());
        dev.set_level(false);
        assert!(!lines[10].level());
        bridge.write_config(PCI_COMMAND, &[0, 0]);
        assert_eq!(bridge.config().command(), COMMAND_RESET, "command is fixed");
        assert_eq!(bridge.debug_label(), "PIIX3 ISA bridge");
        assert!(format!("{bridge:?}").contains("routes"));
    }

    #[test]
    fn shared_pirqs_are_wired_or_and_follow_rerouting() {
        let (r, lines) = router();
        let mut bridge = PiixIsaBridge::new(r.clone());
        for (pirq, irq) in DEFAULT_PIRQ_IRQS.iter().enumerate() {
            bridge.set_pirq_route(pirq, Some(*irq));
        }
        let a = r.intx_line(1, PciInterruptPin::IntA); // PIRQA -> 10
        let b = r.intx_line(5, PciInterruptPin::IntA); // PIRQA -> 10
        let c = r.intx_line(3, PciInterruptPin::IntA); // PIRQC -> 11
        a.set_level(true);
        b.set_level(true);
        a.set_level(false);
        assert!(lines[10].level(), "b still holds PIRQA");
        c.set_level(true);
        assert!(lines[11].level());
        bridge.set_pirq_route(0, Some(5));
        assert!(!lines[10].level());
        assert!(lines[5].level(), "the asserted PIRQ follows its new route");
        bridge.set_pirq_route(0, None);
        assert!(!lines[5].level());
        b.set_level(false);
        assert_eq!(lines[10].raises(), 1);
        assert_eq!(r.route(7), None);
        r.set_route(9, 3);
    }
}
