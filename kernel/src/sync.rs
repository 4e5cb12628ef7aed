//! Locks that are safe to take from interrupt handlers.
//!
//! `spin::Mutex` does not touch the interrupt flag, so a handler that takes a lock its
//! own CPU already holds would spin forever. [`IrqMutex`] disables interrupts for as
//! long as the guard lives and restores the previous state afterwards.

use core::ops::{Deref, DerefMut};
use x86_64::instructions::interrupts;

/// A spin lock that keeps interrupts disabled while held.
pub struct IrqMutex<T> {
    inner: spin::Mutex<T>,
}

/// Guard of an [`IrqMutex`].
pub struct IrqMutexGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    restore: bool,
}

impl<T> IrqMutex<T> {
    /// A new unlocked mutex.
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }

    /// Disables interrupts and takes the lock.
    pub fn lock(&self) -> IrqMutexGuard<'_, T> {
        let restore = interrupts::are_enabled();
        interrupts::disable();
        IrqMutexGuard {
            guard: Some(self.inner.lock()),
            restore,
        }
    }

    /// Takes the lock if it is free.
    #[cfg(feature = "ktest")]
    pub fn try_lock(&self) -> Option<IrqMutexGuard<'_, T>> {
        let restore = interrupts::are_enabled();
        interrupts::disable();
        match self.inner.try_lock() {
            Some(g) => Some(IrqMutexGuard {
                guard: Some(g),
                restore,
            }),
            None => {
                if restore {
                    interrupts::enable();
                }
                None
            }
        }
    }
}

impl<T> Deref for IrqMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("guard is present until drop")
    }
}

impl<T> DerefMut for IrqMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("guard is present until drop")
    }
}

impl<T> Drop for IrqMutexGuard<'_, T> {
    fn drop(&mut self) {
        // Release the lock before interrupts can arrive again.
        self.guard = None;
        if self.restore {
            interrupts::enable();
        }
    }
}
