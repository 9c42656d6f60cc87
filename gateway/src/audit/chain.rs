//! Tamper evidence for the JSON audit: each record carries `chain`, the SHA-256 of the previous
//! record's chain value and this record's bytes (HMAC-SHA-256 with `audit.key_file`: then
//! someone who can write the log but not read the key cannot rewrite history). The chain runs
//! across restarts (`start` records carry the last value found) and rotation (`rotate`
//! records carry the previous file's last value). [`verify`] walks files given in order.

use std::path::Path;

use serde::Serialize;

pub use super::key::value;
use super::key::{epoch_at, Key, Known, EPOCH};
use crate::record::{AuditEvent, EventKind};

/// The chain value before the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A record sealed more than this many epochs (minutes) after it ended is taken for one
/// re-signed after the fact: an honest writer seals within milliseconds of the end, unless its
/// sink failed (records then wait unsealed until it recovers). It is also what an intruder can
/// rewrite unseen: the last minutes before they took the key.
pub const LATE_EPOCHS: u64 = 2;

/// The writer's side: computes chain values, keyed (HMAC) or not.
#[derive(Debug, Default)]
pub struct Chainer {
    key: Option<Key>,
}

impl Chainer {
    pub fn new(key: Option<Key>) -> Chainer {
        Chainer { key }
    }

    /// The epoch records sealed now carry, with a forward-secure key.
    pub fn epoch(&self) -> Option<u64> {
        self.key.as_ref().and_then(Key::epoch)
    }

    /// When the key must next move forward (none: it never does).
    pub fn next_step(&self) -> Option<std::time::SystemTime> {
        self.key.as_ref().and_then(Key::next_step)
    }

    /// Moves a forward-secure key to the epoch covering now; said once per failure to erase.
    pub fn advance(&mut self, now: std::time::SystemTime) {
        if let Some(key) = &mut self.key {
            if let Err(e) = key.advance(now) {
                tracing::error!(error = %e, "audit.key.not_erased: the key moved on in memory, but its file still holds an older one");
            }
        }
    }

    /// The value that follows `previous` for a record whose bytes (without `chain`) are
    /// `record`.
    pub fn next(&self, previous: &str, record: &[u8]) -> String {
        value(self.key.as_ref().map(Key::bytes), previous, record)
    }

    /// A record's line: its JSON bytes with the chain value appended as the last field.
    pub fn seal(&self, previous: &str, json: &[u8], out: &mut Vec<u8>) -> String {
        let chain = self.next(previous, json);
        out.extend_from_slice(&json[..json.len() - 1]);
        out.extend_from_slice(b",\"chain\":\"");
        out.extend_from_slice(chain.as_bytes());
        out.extend_from_slice(b"\"}");
        chain
    }
}

/// Splits a written line into the bytes that were chained and the chain value.
fn unseal(line: &str) -> Option<(String, &str)> {
    let at = line.rfind(",\"chain\":\"")?;
    let value = line[at..]
        .strip_prefix(",\"chain\":\"")?
        .strip_suffix("\"}")?;
    if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((format!("{}}}", &line[..at]), value))
}

/// The last chain value in a file's tail, to continue from at start.
pub fn last_value(path: &Path) -> Result<Option<String>, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Ok(None);
    }
    let start = len.saturating_sub(256 * 1024);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| e.to_string())?;
    let mut tail = String::new();
    file.read_to_string(&mut tail)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match tail
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(unseal)
    {
        Some((_, value)) => Ok(Some(value.to_string())),
        None => Err(format!(
            "the last line of {} carries no chain value (another format, or cut)",
            path.display()
        )),
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    pub files: usize,
    pub records: u64,
    /// Sequence numbers missing within a run (lost records, or dropped with `on_full = "drop"`).
    pub seq_gaps: u64,
    /// Where the chain could not be followed back (the first file given starts mid-chain).
    pub starts_from: Option<String>,
    /// Records signed before the epoch of the key given, taken on trust (only the initial
    /// key checks them).
    pub unchecked: u64,
    /// What this verification cannot know, given what it was given.
    pub limits: Vec<String>,
    /// The first break, if any: the chain does not hold from there on.
    pub problem: Option<Break>,
}

impl Verdict {
    /// Nothing edited, removed, inserted or reordered, and no record missing.
    pub fn intact(&self) -> bool {
        self.problem.is_none() && self.seq_gaps == 0
    }
}

#[derive(Debug, Serialize)]
pub struct Break {
    pub file: String,
    pub line: usize,
    pub seq: Option<u64>,
    pub kind: BreakKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// The record's bytes changed after it was written.
    Edited,
    /// Records are missing before this one.
    Removed,
    /// This record was not written by the writer in this place.
    Inserted,
    /// Records are out of their written order.
    Reordered,
    /// A line that is not a chained record.
    Unreadable,
    /// A run that could not continue the chain (its start record says why).
    Unlinked,
    /// Signed with a key of a later epoch than its time allows: re-signed after the fact by
    /// someone holding a later key.
    Resigned,
}

