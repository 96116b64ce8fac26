//! Kicking a vCPU out of `KVM_RUN` from another thread, the rust-vmm way:
//! `kvm_run.immediate_exit` plus a real-time signal to the vCPU's thread.
//!
//! The kicker, under its lock:
//! 1. sets `immediate_exit = 1` in the vCPU's `kvm_run`, then
//! 2. if a thread is inside [`Vcpu::run`](crate::Vcpu::run), sends it
//!    [`kick_signal`] (whose handler does nothing).
//!
//! The vCPU thread registers itself under the same lock when `run` starts and
//! unregisters when it ends. Whatever the interleaving, the run returns:
//! - the signal arrives during `KVM_RUN`: KVM returns `EINTR`;
//! - it arrives while the thread serves an exit in userspace: the handler
//!   runs, and the next `KVM_RUN` sees `immediate_exit` and returns `EINTR`
//!   without entering the guest;
//! - the kick comes between two runs (no thread registered): no signal, and
//!   the next `KVM_RUN` sees `immediate_exit`.
//!
//! The vCPU clears `immediate_exit` after each `EINTR`, and when `run`
//! returns because `should_stop()` said so (a kick filed with the stop
//! request is answered by that return). The lock also makes
//! the thread id safe to signal: the thread cannot leave `run` (and exit)
//! while a kicker holds it, and the vCPU's drop clears the `kvm_run` address
//! under it, so a kicker that outlives the vCPU does nothing.
//!
//! A signal that lands while the vCPU thread is in a blocking system call of
//! a device handler makes that call fail with `EINTR` (the handler is
//! installed without `SA_RESTART`, as KVM needs); Rust's standard I/O retries
//! such calls.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::{AccelError, Kick};

/// Offset of the kick signal from `SIGRTMIN` (as Firecracker's vCPU signal).
const KICK_SIGNAL_OFFSET: libc::c_int = 0;

/// The real-time signal that interrupts `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn on_kick_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal's only purpose is to make KVM_RUN return.
}

/// Install the (empty) handler for [`kick_signal`], once per process. Without
/// a handler the signal's default action would kill the process.
pub fn install_kick_handler() -> Result<(), AccelError> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick_signal).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| AccelError::ioctl("sigaction for the vCPU kick signal", e))
}

/// Make sure the kick signal is not blocked on the calling thread (it would
/// stay pending, and `KVM_RUN` would not return).
fn unblock_kick_signal() {
    if let Err(e) = vmm_sys_util::signal::unblock_signal(kick_signal()) {
        tracing::warn!("cannot unblock the vCPU kick signal on this thread: {e}");
    }
}

#[derive(Debug)]
struct Inner {
    /// Address of the vCPU's `kvm_run.immediate_exit`; 0 once the vCPU is gone.
    immediate_exit: usize,
    /// The thread inside `run`, if one is.
    thread: Option<libc::pthread_t>,
    /// The last thread on which the signal was unblocked.
    unblocked_on: Option<libc::pthread_t>,
    kicks: u64,
}

/// One vCPU's kick state, shared by the vCPU and its kickers.
#[derive(Debug)]
pub(super) struct KickState {
    inner: Mutex<Inner>,
}

impl KickState {
    /// For the vCPU whose `kvm_run.immediate_exit` is at `immediate_exit`.
    pub(super) fn new(immediate_exit: *mut u8) -> Self {
        KickState {
            inner: Mutex::new(Inner {
                immediate_exit: immediate_exit as usize,
                thread: None,
                unblocked_on: None,
                kicks: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The calling thread is about to run the vCPU.
    pub(super) fn enter(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut g = self.lock();
        if g.unblocked_on != Some(me) {
            unblock_kick_signal();
            g.unblocked_on = Some(me);
        }
        g.thread = Some(me);
    }

    /// The running thread leaves `run`.
    pub(super) fn leave(&self) {
        self.lock().thread = None;
    }

    /// Consume a kick after `KVM_RUN` returned `EINTR`.
    pub(super) fn clear(&self) {
        let g = self.lock();
        store_immediate_exit(g.immediate_exit, 0);
    }

    /// The vCPU is being destroyed: later kicks do nothing.
    pub(super) fn detach(&self) {
        let mut g = self.lock();
        g.immediate_exit = 0;
        g.thread = None;
    }

    pub(super) fn kicks(&self) -> u64 {
        self.lock().kicks
    }
}

/// Write `kvm_run.immediate_exit` at `addr` (nothing when `addr` is 0).
fn store_immediate_exit(addr: usize, value: u8) {
    if addr == 0 {
        return;
    }
    // SAFETY: `addr` is the `immediate_exit` byte of a live `kvm_run` mapping:
    // it is set from the vCPU's mapping when the vCPU is created and cleared
    // (under the same lock the caller holds) before the vCPU and its mapping
    // go away. A u8 is always aligned. The kernel reads this byte at each
    // KVM_RUN and the vCPU thread writes it only through this function, so
    // every access from Rust is atomic.
    let byte = unsafe { AtomicU8::from_ptr(addr as *mut u8) };
    byte.store(value, Ordering::SeqCst);
}

impl Kick for KickState {
    fn kick(&self) {
        let mut g = self.lock();
        if g.immediate_exit == 0 {
            return;
        }
        g.kicks += 1;
        // First immediate_exit, then the signal: a thread that misses the
        // signal (not yet in KVM_RUN) sees the flag at its next entry.
        store_immediate_exit(g.immediate_exit, 1);
        if let Some(thread) = g.thread {
            // SAFETY: `thread` is the pthread id of a thread that is inside
            // `run` right now: it registered under this lock and cannot
            // unregister (or exit) while we hold it, so the id is live. The
            // signal has a handler (installed before any kicker exists), so
            // delivering it only interrupts a system call.
            let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
            if rc != 0 {
                tracing::warn!("cannot signal the vCPU thread: {}", std::io::Error::from_raw_os_error(rc));
            }
        }
    }
}
