//! ACPI fixed hardware: the PM1a event and control blocks, the PM timer, the
//! SCI, and the reset register at 0xCF9.
//!
//! References: ACPI 6.5 section 4.8 "ACPI Hardware Features": 4.8.3.1 PM1
//! event grouping (Table 4.13 PM1 status bits, Table 4.14 PM1 enable bits),
//! 4.8.3.2 PM1 control (Table 4.15: SCI_EN, SLP_TYPx, SLP_EN), 4.8.3.3 the
//! power management timer (24 bits at 3.579545 MHz, TMR_STS when bit 23
//! toggles), and 4.8.3.6 the reset register. The reset register's bits are
//! the PIIX3/PIIX4 "Reset Control Register" at 0xCF9 (82371SB datasheet
//! 290550, RC: SYS_RST bit 1, RST_CPU bit 2, FULL_RST bit 3).
//!
//! The block sits where the PIIX4 PM function's PMBA puts it
//! ([`crate::pci::piix4_pm`]; 0xB000 as firmware programs it):
//!
//! ```text
//! offset  width  register        the FADT names it
//! 0x00    16     PM1a_STS        PM1a_EVT_BLK (length 4)
//! 0x02    16     PM1a_EN
//! 0x04    16     PM1a_CNT        PM1a_CNT_BLK (length 2)
//! 0x08    32     PM_TMR          PM_TMR_BLK (length 4), 24-bit value
//! 0x0C-0x3F      the PIIX4's general-purpose and device registers: read 0
//! port 0xCF9  8  reset control   RESET_REG, RESET_VALUE 0x06
//!
//! PM1_STS  15 WAK | 10 RTC | 9 SLPBTN | 8 PWRBTN | 5 GBL | 4 BM | 0 TMR  (write 1 to clear)
//! PM1_EN        10 RTC | 9 SLPBTN | 8 PWRBTN | 5 GBL | 0 TMR
//! PM1_CNT  13 SLP_EN (write-only) | 12:10 SLP_TYP | 2 GBL_RLS | 1 BM_RLD | 0 SCI_EN
//! ```
//!
//! The machine has no SMM, so the FADT's SMI_CMD is 0 and the hardware is
//! always in ACPI mode: SCI_EN reads 1 and cannot be cleared. Writing
//! SLP_EN with SLP_TYP = [`SLP_TYP_S5`] (the DSDT's `\_S5` value) powers the
//! machine off; other sleep states are not supported and are ignored.

use std::sync::Arc;

use persist::{Persist, PersistError};

use crate::bus::BusDevice;
use crate::clock::{ns_for_ticks, ticks_in, SharedClock, Timed};
use crate::irq::IrqLine;
use crate::log_once::{LogOnce, Misuse};
use crate::power::{VmEvent, VmEvents};

/// The registers this model has, from PM1a_EVT_BLK to the end of
/// PM_TMR_BLK; the rest of the 64-byte block
/// ([`crate::pci::piix4_pm::PM_IO_LEN`]) reads 0.
pub const ACPI_PM_LEN: u64 = 0x0c;
/// PM1a_EVT_BLK's offset in the block, for the FADT.
pub const PM1A_EVT_OFFSET: u16 = 0x0;
/// PM1_EVT_LEN for the FADT.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a_CNT_BLK's offset in the block, for the FADT.
pub const PM1A_CNT_OFFSET: u16 = 0x4;
/// PM1_CNT_LEN for the FADT.
pub const PM1_CNT_LEN: u8 = 2;
/// PM_TMR_BLK's offset in the block, for the FADT.
pub const PM_TMR_OFFSET: u16 = 0x8;
/// PM_TMR_LEN for the FADT.
pub const PM_TMR_LEN: u8 = 4;
/// SCI_INT for the FADT (an ISA IRQ, level-triggered, active high in the MADT).
pub const SCI_IRQ: u32 = 9;
/// The PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The SLP_TYP value of S5, the PIIX4's soft off (82371AB datasheet,
/// PMCNTRL SUS_TYP 000b), as the DSDT's `\_S5` package gives it and as
/// OVMF writes it on this chipset.
pub const SLP_TYP_S5: u16 = 0;
/// The reset register's port (FADT RESET_REG, system I/O space, 8 bits).
pub const RESET_REG_PORT: u16 = 0xcf9;
/// The value the FADT tells the OS to write (RESET_VALUE): SYS_RST | RST_CPU.
pub const RESET_VALUE: u8 = 0x06;

