//! The gateway's standing with the domain, per account: shared by every parent that presents
//! the account, and kept across reloads. A secret the domain refused is not presented again
//! until it changes (then at once) or a back-off that doubles has passed (the refusal may have
//! been the parent's, not the domain's); and whatever the traffic, the parents or the outage, one
//! stale secret costs at most [`BUDGET`] presentations that may count as bad passwords in any
//! [`WINDOW`] (Active Directory counts failures since the last success, and locks the account at
//! its threshold). A new secret always gets its one attempt at once. Pure: time comes from an
//! injected clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::clock::Clock;

/// Presentations that may count as bad passwords, at most, in any [`WINDOW`].
pub const BUDGET: usize = 3;
pub const WINDOW: Duration = Duration::from_secs(30 * 60);

/// A secret's identity, to tell a rewritten keytab or password file from the one refused: a
/// SHA-256 of its bytes, never shown.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(secret: &[u8]) -> Fingerprint {
        use sha2::Digest;
        Fingerprint(sha2::Sha256::digest(secret).into())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprint(<not shown>)")
    }
}

/// How long a refused secret waits before it is tried again, unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

/// Why nothing is presented now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The domain (or the parent) refused this secret at `since`; it goes again at `until`,
    /// or at once when it changes.
    Refused {
        since: SystemTime,
        until: SystemTime,
        why: String,
    },
    /// [`BUDGET`] presentations that may have counted as bad passwords in the last
    /// [`WINDOW`]: the next waits until `until`, whatever the secret.
    Budget { until: SystemTime },
}

impl Held {
    /// When the next presentation may go.
    pub fn until(&self) -> SystemTime {
        match self {
            Held::Refused { until, .. } | Held::Budget { until } => *until,
        }
    }
}

/// What a refusal changed: the first one of a secret is said (a log line, an audit record);
/// the ones after it are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    First,
    Again,
}

pub struct Account {
    pub name: String,
    clock: Arc<dyn Clock>,
    inner: Mutex<Standing>,
}

struct Standing {
    backoff: Backoff,
    /// The secrets refused lately, each with its own back-off.
    refused: Vec<Refused>,
    /// Presentations that may have counted at the domain since the last success, and the
    /// secret each was made with.
    failures: VecDeque<(Instant, Fingerprint)>,
    accepted_at: Option<SystemTime>,
}

struct Refused {
    fingerprint: Fingerprint,
    at: Instant,
    since: SystemTime,
    next: Instant,
    /// The back-off its next refusal gets.
    delay: Duration,
    why: String,
}

/// Refused secrets remembered at most (the oldest is forgotten first).
const REMEMBERED: usize = 8;

/// The account's standing, for the status page, readiness, metrics and doctor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountStatus {
    pub held: Option<Held>,
    pub failures_in_window: usize,
    pub accepted_at: Option<SystemTime>,
}

impl Account {
    pub fn new(name: &str, backoff: Backoff, clock: Arc<dyn Clock>) -> Account {
        Account {
            name: name.to_string(),
            clock,
            inner: Mutex::new(Standing {
                backoff,
                refused: Vec::new(),
                failures: VecDeque::new(),
                accepted_at: None,
            }),
        }
    }

    fn standing(&self) -> std::sync::MutexGuard<'_, Standing> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The back-off as the running configuration says (a reload may change it).
    pub fn set_backoff(&self, backoff: Backoff) {
        self.standing().backoff = backoff;
    }

