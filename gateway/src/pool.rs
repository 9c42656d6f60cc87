//! Idle HTTP/1 connections kept for reuse: to origins (keyed by target) and to parents
//! (authenticated once, then reused: NTLM authenticates a connection, not a request).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use crate::body::Body;

/// How many idle connections one key keeps, and for how long.
const MAX_IDLE_PER_KEY: usize = 64;
const IDLE_FOR: Duration = Duration::from_secs(60);

/// An idle connection and when it became idle.
type Idle = (SendRequest<Body>, Instant);

pub struct Pool<K> {
    idle: Mutex<HashMap<K, Vec<Idle>>>,
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Pool<K> {
    pub fn new() -> Arc<Pool<K>> {
        Arc::new(Pool {
            idle: Mutex::new(HashMap::new()),
        })
    }

    /// An idle connection that is still open and ready, if any.
    pub fn checkout(&self, key: &K) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some((sender, since)) = list.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_FOR {
                return Some(sender);
            }
        }
        None
    }

    /// Puts the connection back once its current exchange is over (the response body read
    /// to its end); a connection that closes meanwhile is simply dropped.
    pub fn checkin_when_ready(self: &Arc<Self>, key: K, mut sender: SendRequest<Body>) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            if let Ok(mut idle) = pool.idle.lock() {
                let list = idle.entry(key).or_default();
                list.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_FOR);
                if list.len() < MAX_IDLE_PER_KEY {
                    list.push((sender, Instant::now()));
                }
            }
        });
    }

    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}
