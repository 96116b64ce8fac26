//! A thread that kicks an engine out of the guest at a deadline.
//!
//! Engines that run the guest without counting instructions (KVM) would
//! not come back for a timer of the machine's own (the PIT, the RTC, a
//! local APIC of the machine's) while the guest spins or waits in the
//! hypervisor: the alarm kicks them at the slice's deadline
//! ([`super::Slice::until`]).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::Kicker;
use crate::error::Error;

/// Kicks at a deadline, from a thread of its own; ends with its owner.
pub struct Alarm {
    state: Arc<(Mutex<AlarmState>, Condvar)>,
}

#[derive(Default)]
struct AlarmState {
    deadline: Option<Instant>,
    quit: bool,
}

impl Alarm {
    pub fn new(kick: Kicker) -> Result<Self, Error> {
        let state = Arc::new((Mutex::new(AlarmState::default()), Condvar::new()));
        let s = state.clone();
        std::thread::Builder::new()
            .name("engine-alarm".into())
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if st.quit {
                        return;
                    }
                    match st.deadline {
                        None => st = cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                st.deadline = None;
                                kick();
                            } else {
                                st = cv.wait_timeout(st, d - now).unwrap_or_else(|p| p.into_inner()).0;
                            }
                        }
                    }
                }
            })
            .map_err(|source| Error::Thread { what: "timer", source })?;
        Ok(Alarm { state })
    }

    /// Kick at `deadline` (replacing any earlier one), or never (`None`).
    pub fn set(&self, deadline: Option<Instant>) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).deadline = deadline;
        cv.notify_one();
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).quit = true;
        cv.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[test]
    fn the_alarm_kicks_at_its_deadline_and_not_after_a_reset() {
        let count = Arc::new(AtomicU32::new(0));
        let c = count.clone();
        let alarm = Alarm::new(Arc::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        alarm.set(Some(Instant::now() + Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(count.load(Ordering::SeqCst), 1);
        alarm.set(Some(Instant::now() + Duration::from_millis(100)));
        alarm.set(None);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(count.load(Ordering::SeqCst), 1, "a cleared alarm does not kick");
    }
}