    /// May `secret` be presented now? Not while its own back-off runs (a secret other than
    /// those refused goes at once: a rotated keytab, a rewritten password file), and not when
    /// the budget is spent by failures with this secret (a secret with none gets its one
    /// attempt).
    pub fn may_present(&self, secret: &Fingerprint) -> Result<(), Held> {
        let now = self.clock.now();
        let mut s = self.standing();
        if let Some(r) = s.refused.iter().find(|r| &r.fingerprint == secret) {
            if now < r.next {
                return Err(Held::Refused {
                    since: r.since,
                    until: self.wall(now, r.next),
                    why: r.why.clone(),
                });
            }
        }
        while s
            .failures
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW)
        {
            s.failures.pop_front();
        }
        let failed_with_it = s.failures.iter().any(|(_, f)| f == secret);
        if s.failures.len() >= BUDGET && failed_with_it {
            let oldest = s.failures.front().expect("BUDGET > 0").0;
            return Err(Held::Budget {
                until: self.wall(now, oldest + WINDOW),
            });
        }
        Ok(())
    }

    /// The domain accepted the account: what it counted is reset (as AD resets its count on a
    /// successful logon), and nothing is held.
    pub fn accepted(&self) {
        let mut s = self.standing();
        s.failures.clear();
        s.refused.clear();
        s.accepted_at = Some(SystemTime::now());
    }

    /// `secret` was refused. `counts`: the domain itself may have counted it as a bad password
    /// (a Kerberos pre-authentication failure; an NTLM or Basic refusal, which the parent checked
    /// at a domain controller). The secret is held for its back-off, which doubles for its next
    /// refusal.
    pub fn refused(&self, secret: &Fingerprint, counts: bool, why: &str) -> Refusal {
        let now = self.clock.now();
        let since = self.wall(now, now);
        let mut s = self.standing();
        if counts {
            s.failures.push_back((now, secret.clone()));
        }
        let backoff = s.backoff;
        let refusal = match s.refused.iter_mut().find(|r| &r.fingerprint == secret) {
            Some(r) => {
                r.next = now + r.delay;
                r.delay = (r.delay * 2).min(backoff.max);
                r.why = why.to_string();
                Refusal::Again
            }
            None => {
                if s.refused.len() == REMEMBERED {
                    s.refused.remove(0);
                }
                s.refused.push(Refused {
                    fingerprint: secret.clone(),
                    at: now,
                    since,
                    next: now + backoff.first,
                    delay: (backoff.first * 2).min(backoff.max),
                    why: why.to_string(),
                });
                Refusal::First
            }
        };
        refusal
    }

    /// A presentation that may have counted at the domain without holding the secret back: a
    /// parent's refusal of one destination, after our credentials were accepted (it may also be
    /// a password the domain no longer takes: the budget keeps that bounded).
    pub fn may_have_counted(&self, secret: &Fingerprint) {
        let now = self.clock.now();
        self.standing().failures.push_back((now, secret.clone()));
    }

    /// What the status page, readiness and doctor show.
    pub fn status(&self, secret: &Fingerprint) -> AccountStatus {
        let held = self.may_present(secret).err();
        let s = self.standing();
        AccountStatus {
            held,
            failures_in_window: s.failures.len(),
            accepted_at: s.accepted_at,
        }
    }

    /// How long ago `secret` was last refused, if it was.
    pub fn refused_for(&self, secret: &Fingerprint) -> Option<Duration> {
        let now = self.clock.now();
        self.standing()
            .refused
            .iter()
            .find(|r| &r.fingerprint == secret)
            .map(|r| now.duration_since(r.at))
    }

    /// `at` (on the clock) as wall-clock time, for people.
    fn wall(&self, now: Instant, at: Instant) -> SystemTime {
        let wall = SystemTime::now();
        match at.checked_duration_since(now) {
            Some(ahead) => wall + ahead,
            None => wall - now.duration_since(at),
        }
    }
}

/// The accounts of the running configuration and those before it: a reload keeps what the
/// domain said of an account.
#[derive(Default)]
pub struct Accounts {
    known: Mutex<std::collections::HashMap<String, Arc<Account>>>,
}