// Register offsets in the block.
const PM1_STS: u64 = 0x0;
const PM1_EN: u64 = 0x2;
const PM1_CNT: u64 = 0x4;
const PM_TMR: u64 = 0x8;

// PM1 status and enable bits.
const TMR_STS: u16 = 1 << 0;
const BM_STS: u16 = 1 << 4;
const GBL_STS: u16 = 1 << 5;
const PWRBTN_STS: u16 = 1 << 8;
const SLPBTN_STS: u16 = 1 << 9;
const RTC_STS: u16 = 1 << 10;
const WAK_STS: u16 = 1 << 15;
const STS_CLEARABLE: u16 = TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS | WAK_STS;
/// Status bits that raise the SCI when enabled (the enable bit sits at the same position).
const SCI_SOURCES: u16 = TMR_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS;
const EN_WRITABLE: u16 = SCI_SOURCES;

// PM1 control bits.
const SCI_EN: u16 = 1 << 0;
const BM_RLD: u16 = 1 << 1;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
const SLP_EN: u16 = 1 << 13;
const CNT_WRITABLE: u16 = BM_RLD | SLP_TYP_MASK;

/// The PM timer's width.
const TMR_MASK: u64 = 0x00ff_ffff;
/// TMR_STS is set each time this bit of the counter toggles.
const TMR_STS_BIT: u32 = 23;

// Reset control register.
const RC_SYS_RST: u8 = 1 << 1;
const RC_RST_CPU: u8 = 1 << 2;
const RC_FULL_RST: u8 = 1 << 3;
const RC_KEPT: u8 = RC_SYS_RST | RC_FULL_RST;

/// The state of the PM registers, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AcpiPmState {
    /// PM1_STS.
    pub status: u16,
    /// PM1_EN.
    pub enable: u16,
    /// PM1_CNT (SCI_EN included).
    pub control: u16,
    /// Clock time TMR_STS was last evaluated at.
    pub checked_ns: u64,
}

/// The PM1a event and control blocks and the PM timer.
pub struct AcpiPm {
    s: AcpiPmState,
    clock: SharedClock,
    sci: Arc<dyn IrqLine>,
    sci_level: bool,
    events: Arc<VmEvents>,
    log: LogOnce,
}

impl std::fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPm").field("state", &self.s).finish_non_exhaustive()
    }
}

impl AcpiPm {
    /// The PM registers after reset, raising the SCI on `sci` and filing
    /// power-off with `events`.
    pub fn new(clock: SharedClock, sci: Arc<dyn IrqLine>, events: Arc<VmEvents>) -> Self {
        let now = clock.now_ns();
        Self {
            s: AcpiPmState { status: 0, enable: 0, control: SCI_EN, checked_ns: now },
            clock,
            sci,
            sci_level: false,
            events,
            log: LogOnce::new(),
        }
    }

    /// The PM timer's value at `now`.
    pub fn timer(&self, now: u64) -> u32 {
        (ticks_in(now, PM_TIMER_HZ) & TMR_MASK) as u32
    }

    /// The power button was pressed (by the host, to ask for a clean shutdown).
    pub fn power_button(&mut self) {
        self.s.status |= PWRBTN_STS;
        self.update_sci();
    }

    fn advance(&mut self, now: u64) {
        let last = self.s.checked_ns;
        if now <= last {
            return;
        }
        self.s.checked_ns = now;
        if ticks_in(now, PM_TIMER_HZ) >> TMR_STS_BIT != ticks_in(last, PM_TIMER_HZ) >> TMR_STS_BIT {
            self.s.status |= TMR_STS;
        }
        self.update_sci();
    }