/// A chained record as read from a file.
pub(crate) struct Line {
    pub file: String,
    pub number: usize,
    pub bytes: String,
    pub chain: String,
    pub event: AuditEvent,
}

impl Line {
    fn at(&self, kind: BreakKind, detail: String) -> Break {
        Break {
            file: self.file.clone(),
            line: self.number,
            seq: Some(self.event.seq),
            kind,
            detail,
        }
    }

    /// The epoch covering the record's end (its start plus its duration).
    fn end_epoch(&self, origin: u64) -> Option<u64> {
        let start = humantime::parse_rfc3339_weak(&self.event.ts).ok()?;
        Some(epoch_at(
            origin,
            start + std::time::Duration::from_millis(self.event.duration_ms),
        ))
    }
}

/// Reads chained records from files, oldest first; the first line that is not one ends it.
pub(crate) fn read_lines(files: &[&Path]) -> Result<(Vec<Line>, Option<Break>), String> {
    let mut lines = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let parsed = unseal(raw).and_then(|(bytes, chain)| {
                let event = serde_json::from_str::<AuditEvent>(&bytes).ok()?;
                Some(Line {
                    file: path.display().to_string(),
                    number: i + 1,
                    chain: chain.to_string(),
                    bytes,
                    event,
                })
            });
            match parsed {
                Some(line) => lines.push(line),
                None => {
                    let problem = Break {
                        file: path.display().to_string(),
                        line: i + 1,
                        seq: None,
                        kind: BreakKind::Unreadable,
                        detail: "not a chained JSON audit record".to_string(),
                    };
                    return Ok((lines, Some(problem)));
                }
            }
        }
    }
    Ok((lines, None))
}

/// Checks the chain over `files`, oldest first, with what is known of the key.
pub fn verify(files: &[&Path], known: &Known) -> Result<Verdict, String> {
    let mut verdict = Verdict {
        files: files.len(),
        ..Verdict::default()
    };
    let (lines, unreadable) = read_lines(files)?;
    if unreadable.is_some() {
        verdict.problem = unreadable;
        return Ok(verdict);
    }
    let keyed = lines.iter().any(|l| l.event.key_epoch.is_some());
    match known {
        Known::Keyless => verdict.limits.push(
            "no key: whoever can write these files can rewrite them and recompute every chain value; only the values held by a collector (--anchors) can tell".into(),
        ),
        Known::Static(_) => verdict.limits.push(
            "a static key: whoever holds it (the host, if it was taken) can rewrite every record; only the values held by a collector (--anchors) can tell".into(),
        ),
        Known::Evolving { base, .. } if *base > 0 => verdict.limits.push(format!(
            "the key file's key (epoch {base}) checks records from its epoch on only; the initial key (--key) checks them all"
        )),
        Known::Evolving { .. } => {}
    }
    if keyed && !matches!(known, Known::Evolving { .. }) {
        verdict.limits.push(
            "these records were signed by a forward-secure key: give the initial key (--key) or the key file (--key-file)".into(),
        );
    }
    verdict.limits.push(
        "records removed from the end of the last file leave no trace in the files themselves: only --anchors sees them".into(),
    );
    let mut previous: Option<String> = None;
    let mut last_seq: Option<u64> = None;
    let mut last_epoch: Option<u64> = None;
    for (i, line) in lines.iter().enumerate() {
        verdict.records += 1;
        let continues = matches!(line.event.event, EventKind::Start | EventKind::Rotate);
        let expected_previous = match (&previous, continues, &line.event.chain_from) {
            // The first record given: trust where it says it starts.
            (None, _, from) => {
                let from = from.clone().unwrap_or_else(|| GENESIS.to_string());
                if from != GENESIS {
                    verdict.starts_from = Some(from.clone());
                }
                from
            }
            (Some(_), true, None) => {
                verdict.problem = Some(line.at(
                    BreakKind::Unlinked,
                    format!(
                        "a new run that could not continue the chain: {}",
                        line.event.detail.as_deref().unwrap_or("no reason given")
                    ),
                ));
                return Ok(verdict);
            }
            (Some(prev), true, Some(from)) if from != prev => {
                verdict.problem = Some(line.at(
                    BreakKind::Removed,
                    "records are missing before this run or file: it continues another chain value"
                        .to_string(),
                ));
                return Ok(verdict);
            }
            (Some(prev), _, _) => prev.clone(),
        };
        if line.event.event == EventKind::Start {
            last_seq = None;
        }
        let epoch = line.event.key_epoch;
        match known.chain_value(epoch, &expected_previous, line.bytes.as_bytes()) {
            Err(super::key::BeforeBase) => verdict.unchecked += 1,
            Ok(value) if value != line.chain => {
                // A record before this one signed in a later epoch than this one's: it was
                // re-signed, and this one no longer links to it.
                if let (Some(before), Some(at), Some(prev_line)) =
                    (last_epoch, epoch, i.checked_sub(1).map(|j| &lines[j]))
                {
                    if before > at {
                        verdict.problem = Some(prev_line.at(
                            BreakKind::Resigned,
                            format!("signed with the key of epoch {before}, later than the next record's ({at}): rewritten after the key had moved on"),
                        ));
                        return Ok(verdict);
                    }
                }
                let kind = diagnose(&lines, i, &expected_previous, last_seq, known);
                let detail = match kind {
                    BreakKind::Edited => "the record was changed after it was written",
                    BreakKind::Inserted => "the record was not written here by Passerelle",
                    BreakKind::Reordered => "the records are not in their written order",
                    BreakKind::Removed => "records are missing before this one",
                    _ => "the chain does not hold",
                };
                verdict.problem = Some(line.at(kind, detail.to_string()));
                return Ok(verdict);
            }
            Ok(_) => {
                if let (Some(e), Some(origin)) = (epoch, known.origin()) {
                    if let Some(end) = line.end_epoch(origin) {
                        if e > end + LATE_EPOCHS {
                            verdict.problem = Some(line.at(
                                BreakKind::Resigned,
                                format!(
                                    "signed with the key of epoch {e}, {} minutes after the record ended: re-signed after the fact by whoever held that later key (or the writer was held back that long: audit.write.failed in its log)",
                                    (e - end) * EPOCH.as_secs() / 60
                                ),
                            ));
                            return Ok(verdict);
                        }
                    }
                    if last_epoch.is_some_and(|before| before > e) {
                        let prev_line = &lines[i - 1];
                        verdict.problem = Some(prev_line.at(
                            BreakKind::Resigned,
                            format!("signed with the key of epoch {}, later than the next record's ({e})", last_epoch.unwrap_or_default()),
                        ));
                        return Ok(verdict);
                    }
                }
            }
        }
        if let Some(last) = last_seq {
            let seq = line.event.seq;
            if seq <= last {
                verdict.problem =
                    Some(line.at(BreakKind::Reordered, format!("seq {seq} after {last}")));
                return Ok(verdict);
            }
            verdict.seq_gaps += seq - last - 1;
        }
        last_seq = Some(line.event.seq);
        last_epoch = epoch.or(last_epoch);
        previous = Some(line.chain.clone());
    }
    Ok(verdict)
}