impl Accounts {
    /// The account named `name` (`DOMAIN\user`, `user@REALM`), made on first use.
    pub fn get(&self, name: &str, backoff: Backoff, clock: Arc<dyn Clock>) -> Arc<Account> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let account = known
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Account::new(name, backoff, clock)))
            .clone();
        account.set_backoff(backoff);
        account
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::clock::Manual;

    const MINUTE: Duration = Duration::from_secs(60);

    fn account(clock: &Arc<Manual>) -> Account {
        Account::new(
            "CHU\\svc",
            Backoff {
                first: MINUTE,
                max: 60 * MINUTE,
            },
            clock.clone(),
        )
    }

    /// Whatever the traffic: a request every second for `minutes`, each presenting `secret`
    /// when allowed and refused (counting) when presented. Returns when presentations went.
    fn hammer(a: &Account, clock: &Manual, secret: &Fingerprint, minutes: u64) -> Vec<Duration> {
        let start = clock.now();
        let mut presented = Vec::new();
        for _ in 0..minutes * 60 {
            if a.may_present(secret).is_ok() {
                presented.push(clock.now().duration_since(start));
                a.refused(secret, true, "preauthentication failed");
            }
            clock.advance(Duration::from_secs(1));
        }
        presented
    }

    fn at_most_budget_in_any_window(times: &[Duration]) -> bool {
        times
            .iter()
            .enumerate()
            .all(|(i, t)| times[i..].iter().take_while(|u| **u < *t + WINDOW).count() <= BUDGET)
    }

    #[test]
    fn a_stale_secret_costs_at_most_three_failures_in_any_thirty_minutes() {
        let clock = Manual::new();
        let a = account(&clock);
        let stale = Fingerprint::of(b"old keytab");
        let presented = hammer(&a, &clock, &stale, 6 * 60);
        assert!(at_most_budget_in_any_window(&presented), "{presented:?}");
        // The back-off doubles from a minute to an hour: 0, 1, 3 minutes, then the budget
        // holds the fourth until the first leaves the window, then the back-off, up to hourly.
        assert_eq!(presented[..4], [0, 60, 180, 1800].map(Duration::from_secs));
        let gaps: Vec<u64> = presented
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs())
            .collect();
        assert!(gaps.iter().rev().take(3).all(|g| *g >= 3600), "{gaps:?}");
    }

    #[test]
    fn a_new_secret_goes_at_once_and_its_success_clears_the_count() {
        let clock = Manual::new();
        let a = account(&clock);
        let stale = Fingerprint::of(b"old password");
        let fresh = Fingerprint::of(b"new password");
        assert_eq!(a.refused(&stale, true, "bad password"), Refusal::First);
        clock.advance(Duration::from_secs(5));
        assert!(matches!(a.may_present(&stale), Err(Held::Refused { .. })));
        assert_eq!(
            a.may_present(&fresh),
            Ok(()),
            "a rewritten file goes at once"
        );
        a.accepted();
        assert_eq!(a.status(&fresh).failures_in_window, 0);
        assert_eq!(a.may_present(&fresh), Ok(()));
    }

    #[test]
    fn the_budget_is_shared_by_every_parent_and_a_new_secret_gets_one_attempt() {
        let clock = Manual::new();
        let a = account(&clock);
        let stale = Fingerprint::of(b"stale");
        for _ in 0..3 {
            assert_eq!(a.may_present(&stale), Ok(()));
            a.refused(&stale, true, "bad password");
            clock.advance(4 * MINUTE);
        }
        match a.may_present(&stale) {
            Err(Held::Budget { .. }) => {}
            other => panic!("{other:?}"),
        }
        // An admin writes a new secret: it goes at once, once.
        let fixed = Fingerprint::of(b"the new one");
        assert_eq!(a.may_present(&fixed), Ok(()));
        a.refused(&fixed, true, "bad password: a typo");
        assert!(
            a.may_present(&fixed).is_err(),
            "then held like any refused secret"
        );
        assert!(a.may_present(&stale).is_err());
        clock.advance(WINDOW);
        assert_eq!(a.may_present(&stale), Ok(()), "the window passed");
    }

    #[test]
    fn refusals_that_do_not_count_hold_the_secret_but_spend_no_budget() {
        let clock = Manual::new();
        let a = account(&clock);
        let secret = Fingerprint::of(b"s");
        for _ in 0..10 {
            clock.advance(2 * 60 * MINUTE);
            assert_eq!(a.may_present(&secret), Ok(()));
            a.refused(&secret, false, "account disabled");
        }
        assert_eq!(a.status(&secret).failures_in_window, 0);
        assert!(matches!(a.may_present(&secret), Err(Held::Refused { .. })));
    }

    #[test]
    fn a_destination_refusal_spends_budget_and_a_success_gives_it_back() {
        let clock = Manual::new();
        let a = account(&clock);
        let secret = Fingerprint::of(b"s");
        a.may_have_counted(&secret);
        a.may_have_counted(&secret);
        assert_eq!(a.may_present(&secret), Ok(()));
        a.may_have_counted(&secret);
        assert!(matches!(a.may_present(&secret), Err(Held::Budget { .. })));
        a.accepted();
        assert_eq!(a.may_present(&secret), Ok(()));
    }

    #[test]
    fn the_first_refusal_of_a_secret_is_news_the_next_are_not() {
        let clock = Manual::new();
        let a = account(&clock);
        let secret = Fingerprint::of(b"s");
        assert_eq!(a.refused(&secret, true, "x"), Refusal::First);
        clock.advance(MINUTE);
        assert_eq!(a.refused(&secret, true, "x"), Refusal::Again);
        assert_eq!(
            a.refused(&Fingerprint::of(b"other"), true, "x"),
            Refusal::First
        );
        assert_eq!(format!("{secret:?}"), "Fingerprint(<not shown>)");
    }
}