    fn update_sci(&mut self) {
        let level = self.s.control & SCI_EN != 0 && self.s.status & self.s.enable & SCI_SOURCES != 0;
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set_level(level);
        }
    }

    fn sleep(&mut self, slp_typ: u16) {
        if slp_typ == SLP_TYP_S5 {
            tracing::info!(target: "devices", "guest entered ACPI S5 (soft off)");
            self.events.request(VmEvent::PowerOff);
        } else if self.log.first(Misuse::BadValue) {
            tracing::warn!(target: "devices", slp_typ, "ACPI: only S5 (SLP_TYP 0, soft off) is supported; sleep request ignored (logged once)");
        }
    }

    /// The bytes of the 12-byte block at `now`.
    fn image(&self, now: u64) -> [u8; 12] {
        let mut b = [0u8; 12];
        let mut put = |at: u64, bytes: &[u8]| {
            let at = at as usize;
            b[at..at + bytes.len()].copy_from_slice(bytes);
        };
        put(PM1_STS, &self.s.status.to_le_bytes());
        put(PM1_EN, &self.s.enable.to_le_bytes());
        put(PM1_CNT, &(self.s.control & !SLP_EN).to_le_bytes());
        put(PM_TMR, &self.timer(now).to_le_bytes());
        b
    }

    /// The value and byte mask an access puts into the 16-bit register at `reg`.
    fn gather(reg: u64, offset: u64, data: &[u8]) -> (u16, u16) {
        let mut value = 0u16;
        let mut mask = 0u16;
        for (i, &byte) in data.iter().enumerate() {
            let at = offset + i as u64;
            if (reg..reg + 2).contains(&at) {
                let shift = 8 * (at - reg);
                value |= u16::from(byte) << shift;
                mask |= 0xff << shift;
            }
        }
        (value, mask)
    }

    fn log_unimplemented(&self, offset: u64) {
        if self.log.first(Misuse::Unimplemented) {
            tracing::warn!(target: "devices", offset, "ACPI PM: the block's registers past PM_TMR are not modelled; they read 0 and ignore writes (logged once)");
        }
    }

    fn log_access(&self, offset: u64, size: usize) {
        if self.log.first(Misuse::AccessSize) {
            tracing::warn!(target: "devices", offset, size, "ACPI PM: accesses are 1, 2 or 4 bytes inside the block; ignored (logged once)");
        }
    }
}

/// The part name the PM block's errors carry.
const PART: &str = "ACPI PM";

/// Fails unless `value` sets only bits of `allowed`.
fn check_bits(part: &'static str, field: &'static str, value: u16, allowed: u16) -> Result<(), PersistError> {
    PersistError::check(value & !allowed == 0, part, field, || {
        format!("is {value:#06x}, with bits outside {allowed:#06x} set")
    })
}

/// Restore refuses status, enable and control bits the block does not
/// have, and a control word without SCI_EN (the hardware is always in ACPI
/// mode); then it drives the SCI from the status and enable bits.
impl Persist for AcpiPm {
    type State = AcpiPmState;

    fn save(&self) -> AcpiPmState {
        self.s
    }

    fn restore(&mut self, state: &AcpiPmState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl AcpiPm {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &AcpiPmState) -> Result<(), PersistError> {
        check_bits(PART, "status", state.status, STS_CLEARABLE)?;
        check_bits(PART, "enable", state.enable, EN_WRITABLE)?;
        check_bits(PART, "control", state.control, CNT_WRITABLE | SCI_EN)?;
        PersistError::check(state.control & SCI_EN != 0, PART, "control", || {
            format!("is {:#06x}; SCI_EN is hardwired to 1", state.control)
        })
    }

    /// Loads a state [`AcpiPm::check_state`] passed and drives the SCI.
    pub(crate) fn load_state(&mut self, state: &AcpiPmState) {
        self.s = *state;
        self.sci_level = self.s.status & self.s.enable & SCI_SOURCES != 0;
        self.sci.set_level(self.sci_level);
    }
}

impl Timed for AcpiPm {
    fn next_deadline_ns(&self) -> Option<u64> {
        if self.s.enable & TMR_STS == 0 || self.sci_level {
            return None;
        }
        let next = (ticks_in(self.s.checked_ns, PM_TIMER_HZ) >> TMR_STS_BIT) + 1;
        Some(ns_for_ticks(next << TMR_STS_BIT, PM_TIMER_HZ))
    }

