//! Time as the device models see it.
//!
//! Every timer device (PIT, RTC, local APIC timer, ACPI PM timer) reads the
//! time from a [`Clock`]: nanoseconds since an arbitrary origin, monotonic and
//! shared by all devices of a machine. [`HostClock`] follows the host's
//! monotonic clock; [`ManualClock`] moves only when told, for tests and for a
//! deterministic mode that derives time from the instruction count.
//!
//! Devices never run threads or host timers. Each timer device answers two
//! questions through [`Timed`]:
//! - `next_deadline_ns()`: when it next needs attention (an interrupt edge, a
//!   periodic flag), or `None` when nothing is armed;
//! - `tick(now_ns)`: catch up with the time, raising whatever interrupts fell due.
//!
//! Register reads compute counters from the clock directly, so a guest that
//! polls a counter never depends on `tick`. The machine's run loop calls
//! [`Timers::poll`] between CPU slices and sleeps in HLT until the earliest
//! deadline it returns, so an idle guest costs nothing.
//!
//! Saved state. Device states hold times as nanoseconds of the machine's
//! clock (guest time), never host instants. The clock itself saves the
//! guest time it has reached ([`Clock::save_time`]) and, on restore, goes on
//! from it ([`Clock::resume_at`]): a [`HostClock`] keeps an offset from the
//! host's monotonic clock for that, so a state saved in one process means
//! the same in another. Restore the clock before the devices. [`Tsc`] saves
//! its rate and its offset from the clock.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use persist::{Persist, PersistError};

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The latest guest time a saved state may hold: 2^63 - 1 ns (292 years).
/// Later times are refused as corrupt; they also keep the signed offsets
/// kept from a clock's time (the TSC's, the host clock's) in range.
pub const MAX_GUEST_NS: u64 = i64::MAX as u64;

/// What a clock saves: the guest time it had reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClockState {
    /// Nanoseconds since the clock's origin, at most [`MAX_GUEST_NS`].
    pub now_ns: u64,
}

/// The part name clocks' errors carry.
const CLOCK_PART: &str = "clock";

/// A monotonic time source in nanoseconds.
///
/// A clock is shared (`Arc<dyn Clock>`), so it saves and restores through
/// `&self`: [`Clock::save_time`] and [`Clock::restore_time`]. The concrete
/// clocks also implement [`Persist`] with the same meaning.
pub trait Clock: Send + Sync {
    /// Nanoseconds since the clock's origin; never goes backwards between
    /// two calls of [`Clock::resume_at`].
    fn now_ns(&self) -> u64;

    /// Makes the clock read `ns` now and run on from there. This is what a
    /// restore does; it may move the clock backwards (to the time of an
    /// earlier snapshot), which the devices restored with it agree with.
    fn resume_at(&self, ns: u64);

    /// The guest time reached, for a snapshot.
    fn save_time(&self) -> ClockState {
        ClockState { now_ns: self.now_ns() }
    }

    /// Goes on from the saved guest time. A time past [`MAX_GUEST_NS`] is
    /// refused and leaves the clock as it was.
    fn restore_time(&self, state: &ClockState) -> Result<(), PersistError> {
        PersistError::check_max(CLOCK_PART, "now_ns", state.now_ns, MAX_GUEST_NS)?;
        self.resume_at(state.now_ns);
        Ok(())
    }
}

/// The host's monotonic clock (`std::time::Instant`), counted from its
/// creation plus an offset that [`Clock::resume_at`] sets.
#[derive(Debug)]
pub struct HostClock {
    origin: Instant,
    /// Added (signed) to the host nanoseconds since `origin`.
    offset_ns: AtomicI64,
}

impl HostClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self { origin: Instant::now(), offset_ns: AtomicI64::new(0) }
    }

    /// Host nanoseconds since the origin.
    fn elapsed_ns(&self) -> i128 {
        i128::try_from(self.origin.elapsed().as_nanos()).unwrap_or(i128::MAX)
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        let t = self.elapsed_ns().saturating_add(i128::from(self.offset_ns.load(Ordering::Acquire)));
        // u64 nanoseconds last 584 years; saturate rather than wrap past that.
        u64::try_from(t.max(0)).unwrap_or(u64::MAX)
    }

    fn resume_at(&self, ns: u64) {
        let offset = i128::from(ns) - self.elapsed_ns();
        let offset = i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX });
        self.offset_ns.store(offset, Ordering::Release);
    }
}

