//! What the gateway knows of one parent's health: down (a transport failure, cooling off),
//! authentication back-off (our credentials refused: the service account must not be locked
//! out), and the probe gate that lets one request at a time test credentials that have not
//! been accepted yet. State changes are reported once, so logs say "down" once, not per request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::limits::deadline;

use super::clock::Clock;

/// The state a parent is in, for metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentHealth {
    Up,
    /// A transport failure, within its cool-down, and no success since.
    Down,
    /// Our credentials were refused; none are sent until the back-off ends.
    Backoff,
}

impl ParentHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            ParentHealth::Up => "up",
            ParentHealth::Down => "down",
            ParentHealth::Backoff => "backoff",
        }
    }
}

/// A change worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    WentDown,
    CameBack,
}

pub struct Health {
    clock: Arc<dyn Clock>,
    backoff: Duration,
    cooldown: Duration,
    inner: Mutex<Inner>,
    /// Held by the one request whose credentials are being tested.
    gate: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Inner {
    down_until: Option<Instant>,
    /// Down since, while down: for the periodic summary.
    down_since: Option<Instant>,
    backoff_until: Option<Instant>,
    /// Our credentials passed (or none were needed) since the last refusal.
    proven: bool,
}

/// The right to present credentials that are not proven yet (one request at a time tests
/// them); dropped when the verdict is in.
pub struct Trial(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);

impl std::fmt::Debug for Trial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trial")
    }
}