    fn tick(&mut self, now_ns: u64) {
        self.advance(now_ns);
    }
}

impl BusDevice for AcpiPm {
    fn debug_label(&self) -> String {
        "ACPI PM".to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let fits = offset.checked_add(data.len() as u64).is_some_and(|end| end <= ACPI_PM_LEN);
        if matches!(data.len(), 1 | 2 | 4) && offset >= ACPI_PM_LEN {
            self.log_unimplemented(offset);
            data.fill(0);
            return;
        }
        if !matches!(data.len(), 1 | 2 | 4) || !fits {
            self.log_access(offset, data.len());
            data.fill(0xff);
            return;
        }
        let now = self.clock.now_ns();
        self.advance(now);
        let image = self.image(now);
        let start = offset as usize;
        data.copy_from_slice(&image[start..start + data.len()]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let fits = offset.checked_add(data.len() as u64).is_some_and(|end| end <= ACPI_PM_LEN);
        if matches!(data.len(), 1 | 2 | 4) && offset >= ACPI_PM_LEN {
            self.log_unimplemented(offset);
            return;
        }
        if !matches!(data.len(), 1 | 2 | 4) || !fits {
            self.log_access(offset, data.len());
            return;
        }
        let now = self.clock.now_ns();
        self.advance(now);
        let (sts, sts_mask) = Self::gather(PM1_STS, offset, data);
        self.s.status &= !(sts & sts_mask & STS_CLEARABLE);
        let (en, en_mask) = Self::gather(PM1_EN, offset, data);
        self.s.enable = (self.s.enable & !en_mask) | (en & en_mask & EN_WRITABLE);
        let (cnt, cnt_mask) = Self::gather(PM1_CNT, offset, data);
        let keep = !(cnt_mask & CNT_WRITABLE);
        self.s.control = (self.s.control & keep) | (cnt & cnt_mask & CNT_WRITABLE) | SCI_EN;
        if cnt & cnt_mask & SLP_EN != 0 {
            self.sleep((self.s.control & SLP_TYP_MASK) >> SLP_TYP_SHIFT);
        }
        // PM_TMR is read-only: the bytes of a write that reach it are dropped.
        self.update_sci();
    }
}

/// The state of the reset control register, for save and restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ResetControlState {
    /// SYS_RST and FULL_RST as last written.
    pub value: u8,
}

/// The reset control register at 0xCF9. A write with RST_CPU set resets the
/// machine (RST_CPU reads back 0, so every such write is a 0-to-1 edge).
pub struct ResetControl {
    value: u8,
    events: Arc<VmEvents>,
    log: LogOnce,
}

impl std::fmt::Debug for ResetControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResetControl").field("value", &self.value).finish_non_exhaustive()
    }
}

impl ResetControl {
    /// The register, filing resets with `events`.
    pub fn new(events: Arc<VmEvents>) -> Self {
        Self { value: 0, events, log: LogOnce::new() }
    }
}

/// Restore refuses bits other than SYS_RST and FULL_RST (RST_CPU reads 0);
/// it files no reset.
impl Persist for ResetControl {
    type State = ResetControlState;

    fn save(&self) -> ResetControlState {
        ResetControlState { value: self.value }
    }

    fn restore(&mut self, state: &ResetControlState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }
}

impl ResetControl {
    /// The checks of [`Persist::restore`], changing nothing.
    pub(crate) fn check_state(state: &ResetControlState) -> Result<(), PersistError> {
        PersistError::check(state.value & !RC_KEPT == 0, "reset control (0xcf9)", "value", || {
            format!("is {:#04x}; only SYS_RST and FULL_RST are kept", state.value)
        })
    }

