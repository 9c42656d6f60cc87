//! Idle HTTP/1 connections kept for reuse: to origins (keyed by target) and to parents
//! (authenticated once, then reused: NTLM authenticates a connection, not a request).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use tokio::sync::Notify;

use crate::body::Body;

/// How many idle connections one key keeps, and for how long.
const MAX_IDLE_PER_KEY: usize = 64;
const IDLE_FOR: Duration = Duration::from_secs(60);

/// An idle connection and when it became idle.
type Idle = (SendRequest<Body>, Instant);

#[derive(Default)]
struct Entry {
    idle: Vec<Idle>,
    /// Connections whose exchange is ending: back in the pool once hyper says they are ready.
    returning: usize,
}

pub struct Pool<K> {
    entries: Mutex<HashMap<K, Entry>>,
    /// Bumped by [`Pool::clear`]: a connection returning from before it is not kept.
    generation: std::sync::atomic::AtomicU64,
    /// Woken when a returning connection is back (or gone).
    returned: Notify,
    /// How long a checkout waits for a returning connection before the caller opens a new
    /// one: for parents, where a new connection costs an authentication handshake (a client's
    /// next request often arrives a moment before the previous answer's connection is ready
    /// again); zero for origins.
    wait_for_returning: Duration,
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Pool<K> {
    /// A pool whose checkouts never wait.
    pub fn new() -> Arc<Pool<K>> {
        Pool::waiting(Duration::ZERO)
    }

    /// A pool whose checkouts wait up to `wait` for a connection on its way back.
    pub fn waiting(wait: Duration) -> Arc<Pool<K>> {
        Arc::new(Pool {
            entries: Mutex::new(HashMap::new()),
            generation: Default::default(),
            returned: Notify::new(),
            wait_for_returning: wait,
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection that is still open and ready, or none (then the caller opens one).
    pub async fn checkout(&self, key: &K) -> Option<SendRequest<Body>> {
        let deadline = tokio::time::Instant::now() + self.wait_for_returning;
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            {
                let mut entries = self.entries();
                let entry = entries.get_mut(key)?;
                while let Some((sender, since)) = entry.idle.pop() {
                    if sender.is_ready() && since.elapsed() < IDLE_FOR {
                        return Some(sender);
                    }
                }
                if entry.returning == 0 || self.wait_for_returning.is_zero() {
                    return None;
                }
            }
            tokio::time::timeout_at(deadline, returned).await.ok()?;
        }
    }

    /// Puts the connection back once its current exchange is over (the response body read
    /// to its end); a connection that closes meanwhile is simply dropped.
    pub fn checkin_when_ready(self: &Arc<Self>, key: K, mut sender: SendRequest<Body>) {
        use std::sync::atomic::Ordering;
        let generation = self.generation.load(Ordering::Acquire);
        self.entries().entry(key.clone()).or_default().returning += 1;
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let ready = sender.ready().await.is_ok();
            {
                let mut entries = pool.entries();
                if pool.generation.load(Ordering::Acquire) != generation {
                    return;
                }
                let entry = entries.entry(key).or_default();
                entry.returning = entry.returning.saturating_sub(1);
                entry
                    .idle
                    .retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_FOR);
                if ready && entry.idle.len() < MAX_IDLE_PER_KEY {
                    entry.idle.push((sender, Instant::now()));
                }
            }
            pool.returned.notify_waiters();
        });
    }

    /// Drops every idle connection, and those still returning.
    pub fn clear(&self) {
        let mut entries = self.entries();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        entries.clear();
        drop(entries);
        self.returned.notify_waiters();
    }
}