/// What the break at `i` is, from how the records around it chain.
fn diagnose(
    lines: &[Line],
    i: usize,
    expected_previous: &str,
    last_seq: Option<u64>,
    known: &Known,
) -> BreakKind {
    let line = &lines[i];
    let next = lines.get(i + 1);
    let links = |previous: &str, l: &Line| {
        known
            .chain_value(l.event.key_epoch, previous, l.bytes.as_bytes())
            .is_ok_and(|v| v == l.chain)
    };
    // Another record's value leads to this one: it is genuine, in the wrong place.
    if lines.iter().any(|l| links(&l.chain, line)) {
        return BreakKind::Reordered;
    }
    // The next record follows on from before this one: this one was slipped in.
    if next.is_some_and(|n| links(expected_previous, n)) {
        return BreakKind::Inserted;
    }
    // Numbers are missing before it: records were taken out.
    if last_seq.is_some_and(|last| line.event.seq > last + 1) {
        return BreakKind::Removed;
    }
    // In sequence, genuine nowhere else, and the next record does not skip it: its bytes
    // changed after it was written.
    BreakKind::Edited
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;

    fn record(seq: u64, ts: SystemTime, key_epoch: Option<u64>) -> Vec<u8> {
        serde_json::to_vec(&AuditEvent {
            seq,
            ts: humantime::format_rfc3339_millis(ts).to_string(),
            event: if seq == 1 {
                EventKind::Start
            } else {
                EventKind::Request
            },
            chain_from: (seq == 1).then(|| GENESIS.to_string()),
            key_epoch,
            ..AuditEvent::default()
        })
        .unwrap()
    }

    /// `n` records, one every `every`, sealed as the writer does (the key moving forward).
    fn log(n: u64, chainer: &mut Chainer, t0: SystemTime, every: Duration) -> Vec<String> {
        let mut previous = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let at = t0 + every * (seq as u32 - 1);
                chainer.advance(at);
                let mut line = Vec::new();
                previous = chainer.seal(&previous, &record(seq, at, chainer.epoch()), &mut line);
                String::from_utf8(line).unwrap()
            })
            .collect()
    }

    fn check(lines: &[String], known: &Known) -> Verdict {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        verify(&[&path], known).unwrap()
    }

    fn broken(v: &Verdict) -> Option<(BreakKind, Option<u64>)> {
        v.problem.as_ref().map(|p| (p.kind, p.seq))
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_764_763_200)
    }

    #[test]
    fn an_untouched_log_is_intact_and_every_tampering_is_named() {
        let lines = log(6, &mut Chainer::new(None), t0(), Duration::from_secs(1));
        let c = Known::Keyless;
        let v = check(&lines, &c);
        assert!(v.intact());
        assert!(
            v.limits.iter().any(|l| l.contains("--anchors")),
            "{:?}",
            v.limits
        );

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("\"duration_ms\":0", "\"duration_ms\":5");
        assert_eq!(
            broken(&check(&edited, &c)),
            Some((BreakKind::Edited, Some(3)))
        );

        let mut removed = lines.clone();
        removed.remove(3);
        assert_eq!(
            broken(&check(&removed, &c)),
            Some((BreakKind::Removed, Some(5)))
        );

        let mut inserted = lines.clone();
        let forged = inserted[2].clone();
        inserted.insert(3, forged.replace("\"seq\":3", "\"seq\":4"));
        assert_eq!(
            broken(&check(&inserted, &c)).map(|b| b.0),
            Some(BreakKind::Inserted)
        );

        let mut swapped = lines.clone();
        swapped.swap(2, 3);
        assert_eq!(
            broken(&check(&swapped, &c)).map(|b| b.0),
            Some(BreakKind::Reordered)
        );
    }

    #[test]
    fn a_key_makes_the_chain_unforgeable_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("static.key");
        std::fs::write(&path, b"a key only the writer reads").unwrap();
        let mut keyed = Chainer::new(Some(Key::load(&path).unwrap()));
        let lines = log(4, &mut keyed, t0(), Duration::from_secs(1));
        assert!(check(&lines, &Known::file(&path).unwrap()).intact());
        assert!(!check(&lines, &Known::Keyless).intact());
        std::fs::write(&path, b"another key, as long").unwrap();
        assert!(!check(&lines, &Known::file(&path).unwrap()).intact());
        assert!(!format!("{keyed:?}").contains("writer reads"));
    }

    #[test]
    fn a_record_re_signed_with_a_later_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let initial = Key::generate(&path, t0()).unwrap();
        let mut writer = Chainer::new(Some(Key::load(&path).unwrap()));
        // Ten records, one a minute: epochs 0 to 9.
        let lines = log(10, &mut writer, t0(), EPOCH);
        let known = Known::initial(&initial).unwrap();
        assert!(check(&lines, &known).intact());

        // The intruder holds the file's key (epoch 9) and rewrites record 3 (epoch 2) with it,
        // then re-signs everything after it so that the chain links.
        let intruder = Known::file(&path).unwrap();
        let mut forged = lines[..2].to_vec();
        let mut previous = unseal(&lines[1]).unwrap().1.to_string();
        for (i, line) in lines[2..].iter().enumerate() {
            let (bytes, _) = unseal(line).unwrap();
            let mut event: AuditEvent = serde_json::from_str(&bytes).unwrap();
            if i == 0 {
                event.path = Some("/what-really-happened-is-gone".into());
            }
            event.key_epoch = Some(9);
            let bytes = serde_json::to_vec(&event).unwrap();
            let value = intruder.chain_value(Some(9), &previous, &bytes).unwrap();
            let mut sealed = bytes[..bytes.len() - 1].to_vec();
            sealed.extend_from_slice(format!(",\"chain\":\"{value}\"}}").as_bytes());
            forged.push(String::from_utf8(sealed).unwrap());
            previous = value;
        }
        let v = check(&forged, &known);
        assert_eq!(broken(&v), Some((BreakKind::Resigned, Some(3))), "{v:?}");
        assert!(v
            .problem
            .unwrap()
            .detail
            .contains("minutes after the record ended"));

        // Only record 3 re-signed: the next one no longer links, and its earlier epoch says why.
        let mut one = lines.clone();
        one[2] = forged[2].clone();
        let v = check(&one, &known);
        assert_eq!(broken(&v), Some((BreakKind::Resigned, Some(3))), "{v:?}");

        // The key file alone cannot check what came before its epoch, and says so.
        let v = check(&lines, &intruder);
        assert!(v.intact());
        assert_eq!(v.unchecked, 9);
        assert!(
            v.limits.iter().any(|l| l.contains("initial key")),
            "{:?}",
            v.limits
        );
    }
}
