//! Tamper evidence for the JSON audit: each record carries `chain`, the SHA-256 of the previous
//! record's chain value and this record's bytes (HMAC-SHA-256 with `audit.key_file`: then
//! someone who can write the log but not read the key cannot rewrite history). The chain runs
//! across restarts (`start` records carry the last value found) and rotation (`rotate`
//! records carry the previous file's last value). [`verify`] walks files given in order.

use std::path::Path;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::record::{AuditEvent, EventKind};

/// The chain value before the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Computes chain values: keyed (HMAC) or not.
#[derive(Clone)]
pub struct Chainer {
    key: Option<zeroize::Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Chainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.key.is_some() {
            "Chainer(HMAC-SHA-256, key redacted)"
        } else {
            "Chainer(SHA-256)"
        })
    }
}

impl Chainer {
    pub fn new(key: Option<Vec<u8>>) -> Chainer {
        Chainer {
            key: key.map(zeroize::Zeroizing::new),
        }
    }

    /// The value that follows `previous` for a record whose bytes (without `chain`) are
    /// `record`.
    pub fn next(&self, previous: &str, record: &[u8]) -> String {
        match &self.key {
            Some(key) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .expect("HMAC takes keys of any length");
                mac.update(previous.as_bytes());
                mac.update(record);
                hex::encode(mac.finalize().into_bytes())
            }
            None => {
                let mut h = Sha256::new();
                h.update(previous.as_bytes());
                h.update(record);
                hex::encode(h.finalize())
            }
        }
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
}

struct Line {
    file: String,
    number: usize,
    bytes: String,
    chain: String,
    event: AuditEvent,
}

/// Checks the chain over `files`, oldest first.
pub fn verify(files: &[&Path], chainer: &Chainer) -> Result<Verdict, String> {
    let mut lines = Vec::new();
    let mut verdict = Verdict {
        files: files.len(),
        ..Verdict::default()
    };
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
                    verdict.problem = Some(Break {
                        file: path.display().to_string(),
                        line: i + 1,
                        seq: None,
                        kind: BreakKind::Unreadable,
                        detail: "not a chained JSON audit record".to_string(),
                    });
                    return Ok(verdict);
                }
            }
        }
    }
    let mut previous: Option<String> = None;
    let mut last_seq: Option<u64> = None;
    for (i, line) in lines.iter().enumerate() {
        verdict.records += 1;
        let at = |kind, detail: String| Break {
            file: line.file.clone(),
            line: line.number,
            seq: Some(line.event.seq),
            kind,
            detail,
        };
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
                verdict.problem = Some(at(
                    BreakKind::Unlinked,
                    format!(
                        "a new run that could not continue the chain: {}",
                        line.event.detail.as_deref().unwrap_or("no reason given")
                    ),
                ));
                return Ok(verdict);
            }
            (Some(prev), true, Some(from)) if from != prev => {
                verdict.problem = Some(at(
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
        if chainer.next(&expected_previous, line.bytes.as_bytes()) != line.chain {
            let kind = diagnose(&lines, i, &expected_previous, last_seq, chainer);
            verdict.problem = Some(at(kind, String::new()));
            if let Some(p) = verdict.problem.as_mut() {
                p.detail = match p.kind {
                    BreakKind::Edited => "the record was changed after it was written".into(),
                    BreakKind::Inserted => "the record was not written here by Passerelle".into(),
                    BreakKind::Reordered => "the records are not in their written order".into(),
                    BreakKind::Removed => "records are missing before this one".into(),
                    _ => "the chain does not hold".into(),
                };
            }
            return Ok(verdict);
        }
        if let Some(last) = last_seq {
            let seq = line.event.seq;
            if seq <= last {
                verdict.problem = Some(at(BreakKind::Reordered, format!("seq {seq} after {last}")));
                return Ok(verdict);
            }
            verdict.seq_gaps += seq - last - 1;
        }
        last_seq = Some(line.event.seq);
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
    chainer: &Chainer,
) -> BreakKind {
    let line = &lines[i];
    let next = lines.get(i + 1);
    let links = |previous: &str, l: &Line| chainer.next(previous, l.bytes.as_bytes()) == l.chain;
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
    use super::*;

    fn record(seq: u64) -> Vec<u8> {
        serde_json::to_vec(&AuditEvent {
            seq,
            event: if seq == 1 {
                EventKind::Start
            } else {
                EventKind::Request
            },
            chain_from: (seq == 1).then(|| GENESIS.to_string()),
            ..AuditEvent::default()
        })
        .unwrap()
    }

    fn log(n: u64, chainer: &Chainer) -> Vec<String> {
        let mut previous = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let mut line = Vec::new();
                previous = chainer.seal(&previous, &record(seq), &mut line);
                String::from_utf8(line).unwrap()
            })
            .collect()
    }

    fn check(lines: &[String], chainer: &Chainer) -> Verdict {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        verify(&[&path], chainer).unwrap()
    }

    #[test]
    fn an_untouched_log_is_intact_and_every_tampering_is_named() {
        let c = Chainer::new(None);
        let lines = log(6, &c);
        assert!(check(&lines, &c).intact());

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("\"duration_ms\":0", "\"duration_ms\":5");
        let v = check(&edited, &c);
        assert_eq!(
            v.problem.as_ref().map(|p| (p.kind, p.seq)),
            Some((BreakKind::Edited, Some(3)))
        );

        let mut removed = lines.clone();
        removed.remove(3);
        let v = check(&removed, &c);
        assert_eq!(
            v.problem.as_ref().map(|p| (p.kind, p.seq)),
            Some((BreakKind::Removed, Some(5)))
        );

        let mut inserted = lines.clone();
        let forged = inserted[2].clone();
        inserted.insert(3, forged.replace("\"seq\":3", "\"seq\":4"));
        let v = check(&inserted, &c);
        assert_eq!(
            v.problem.as_ref().map(|p| p.kind),
            Some(BreakKind::Inserted)
        );

        let mut swapped = lines.clone();
        swapped.swap(2, 3);
        let v = check(&swapped, &c);
        assert_eq!(
            v.problem.as_ref().map(|p| p.kind),
            Some(BreakKind::Reordered)
        );
    }

    #[test]
    fn a_key_makes_the_chain_unforgeable_without_it() {
        let keyed = Chainer::new(Some(b"a key only the writer reads".to_vec()));
        let lines = log(4, &keyed);
        assert!(check(&lines, &keyed).intact());
        assert!(!check(&lines, &Chainer::new(None)).intact());
        assert!(!check(&lines, &Chainer::new(Some(b"another key".to_vec()))).intact());
        assert!(!format!("{keyed:?}").contains("writer reads"));
    }
}