/// Saves the guest time reached; a restore goes on from it (the host time
/// between the two does not count).
impl Persist for HostClock {
    type State = ClockState;

    fn save(&self) -> ClockState {
        self.save_time()
    }

    fn restore(&mut self, state: &ClockState) -> Result<(), PersistError> {
        self.restore_time(state)
    }
}

/// A clock that moves only when told to: for tests and deterministic runs.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock that reads `start_ns` until moved.
    pub fn new(start_ns: u64) -> Self {
        Self { now: AtomicU64::new(start_ns) }
    }

    /// Sets the time. A value below the current one is ignored: the clock is monotonic.
    pub fn set(&self, now_ns: u64) {
        self.now.fetch_max(now_ns, Ordering::SeqCst);
    }

    /// Moves the clock forward by `delta_ns` (saturating at `u64::MAX`).
    pub fn advance(&self, delta_ns: u64) {
        let _ = self.now.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| Some(now.saturating_add(delta_ns)));
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn resume_at(&self, ns: u64) {
        self.now.store(ns, Ordering::SeqCst);
    }
}

/// Saves the time it reads; a restore sets it there.
impl Persist for ManualClock {
    type State = ClockState;

    fn save(&self) -> ClockState {
        self.save_time()
    }

    fn restore(&mut self, state: &ClockState) -> Result<(), PersistError> {
        self.restore_time(state)
    }
}

/// A shared clock handle, as devices hold it.
pub type SharedClock = Arc<dyn Clock>;

/// Whole ticks of a `hz` clock elapsed in `ns` nanoseconds (rounded down).
pub fn ticks_in(ns: u64, hz: u64) -> u64 {
    let ticks = u128::from(ns) * u128::from(hz) / u128::from(NANOS_PER_SEC);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// Nanoseconds until `ticks` ticks of a `hz` clock have elapsed (rounded up,
/// so `ticks_in(ns_for_ticks(t, hz), hz) >= t`). Saturates at `u64::MAX`; a
/// clock of 0 Hz never gets there.
pub fn ns_for_ticks(ticks: u64, hz: u64) -> u64 {
    if hz == 0 {
        return u64::MAX;
    }
    let ns = (u128::from(ticks) * u128::from(NANOS_PER_SEC)).div_ceil(u128::from(hz));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// A timer device as the run loop drives it.
pub trait Timed {
    /// The clock time at which [`Timed::tick`] next has something to do, or
    /// `None` when no timer is armed. A time in the past means "now".
    fn next_deadline_ns(&self) -> Option<u64>;

    /// Catches up with `now_ns`: raises the interrupts that fell due since the
    /// last call. Calling it early, late or twice is harmless.
    fn tick(&mut self, now_ns: u64);
}

/// A timer the run loop can poll through a shared reference: a `Mutex` around
/// a [`Timed`] device, or a device with its own inner lock (the interrupt controller).
pub trait TimerSource: Send + Sync {
    /// See [`Timed::next_deadline_ns`].
    fn next_deadline_ns(&self) -> Option<u64>;
    /// See [`Timed::tick`].
    fn poll(&self, now_ns: u64);
}

impl<T: Timed + Send + ?Sized> TimerSource for Mutex<T> {
    fn next_deadline_ns(&self) -> Option<u64> {
        self.lock().next_deadline_ns()
    }

    fn poll(&self, now_ns: u64) {
        self.lock().tick(now_ns);
    }
}

/// The timer devices of one machine, polled together.
#[derive(Default, Clone)]
pub struct Timers {
    sources: Vec<Arc<dyn TimerSource>>,
}

impl fmt::Debug for Timers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timers").field("sources", &self.sources.len()).finish()
    }
}

impl Timers {
    /// No timers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a timer device.
    pub fn add(&mut self, source: Arc<dyn TimerSource>) {
        self.sources.push(source);
    }