impl Health {
    pub fn new(clock: Arc<dyn Clock>, backoff: Duration, cooldown: Duration) -> Health {
        Health {
            clock,
            backoff,
            cooldown,
            inner: Mutex::new(Inner::default()),
            gate: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> ParentHealth {
        if self.backoff_left().is_some() {
            ParentHealth::Backoff
        } else if self.is_down() {
            ParentHealth::Down
        } else {
            ParentHealth::Up
        }
    }

    /// Down: a transport failure within its cool-down, with no success since.
    pub fn is_down(&self) -> bool {
        let now = self.clock.now();
        self.inner().down_until.is_some_and(|t| t > now)
    }

    /// How long it has been down, while it is.
    pub fn down_for(&self) -> Option<Duration> {
        let now = self.clock.now();
        let inner = self.inner();
        match (inner.down_until, inner.down_since) {
            (Some(until), Some(since)) if until > now => Some(now.duration_since(since)),
            _ => None,
        }
    }

    /// A transport failure: down for the cool-down. `WentDown` only when it was up.
    pub fn failed(&self) -> Change {
        let now = self.clock.now();
        let mut inner = self.inner();
        let was_down = inner.down_until.is_some_and(|t| t > now);
        inner.down_until = Some(deadline(now, self.cooldown));
        if was_down {
            Change::None
        } else {
            inner.down_since = Some(now);
            Change::WentDown
        }
    }

    /// The parent answered: it is up, whatever the cool-down said.
    pub fn answered(&self) -> Change {
        let now = self.clock.now();
        let mut inner = self.inner();
        let was_down = inner.down_until.is_some_and(|t| t > now);
        inner.down_until = None;
        inner.down_since = None;
        if was_down {
            Change::CameBack
        } else {
            Change::None
        }
    }

    pub fn backoff_left(&self) -> Option<Duration> {
        let now = self.clock.now();
        self.inner()
            .backoff_until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// The parent refused our credentials (or offers nothing we can use): no credentials for
    /// the back-off, and the next ones are tested by one request alone.
    pub fn refused(&self) {
        let now = self.clock.now();
        let mut inner = self.inner();
        inner.backoff_until = Some(deadline(now, self.backoff));
        inner.proven = false;
    }

    /// The parent accepted our credentials, or needed none.
    pub fn accepted(&self) {
        self.inner().proven = true;
    }

    /// The credentials are unproven again (refused, or a new secret): the next are tested by
    /// one request alone.
    pub fn unproven(&self) {
        self.inner().proven = false;
    }

    pub fn is_proven(&self) -> bool {
        self.inner().proven
    }

    /// Waits for the right to send credentials: at once when they are proven, else behind
    /// the one request testing them. `Err` with the time left when the parent refused them.
    pub async fn credentials_trial(&self) -> Result<Option<Trial>, Duration> {
        if let Some(left) = self.backoff_left() {
            return Err(left);
        }
        if self.is_proven() {
            return Ok(None);
        }
        let guard = self.gate.clone().lock_owned().await;
        // While we waited, the request ahead may have had its verdict.
        if let Some(left) = self.backoff_left() {
            return Err(left);
        }
        if self.is_proven() {
            return Ok(None);
        }
        Ok(Some(Trial(guard)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::clock::Manual;

    fn health(clock: &Arc<Manual>) -> Health {
        Health::new(
            clock.clone(),
            Duration::from_secs(60),
            Duration::from_secs(30),
        )
    }

    #[test]
    fn down_is_reported_once_and_cools_off() {
        let clock = Manual::new();
        let h = health(&clock);
        assert_eq!(h.state(), ParentHealth::Up);
        assert_eq!(h.failed(), Change::WentDown);
        assert_eq!(h.failed(), Change::None, "a second failure is not news");
        assert_eq!(h.state(), ParentHealth::Down);
        clock.advance(Duration::from_secs(20));
        assert_eq!(h.down_for(), Some(Duration::from_secs(20)));
        clock.advance(Duration::from_secs(11));
        assert_eq!(h.state(), ParentHealth::Up, "the cool-down ended");
        assert_eq!(h.failed(), Change::WentDown);
    }

    #[test]
    fn an_answer_clears_down_at_once() {
        let clock = Manual::new();
        let h = health(&clock);
        h.failed();
        clock.advance(Duration::from_secs(1));
        assert_eq!(h.answered(), Change::CameBack);
        assert_eq!(h.state(), ParentHealth::Up);
        assert_eq!(h.answered(), Change::None);
        assert_eq!(h.down_for(), None);
    }

    #[tokio::test]
    async fn refused_credentials_back_off_and_the_next_test_is_gated() {
        let clock = Manual::new();
        let h = health(&clock);
        // Unproven: the first caller gets the turn; a second waits behind it.
        let turn = h.credentials_trial().await.unwrap();
        assert!(turn.is_some());
        let waiting = tokio::time::timeout(Duration::from_millis(50), h.credentials_trial());
        assert!(
            waiting.await.is_err(),
            "a second request tested credentials"
        );
        h.refused();
        drop(turn);
        // The verdict reaches the one that waited: back-off, not another attempt.
        let left = h.credentials_trial().await.unwrap_err();
        assert_eq!(left, Duration::from_secs(60));
        assert_eq!(h.state(), ParentHealth::Backoff);
        clock.advance(Duration::from_secs(59));
        assert!(h.credentials_trial().await.is_err());
        clock.advance(Duration::from_secs(1));
        // After the back-off: one test again, and once accepted nobody waits.
        let turn = h.credentials_trial().await.unwrap();
        assert!(turn.is_some());
        h.accepted();
        drop(turn);
        assert!(h.credentials_trial().await.unwrap().is_none());
        assert!(h.credentials_trial().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_accepted_verdict_releases_those_waiting_without_a_turn() {
        let clock = Manual::new();
        let h = Arc::new(health(&clock));
        let turn = h.credentials_trial().await.unwrap();
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.credentials_trial().await.map(|t| t.is_some()) })
        };
        tokio::task::yield_now().await;
        h.accepted();
        drop(turn);
        assert_eq!(waiter.await.unwrap(), Ok(false));
    }

    #[test]
    fn back_off_wins_over_down_in_the_state() {
        let clock = Manual::new();
        let h = health(&clock);
        h.failed();
        h.refused();
        assert_eq!(h.state(), ParentHealth::Backoff);
        assert_eq!(h.state().as_str(), "backoff");
    }
}
