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
use persist::{Persist, PersistError};

use super::config::{PciConfigSpace, PciConfigState, HEADER_TYPE_MULTIFUNCTION, PCI_COMMAND, PCI_STATUS};
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

/// The saved state of a [`PciIntxRouter`]: the level of each INTx line it
/// handed out, in the order it handed them out. The routes are the PIIX's
/// PIRQ registers, saved and restored with the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PciIntxRouterState {
    /// Each line's level.
    pub lines: Vec<bool>,
}

impl PciIntxRouter {
    /// [`Persist::restore`] through a shared reference, as the machine holds
    /// the router (`Arc<PciIntxRouter>`): the state must have one level per
    /// line this router handed out; the ISA lines are driven to match.
    pub fn restore_shared(&self, state: &PciIntxRouterState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.load_state(state);
        Ok(())
    }

    /// Loads a state [`PciIntxRouter::check_state`] passed and drives the ISA lines.
    pub(crate) fn load_state(&self, state: &PciIntxRouterState) {
        let mut s = self.state.lock();
        for (line, &level) in s.lines.iter_mut().zip(&state.lines) {
            line.1 = level;
        }
        self.update(&mut s);
    }

    /// The checks of a restore, changing nothing.
    pub(crate) fn check_state(&self, state: &PciIntxRouterState) -> Result<(), PersistError> {
        PersistError::check_len("PCI INTx router", "lines", state.lines.len(), self.state.lock().lines.len())
    }
}

impl Persist for PciIntxRouter {
    type State = PciIntxRouterState;

    fn save(&self) -> PciIntxRouterState {
        PciIntxRouterState { lines: self.state.lock().lines.iter().map(|&(_, level)| level).collect() }
    }

    fn restore(&mut self, state: &PciIntxRouterState) -> Result<(), PersistError> {
        self.restore_shared(state)
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

/// The saved state of the ISA bridge: its configuration space, the PIRQ
/// route registers included.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct PiixState {
    /// The configuration space.
    pub config: PciConfigState,
}

impl PiixIsaBridge {
    /// The checks of [`Persist::restore`], changing nothing: the
    /// configuration space's (see [`PciConfigSpace`]'s restore), the PIRQ
    /// route registers' reserved bits 6:4, and a fixed Command register.
    pub(crate) fn check_state(&self, state: &PiixState) -> Result<(), PersistError> {
        self.config.check_state(&state.config)?;
        let first = usize::from(PIRQRC_FIRST);
        for (pirq, &value) in state.config.bytes[first..first + NUM_PIRQS].iter().enumerate() {
            PersistError::check(value & !PIRQRC_WRITABLE == 0, "PIIX3 ISA bridge", "config", || {
                format!("PIRQ{} route register is {value:#04x}; bits 6:4 are reserved", (b'A' + pirq as u8) as char)
            })?;
        }
        let command = u16::from_le_bytes([state.config.bytes[PCI_COMMAND], state.config.bytes[PCI_COMMAND + 1]]);
        PersistError::check(command == COMMAND_RESET, "PIIX3 ISA bridge", "config", || {
            format!("Command is {command:#06x}; the bridge's is fixed at {COMMAND_RESET:#06x}")
        })
    }

    /// Loads a state [`PiixIsaBridge::check_state`] passed and routes the
    /// PIRQs as it says.
    pub(crate) fn load_state(&mut self, state: &PiixState) {
        self.config.load_state(&state.config);
        let first = usize::from(PIRQRC_FIRST);
        for pirq in 0..NUM_PIRQS {
            self.router.set_route(pirq, self.config.u8_at(first + pirq));
        }
    }
}

/// Restore checks the configuration space (see [`PciConfigSpace`]'s
/// restore), the PIRQ route registers' reserved bits 6:4 and the fixed
/// Command register, then routes the PIRQs as the registers say; the line
/// levels are the router's state ([`PciIntxRouter`]).
impl Persist for PiixIsaBridge {
    type State = PiixState;

    fn save(&self) -> PiixState {
        PiixState { config: self.config.save() }
    }

