//! Time for the parent layer's rules (back-off, cool-down, the account's budget), injected so
//! that tests drive it instead of waiting.

use std::time::Instant;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told.
#[cfg(test)]
pub struct Manual {
    start: Instant,
    offset_ms: std::sync::atomic::AtomicU64,
}

#[cfg(test)]
impl Manual {
    pub fn new() -> std::sync::Arc<Manual> {
        std::sync::Arc::new(Manual {
            start: Instant::now(),
            offset_ms: Default::default(),
        })
    }

    pub fn advance(&self, d: std::time::Duration) {
        self.offset_ms
            .fetch_add(d.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for Manual {
    fn now(&self) -> Instant {
        self.start
            + std::time::Duration::from_millis(
                self.offset_ms.load(std::sync::atomic::Ordering::SeqCst),
            )
    }
}