    /// Loads a state [`ResetControl::check_state`] passed.
    pub(crate) fn load_state(&mut self, state: &ResetControlState) {
        self.value = state.value;
    }
}

impl BusDevice for ResetControl {
    fn debug_label(&self) -> String {
        "reset control (0xcf9)".to_string()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match data {
            [byte] => *byte = self.value,
            _ => {
                if self.log.first(Misuse::AccessSize) {
                    tracing::warn!(target: "devices", offset, size = data.len(), "reset control register is one byte; access ignored (logged once)");
                }
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[value] = data else {
            if self.log.first(Misuse::AccessSize) {
                tracing::warn!(target: "devices", offset, size = data.len(), "reset control register is one byte; access ignored (logged once)");
            }
            return;
        };
        self.value = value & RC_KEPT;
        if value & RC_RST_CPU != 0 {
            let kind = if value & RC_FULL_RST != 0 {
                "full"
            } else if value & RC_SYS_RST != 0 {
                "hard"
            } else {
                "soft"
            };
            tracing::info!(target: "devices", kind, "guest reset the machine through 0xcf9");
            self.events.request(VmEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::irq::RecordingIrq;

    struct Rig {
        clock: Arc<ManualClock>,
        sci: Arc<RecordingIrq>,
        events: Arc<VmEvents>,
        pm: AcpiPm,
    }

    impl Rig {
        fn new() -> Self {
            let clock = Arc::new(ManualClock::new(0));
            let sci = Arc::new(RecordingIrq::new());
            let events = Arc::new(VmEvents::new());
            let pm = AcpiPm::new(clock.clone(), sci.clone(), events.clone());
            Self { clock, sci, events, pm }
        }
        fn inw(&mut self, off: u64) -> u16 {
            let mut d = [0u8; 2];
            self.pm.read(off, &mut d);
            u16::from_le_bytes(d)
        }
        fn outw(&mut self, off: u64, v: u16) {
            self.pm.write(off, &v.to_le_bytes());
        }
        fn inl(&mut self, off: u64) -> u32 {
            let mut d = [0u8; 4];
            self.pm.read(off, &mut d);
            u32::from_le_bytes(d)
        }
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz_and_wraps_at_24_bits() {
        let mut r = Rig::new();
        assert_eq!(r.inl(PM_TMR), 0);
        r.clock.set(1_000_000_000);
        assert_eq!(r.inl(PM_TMR), 3_579_545);
        r.clock.set(ns_for_ticks(1 << 24, PM_TIMER_HZ));
        assert_eq!(r.inl(PM_TMR), 0, "24-bit wrap");
        let mut b = [0u8];
        r.pm.read(PM_TMR + 2, &mut b);
        assert_eq!(b, [0]);
        r.pm.write(PM_TMR, &[1, 2, 3, 4]);
        assert_eq!(r.inl(PM_TMR), 0, "read-only");
    }

    #[test]
    fn timer_overflow_raises_the_sci_when_enabled() {
        let mut r = Rig::new();
        assert_eq!(r.pm.next_deadline_ns(), None);
        r.outw(PM1_EN, TMR_STS);
        let deadline = r.pm.next_deadline_ns().unwrap();
        assert_eq!(deadline, ns_for_ticks(1 << 23, PM_TIMER_HZ));
        r.clock.set(deadline - 1);
        r.pm.tick(deadline - 1);
        assert!(!r.sci.level());
        r.clock.set(deadline);
        r.pm.tick(deadline);
        assert!(r.sci.level());
        assert_eq!(r.inw(PM1_STS) & TMR_STS, TMR_STS);
        assert_eq!(r.pm.next_deadline_ns(), None, "SCI already up");
        r.outw(PM1_STS, TMR_STS);
        assert!(!r.sci.level());
        assert_eq!(r.inw(PM1_STS), 0);
    }

    #[test]
    fn status_is_write_one_to_clear_and_enable_is_masked() {
        let mut r = Rig::new();
        r.pm.power_button();
        assert_eq!(r.inw(PM1_STS), PWRBTN_STS);
        assert!(!r.sci.level(), "not enabled");
        r.outw(PM1_EN, 0xffff);
        assert_eq!(r.inw(PM1_EN), EN_WRITABLE);
        assert!(r.sci.level());
        r.outw(PM1_STS, 0);
        assert_eq!(r.inw(PM1_STS), PWRBTN_STS, "writing 0 clears nothing");
        r.pm.write(PM1_STS + 1, &[0x01]);
        assert_eq!(r.inw(PM1_STS), 0, "byte write to the high half");
        assert!(!r.sci.level());
        // A dword write covers status and enable at once.
        r.pm.power_button();
        r.pm.write(PM1_STS, &[0x00, 0x01, 0x00, 0x00]);
        assert_eq!(r.inl(PM1_STS), 0);
    }

    #[test]
    fn sci_en_is_hardwired_and_s5_powers_off() {
        let mut r = Rig::new();
        assert_eq!(r.inw(PM1_CNT), SCI_EN);
        r.outw(PM1_CNT, 0);
        assert_eq!(r.inw(PM1_CNT), SCI_EN);
        r.outw(PM1_CNT, 3 << SLP_TYP_SHIFT | SLP_EN);
        assert!(!r.events.pending(), "S3 is not supported");
        assert_eq!(r.inw(PM1_CNT), SCI_EN | 3 << SLP_TYP_SHIFT, "SLP_EN reads 0");
        r.outw(PM1_CNT, SLP_TYP_S5 << SLP_TYP_SHIFT);
        assert!(!r.events.pending(), "SLP_TYP alone does nothing");
        r.pm.write(PM1_CNT + 1, &[((SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN) >> 8) as u8]);
        assert_eq!(r.events.take(), Some(VmEvent::PowerOff));
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let mut r = Rig::new();
        let mut d = [0u8; 3];
        r.pm.read(0, &mut d);
        assert_eq!(d, [0xff; 3]);
        let mut q = [0u8; 4];
        r.pm.read(10, &mut q);
        assert_eq!(q, [0xff; 4], "runs past the block");
        r.pm.write(10, &[0xff; 4]);
        r.pm.write(0, &[0xff; 3]);
        assert_eq!(r.inw(6), 0, "the gap reads 0");
        let mut past = [0xaau8; 4];
        r.pm.read(0x0c, &mut past);
        assert_eq!(past, [0; 4], "the block's registers past PM_TMR read 0");
        r.pm.write(0x3c, &[0xff; 4]);
        assert!(format!("{:?}", r.pm).contains("AcpiPm"));
    }

    #[test]
    fn state_round_trips() {
        let mut r = Rig::new();
        r.outw(PM1_EN, PWRBTN_STS);
        r.pm.power_button();
        let state = r.pm.save();
        let sci = Arc::new(RecordingIrq::new());
        let mut other = AcpiPm::new(r.clock.clone(), sci.clone(), r.events.clone());
        other.restore(&state).unwrap();
        assert_eq!(other.save(), state);
        assert!(sci.level());
        assert_eq!(other.debug_label(), "ACPI PM");
        assert_eq!(r.clock.now_ns(), 0);
    }

    #[test]
    fn reset_register() {
        let events = Arc::new(VmEvents::new());
        let mut rc = ResetControl::new(events.clone());
        rc.write(0, &[RC_SYS_RST]);
        assert!(!events.pending(), "SYS_RST alone only selects the kind");
        let mut b = [0u8];
        rc.read(0, &mut b);
        assert_eq!(b, [RC_SYS_RST]);
        rc.write(0, &[RESET_VALUE]);
        assert_eq!(events.take(), Some(VmEvent::Reset));
        rc.write(0, &[0x0e]);
        assert_eq!(events.take(), Some(VmEvent::Reset));
        rc.read(0, &mut b);
        assert_eq!(b, [RC_SYS_RST | RC_FULL_RST], "RST_CPU reads 0");
        rc.write(0, &[4, 4]);
        assert!(!events.pending());
        let mut w = [0u8; 2];
        rc.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
        let s = rc.save();
        let mut other = ResetControl::new(events);
        other.restore(&s).unwrap();
        assert_eq!(other.save(), s);
        assert_eq!(other.debug_label(), "reset control (0xcf9)");
    }

    /// PM1 with the timer and power button enabled, the power button
    /// pressed, a sleep type written and time gone by.
    fn configured() -> Rig {
        let mut r = Rig::new();
        r.outw(PM1_EN, TMR_STS | PWRBTN_STS | RTC_STS);
        r.outw(PM1_CNT, 3 << SLP_TYP_SHIFT | BM_RLD);
        r.clock.set(ns_for_ticks(3 << 23, PM_TIMER_HZ) + 5);
        r.pm.tick(r.clock.now_ns());
        r.pm.power_button();
        assert!(r.sci.level());
        r
    }

    #[test]
    fn the_persisted_pm_state_round_trips_and_the_copy_behaves_alike() {
        let mut r = configured();
        let mut fresh = Rig::new();
        fresh.clock.set(r.clock.now_ns());
        let state = persist::assert_round_trip(&r.pm, &mut fresh.pm);
        assert_eq!(state.status, TMR_STS | PWRBTN_STS);
        assert!(fresh.sci.level(), "the SCI follows the restored bits");
        assert_eq!(fresh.pm.next_deadline_ns(), r.pm.next_deadline_ns());
        for off in [PM1_STS, PM1_EN, PM1_CNT, PM_TMR] {
            assert_eq!(fresh.inw(off), r.inw(off), "offset {off}");
        }
        for rig in [&mut r, &mut fresh] {
            rig.outw(PM1_STS, PWRBTN_STS | TMR_STS);
        }
        assert!(!fresh.sci.level());
        let next = fresh.pm.next_deadline_ns().unwrap();
        assert_eq!(Some(next), r.pm.next_deadline_ns());
        for rig in [&mut r, &mut fresh] {
            rig.clock.set(next);
            rig.pm.tick(next);
        }
        assert!(fresh.sci.level() && r.sci.level(), "the next timer overflow for both");
    }

    /// A corruption of a state, and the field whose check must refuse it.
    type Corruption<S> = (&'static str, fn(&mut S));

    #[test]
    fn corrupt_pm_states_are_refused_field_by_field() {
        let mut r = configured();
        let good = r.pm.save();
        let cases: [Corruption<AcpiPmState>; 5] = [
            ("status", |s| s.status |= 1 << 1),
            ("enable", |s| s.enable |= BM_STS),
            ("control", |s| s.control |= SLP_EN),
            ("control", |s| s.control &= !SCI_EN),
            ("control", |s| s.control |= 1 << 15),
        ];
        for (field, corrupt) in cases {
            let mut bad = good;
            corrupt(&mut bad);
            let e = persist::assert_refused(&mut r.pm, &bad);
            assert_eq!(e.field, field, "{e}");
        }
        assert!(r.sci.level(), "a refused restore leaves the SCI alone");
    }

    #[test]
    fn the_reset_register_round_trips_and_refuses_rst_cpu() {
        let events = Arc::new(VmEvents::new());
        let mut rc = ResetControl::new(events.clone());
        rc.write(0, &[RC_SYS_RST | RC_FULL_RST]);
        let mut fresh = ResetControl::new(events.clone());
        let state = persist::assert_round_trip(&rc, &mut fresh);
        assert_eq!(state.value, RC_SYS_RST | RC_FULL_RST);
        let mut b = [0u8];
        fresh.read(0, &mut b);
        assert_eq!(b, [RC_SYS_RST | RC_FULL_RST]);
        assert!(!events.pending(), "a restore files no reset");
        for bad in [RC_RST_CPU, RC_SYS_RST | 0x10, 0x01] {
            let e = persist::assert_refused(&mut fresh, &ResetControlState { value: bad });
            assert_eq!(e.field, "value");
        }
    }
}