    fn restore(&mut self, state: &PiixState) -> Result<(), PersistError> {
        self.check_state(state)?;
        self.load_state(state);
        Ok(())
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

    const CONFIGURED_LINES: [(u8, PciInterruptPin); 3] =
        [(1, PciInterruptPin::IntA), (2, PciInterruptPin::IntA), (3, PciInterruptPin::IntA)];

    /// A bridge routing PIRQA to IRQ 5, PIRQB to 11, PIRQC unrouted and
    /// PIRQD to 10, with chipset registers written, and two devices' lines
    /// asserted (slot 1 INTA on PIRQA, slot 3 INTA on PIRQC).
    fn configured() -> (PiixIsaBridge, Arc<PciIntxRouter>, Vec<Arc<dyn IrqLine>>) {
        let (r, _) = router();
        let mut bridge = PiixIsaBridge::new(r.clone());
        bridge.write_config(0x60, &[0x05, 0x0b, 0x80, 0x0a]);
        bridge.write_config(TOM, &[0x12]);
        bridge.write_config(0xa0, &[0x0c]);
        let lines: Vec<_> = CONFIGURED_LINES.iter().map(|&(slot, pin)| r.intx_line(slot, pin)).collect();
        lines[0].set_level(true);
        lines[2].set_level(true);
        (bridge, r, lines)
    }

    /// A router nobody else holds, with the lines of [`configured`] handed
    /// out (and dropped), routing as `routes` say.
    fn owned_router(routes: [u8; NUM_PIRQS]) -> (PciIntxRouter, Vec<Arc<RecordingIrq>>) {
        let (r, isa) = router();
        for (slot, pin) in CONFIGURED_LINES {
            drop(r.intx_line(slot, pin));
        }
        for (pirq, value) in routes.into_iter().enumerate() {
            r.set_route(pirq, value);
        }
        (Arc::try_unwrap(r).unwrap(), isa)
    }

    #[test]
    fn the_persisted_bridge_round_trips_and_routes_alike() {
        let (bridge, _r, _lines) = configured();
        let (fresh_r, isa) = router();
        let mut fresh = PiixIsaBridge::new(fresh_r.clone());
        let line = fresh_r.intx_line(4, PciInterruptPin::IntA); // PIRQD
        let state = persist::assert_round_trip(&bridge, &mut fresh);
        assert_eq!(&state.config.bytes[0x60..0x64], &[0x05, 0x0b, 0x80, 0x0a]);
        assert_eq!((0..4).map(|p| fresh_r.route(p)).collect::<Vec<_>>(), [Some(5), Some(11), None, Some(10)]);
        assert_eq!(fresh.config().u8_at(TOM), 0x12);
        assert_eq!(fresh.read_config(0x60 / 4), bridge.config().read_dword(0x60 / 4));
        line.set_level(true);
        assert!(isa[10].level(), "PIRQD reaches IRQ 10 as restored");
    }

    #[test]
    fn the_persisted_router_round_trips_and_drives_the_isa_lines() {
        let (_bridge, r, _lines) = configured();
        let (mut fresh, isa) = owned_router([0x05, 0x0b, 0x80, 0x0a]);
        assert!(!isa[5].level());
        let state = persist::assert_round_trip(&*r, &mut fresh);
        assert_eq!(state.lines, [true, false, true]);
        assert!(isa[5].level(), "slot 1 INTA on PIRQA drives IRQ 5 again");
        assert!(!isa[11].level() && !isa[10].level(), "slot 3's PIRQC is unrouted");
        fresh.set_route(2, 0x0e);
        assert!(isa[14].level(), "the restored level follows a new route");
    }

    /// A corruption of a state, and the field whose check must refuse it.
    type Corruption<S> = (&'static str, fn(&mut S));

    #[test]
    fn corrupt_states_are_refused_field_by_field() {
        let (mut bridge, r, _lines) = configured();
        let good = bridge.save();
        let cases: [Corruption<PiixState>; 4] = [
            ("config", |s| s.config.bytes[0x61] = 0x1b),
            ("config", |s| s.config.bytes[0x63] |= 0x40),
            ("config", |s| s.config.bytes[PCI_COMMAND] = 0x03),
            ("bytes", |s| s.config.bytes[0x02] = 0x01), // another device ID
        ];
        for (field, corrupt) in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            let e = persist::assert_refused(&mut bridge, &bad);
            assert_eq!(e.field, field, "{e}");
        }
        assert_eq!(r.route(1), Some(11), "the routes are as they were");
        // A router that handed out another number of lines.
        let (mut other, isa) = owned_router([0x05, 0x80, 0x80, 0x80]);
        let mut levels = r.save();
        levels.lines.push(true);
        assert_eq!(persist::assert_refused(&mut other, &levels).field, "lines");
        levels.lines.truncate(2);
        assert_eq!(persist::assert_refused(&mut other, &levels).field, "lines");
        assert!(!isa[5].level());
    }
}
