//! The synchronization primitives the rendezvous uses, in one place, so that
//! a shuttle test can compile the rendezvous against shuttle's versions.

pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
pub(crate) use std::sync::{Condvar, Mutex};

/// One step of a busy wait.
pub(crate) fn spin_loop() {
    std::hint::spin_loop();
}

/// Gives the core to another runnable thread.
pub(crate) fn yield_now() {
    std::thread::yield_now();
}