    /// Ticks every device whose deadline is due at `now_ns` and returns the
    /// earliest deadline left, the time until which a halted CPU may sleep.
    pub fn poll(&self, now_ns: u64) -> Option<u64> {
        let mut earliest: Option<u64> = None;
        for source in &self.sources {
            if source.next_deadline_ns().is_some_and(|d| d <= now_ns) {
                source.poll(now_ns);
            }
            if let Some(d) = source.next_deadline_ns() {
                earliest = Some(earliest.map_or(d, |e| e.min(d)));
            }
        }
        earliest
    }
}

/// The guest's time-stamp counter as a function of the clock: `hz` ticks per
/// second plus an offset the guest can change by writing the TSC.
///
/// The CPU's RDTSC and the local APIC's TSC-deadline timer must read the same
/// counter, so the machine shares one `Tsc` between them.
#[derive(Debug)]
pub struct Tsc {
    /// Ticks per second (changed only by [`Tsc::retune`]).
    hz: AtomicU64,
    /// Added (two's complement) to the ticks since the clock's origin.
    offset: AtomicI64,
}

impl Tsc {
    /// A TSC of `hz` ticks per second that reads 0 at the clock's origin.
    pub fn new(hz: u64) -> Self {
        Self { hz: AtomicU64::new(hz), offset: AtomicI64::new(0) }
    }

    /// The counter's frequency.
    pub fn hz(&self) -> u64 {
        self.hz.load(Ordering::Relaxed)
    }

    /// The counter's value at clock time `now_ns`.
    pub fn read(&self, now_ns: u64) -> u64 {
        ticks_in(now_ns, self.hz()).wrapping_add_signed(self.offset.load(Ordering::Relaxed))
    }

    /// Makes the counter read `value` at clock time `now_ns` (a WRMSR to the TSC).
    pub fn write(&self, now_ns: u64, value: u64) {
        let offset = value.wrapping_sub(ticks_in(now_ns, self.hz())).cast_signed();
        self.offset.store(offset, Ordering::Relaxed);
    }

    /// Moves the counter by `delta` ticks (two's complement): a WRMSR to the
    /// TSC or IA32_TSC_ADJUST, as a difference from the current value.
    pub fn shift(&self, delta: u64) {
        self.offset.fetch_add(delta.cast_signed(), Ordering::Relaxed);
    }

    /// Run at `hz` from now on, reading `value` at clock time `now_ns`: to
    /// follow a counter kept elsewhere (a hypervisor's) at its own rate.
    /// For before the guest runs; a reader racing with it may see the old
    /// rate with the new offset.
    pub fn retune(&self, now_ns: u64, hz: u64, value: u64) {
        self.hz.store(hz.max(1), Ordering::Relaxed);
        self.write(now_ns, value);
    }

    /// The earliest clock time at which the counter reads at least `value`
    /// (0 if it did already at the clock's origin).
    pub fn ns_at(&self, value: u64) -> u64 {
        let needed = i128::from(value) - i128::from(self.offset.load(Ordering::Relaxed));
        match u64::try_from(needed) {
            Ok(ticks) => ns_for_ticks(ticks, self.hz()),
            Err(_) if needed < 0 => 0,
            Err(_) => u64::MAX,
        }
    }
}

/// The saved state of a [`Tsc`]: its rate and its offset from the clock,
/// which mean the same after a restore because the clock resumes from the
/// saved guest time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TscState {
    /// Ticks per second, at least 1.
    pub hz: u64,
    /// Added (two's complement) to the ticks since the clock's origin.
    pub offset: i64,
}

/// The part name the TSC's errors carry.
const TSC_PART: &str = "TSC";

impl Tsc {
    /// [`Persist::restore`] through a shared reference, as the machine holds
    /// the TSC (`Arc<Tsc>`): a rate of 0 is refused and changes nothing.
    pub fn restore_shared(&self, state: &TscState) -> Result<(), PersistError> {
        Self::check_state(state)?;
        self.load_state(state);
        Ok(())
    }

    /// Loads a state [`Tsc::check_state`] passed.
    pub(crate) fn load_state(&self, state: &TscState) {
        self.hz.store(state.hz, Ordering::Relaxed);
        self.offset.store(state.offset, Ordering::Relaxed);
    }
}

impl Tsc {
    /// The checks of a restore, changing nothing.
    pub(crate) fn check_state(state: &TscState) -> Result<(), PersistError> {
        PersistError::check(state.hz != 0, TSC_PART, "hz", || "is 0; a counter needs a rate".to_string())
    }
}

