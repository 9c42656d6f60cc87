//! Admission limits: open connections in total and per client IP, and the per-client
//! request rate (governor; its key table is pruned on a timer so it cannot grow unbounded).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use governor::{DefaultKeyedRateLimiter, Quota};
use passerelle_config::Limits;

pub type RateLimiter = DefaultKeyedRateLimiter<IpAddr>;

pub fn rate_limiter(limits: &Limits) -> RateLimiter {
    let rate = NonZeroU32::new(limits.requests_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
}

/// Open client connections, counted as they are accepted and released when they close.
#[derive(Default)]
pub struct Connections {
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `limits.max_connections`: closed before reading anything.
    Total,
    /// Over `limits.max_connections_per_client`: answered 503.
    PerClient,
    /// Outside the allow list: closed before reading.
    NotAllowed,
}

impl Refusal {
    pub fn reason(self) -> crate::record::Reason {
        use crate::record::Reason;
        match self {
            Refusal::Total => Reason::TooManyConnections,
            Refusal::PerClient => Reason::ClientConnectionLimit,
            Refusal::NotAllowed => Reason::ClientNotAllowed,
        }
    }
}

/// Holds one admitted connection's place until dropped.
pub struct Admitted {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Admitted {
    /// The client this slot is counted for.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Connections {
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<Admitted, Refusal> {
        self.admit_within(
            ip,
            limits.max_connections as usize,
            limits.max_connections_per_client,
        )
    }

    pub fn admit_within(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_client: u32,
    ) -> Result<Admitted, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        let mut per_client = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_client.entry(ip).or_insert(0);
        if *count >= max_per_client {
            drop(per_client);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerClient);
        }
        *count += 1;
        Ok(Admitted {
            connections: self.clone(),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.connections.total.fetch_sub(1, Ordering::AcqRel);
        let mut per_client = self
            .connections
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_client.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_client.remove(&self.ip);
            }
        }
    }
}

/// `from + d`, saturating: validation bounds every configured duration, and no deadline
/// computed from one may overflow the clock anyway.
pub fn deadline<I>(from: I, d: std::time::Duration) -> I
where
    I: Copy + std::ops::Add<std::time::Duration, Output = I> + CheckedAdd,
{
    from.checked_add_duration(d)
        .unwrap_or_else(|| from + std::time::Duration::from_secs(365 * 86_400))
}

/// The two clocks the gateway computes deadlines on.
pub trait CheckedAdd: Sized {
    fn checked_add_duration(&self, d: std::time::Duration) -> Option<Self>;
}

impl CheckedAdd for std::time::Instant {
    fn checked_add_duration(&self, d: std::time::Duration) -> Option<Self> {
        self.checked_add(d)
    }
}

impl CheckedAdd for tokio::time::Instant {
    fn checked_add_duration(&self, d: std::time::Duration) -> Option<Self> {
        self.checked_add(d)
    }
}