impl Persist for Tsc {
    type State = TscState;

    fn save(&self) -> TscState {
        TscState { hz: self.hz(), offset: self.offset.load(Ordering::Relaxed) }
    }

    fn restore(&mut self, state: &TscState) -> Result<(), PersistError> {
        self.restore_shared(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_clock_is_monotonic() {
        let clock = HostClock::new();
        let a = clock.now_ns();
        let b = clock.now_ns();
        assert!(b >= a);
    }

    #[test]
    fn manual_clock_moves_only_forward() {
        let clock = ManualClock::new(100);
        assert_eq!(clock.now_ns(), 100);
        clock.advance(50);
        assert_eq!(clock.now_ns(), 150);
        clock.set(120);
        assert_eq!(clock.now_ns(), 150, "setting the past is ignored");
        clock.set(1_000);
        assert_eq!(clock.now_ns(), 1_000);
        clock.advance(u64::MAX);
        assert_eq!(clock.now_ns(), u64::MAX);
    }

    #[test]
    fn tick_conversions_round_the_right_way() {
        // The PIT's 1.193182 MHz: one tick is 838.095... ns.
        assert_eq!(ticks_in(838, 1_193_182), 0);
        assert_eq!(ticks_in(839, 1_193_182), 1);
        assert_eq!(ns_for_ticks(1, 1_193_182), 839);
        assert_eq!(ticks_in(NANOS_PER_SEC, 1_193_182), 1_193_182);
        for t in [0, 1, 2, 65_535, 65_536, 1_000_000_007] {
            let ns = ns_for_ticks(t, 3_579_545);
            assert!(ticks_in(ns, 3_579_545) >= t);
            assert!(ns == 0 || ticks_in(ns - 1, 3_579_545) < t);
        }
        assert_eq!(ticks_in(u64::MAX, u64::MAX), u64::MAX);
        assert_eq!(ns_for_ticks(u64::MAX, 1), u64::MAX);
        assert_eq!(ns_for_ticks(5, 0), u64::MAX);
    }

    struct Countdown {
        deadline: Option<u64>,
        fired: u32,
    }

    impl Timed for Countdown {
        fn next_deadline_ns(&self) -> Option<u64> {
            self.deadline
        }
        fn tick(&mut self, now_ns: u64) {
            if self.deadline.is_some_and(|d| d <= now_ns) {
                self.fired += 1;
                self.deadline = None;
            }
        }
    }

    #[test]
    fn timers_tick_due_devices_and_report_the_earliest_deadline() {
        let a = Arc::new(Mutex::new(Countdown { deadline: Some(100), fired: 0 }));
        let b = Arc::new(Mutex::new(Countdown { deadline: Some(300), fired: 0 }));
        let idle = Arc::new(Mutex::new(Countdown { deadline: None, fired: 0 }));
        let mut timers = Timers::new();
        timers.add(a.clone());
        timers.add(b.clone());
        timers.add(idle);
        assert_eq!(timers.poll(50), Some(100));
        assert_eq!(a.lock().fired, 0);
        assert_eq!(timers.poll(100), Some(300));
        assert_eq!(a.lock().fired, 1);
        assert_eq!(timers.poll(1_000), None);
        assert_eq!(b.lock().fired, 1);
        assert!(format!("{timers:?}").contains('3'));
    }

    #[test]
    fn tsc_follows_the_clock_and_writes() {
        let tsc = Tsc::new(2_000_000_000);
        assert_eq!(tsc.hz(), 2_000_000_000);
        assert_eq!(tsc.read(1_000), 2_000);
        tsc.write(1_000, 10);
        assert_eq!(tsc.read(1_000), 10);
        assert_eq!(tsc.read(2_000), 2_010);
        assert_eq!(tsc.ns_at(2_010), 2_000);
        assert_eq!(tsc.ns_at(2_011), 2_001, "rounded up to the first ns at or past the value");
        assert_eq!(tsc.ns_at(10), 1_000);
        tsc.write(0, 1_000_000);
        assert_eq!(tsc.ns_at(5), 0, "passed before the clock's origin");
        tsc.write(0, u64::MAX - 1);
        assert_eq!(tsc.read(1), 0, "the counter wraps");
    }

    #[test]
    fn tsc_shifts_by_a_signed_delta() {
        let tsc = Tsc::new(1_000_000_000);
        tsc.shift(500);
        assert_eq!(tsc.read(100), 600);
        tsc.shift(200u64.wrapping_neg());
        assert_eq!(tsc.read(100), 400);
        assert_eq!(tsc.ns_at(400), 100);
    }

    #[test]
    fn a_host_clock_resumes_from_the_saved_guest_time() {
        let old = HostClock::new();
        old.resume_at(5 * NANOS_PER_SEC);
        let saved = old.save_time();
        assert!(saved.now_ns >= 5 * NANOS_PER_SEC);
        // A new process: a clock whose own origin is now.
        let mut new = HostClock::new();
        assert!(new.now_ns() < NANOS_PER_SEC);
        Persist::restore(&mut new, &saved).unwrap();
        let now = new.now_ns();
        assert!(now >= saved.now_ns, "{now} < {}", saved.now_ns);
        assert!(now - saved.now_ns < NANOS_PER_SEC, "the clock goes on from the saved time: {now}");
        // It keeps running from there, monotonic.
        let later = new.now_ns();
        assert!(later >= now);
        // A restore may go back to an earlier snapshot's time.
        new.resume_at(1_000);
        assert!((1_000..1_000 + NANOS_PER_SEC).contains(&new.now_ns()));
        assert!(new.save().now_ns >= 1_000);
    }

    #[test]
    fn a_host_clock_refuses_a_time_past_the_limit_and_runs_on() {
        let clock = HostClock::new();
        clock.resume_at(7 * NANOS_PER_SEC);
        let e = clock.restore_time(&ClockState { now_ns: MAX_GUEST_NS + 1 }).unwrap_err();
        assert_eq!((e.part, e.field), ("clock", "now_ns"));
        let now = clock.now_ns();
        assert!((7 * NANOS_PER_SEC..8 * NANOS_PER_SEC).contains(&now), "unchanged: {now}");
        assert!(clock.restore_time(&ClockState { now_ns: MAX_GUEST_NS }).is_ok());
        assert!(clock.now_ns() >= MAX_GUEST_NS);
    }

    #[test]
    fn a_manual_clock_round_trips_and_refuses_a_corrupt_time() {
        let configured = ManualClock::new(0);
        configured.advance(123_456_789);
        let mut fresh = ManualClock::new(5);
        let state = persist::assert_round_trip(&configured, &mut fresh);
        assert_eq!(state.now_ns, 123_456_789);
        fresh.advance(11);
        configured.advance(11);
        assert_eq!(fresh.now_ns(), configured.now_ns(), "both go on alike");
        // Through the shared handle, as the machine holds it.
        let shared: SharedClock = Arc::new(ManualClock::new(1 << 40));
        shared.restore_time(&state).unwrap();
        assert_eq!(shared.now_ns(), 123_456_789, "a restore may move a clock back");
        let e = persist::assert_refused(&mut fresh, &ClockState { now_ns: u64::MAX });
        assert_eq!(e.field, "now_ns");
        assert_eq!(fresh.now_ns(), 123_456_800);
    }

    #[test]
    fn a_tsc_round_trips_its_rate_and_offset() {
        let configured = Tsc::new(2_000_000_000);
        configured.write(1_000, 10);
        configured.shift(5);
        let mut fresh = Tsc::new(1);
        let state = persist::assert_round_trip(&configured, &mut fresh);
        assert_eq!(state.hz, 2_000_000_000);
        for now in [0, 1_000, 2_000, 1 << 40] {
            assert_eq!(fresh.read(now), configured.read(now), "at {now} ns");
        }
        assert_eq!(fresh.ns_at(2_015), 2_000);
        // A shared TSC restores through `&self`.
        let shared = Arc::new(Tsc::new(7));
        shared.restore_shared(&state).unwrap();
        assert_eq!(shared.read(2_000), 2_015);
        let e = persist::assert_refused(&mut fresh, &TscState { hz: 0, offset: 0 });
        assert_eq!(e.field, "hz");
        assert_eq!(fresh.read(2_000), 2_015, "unchanged");
    }
}
