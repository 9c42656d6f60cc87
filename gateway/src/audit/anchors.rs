//! `audit verify --anchors`: the local files checked against what a collector received.
//! Every forwarded record carries its run, `seq` and `chain`, so the collector holds the
//! chain's values as they were when they left the box: a local record that no longer has its
//! value was rewritten after it left; one the collector has and the files lack was removed,
//! or cut off with the end of a file. The collected file may be in any of our formats or
//! syslog lines as a collector writes them, one host's records, in the order received.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::chain::{self, Line};
use super::syslog;

/// A record's place as the collector received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub run: String,
    pub seq: u64,
    pub chain: String,
    /// The line in the collected file.
    pub line: usize,
}

/// The run, `seq` and `chain` of one collected line, in whichever format it came: our
/// structured-data element, or a JSON object holding all three (our record, ECS's
/// `passerelle.*`, OCSF's `unmapped.passerelle`, a collector's JSON of either).
pub fn anchor_of(line: &str) -> Option<(String, u64, String)> {
    if let Some(params) = syslog::sd_params(line) {
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        if let (Some(run), Some(seq), Some(chain)) = (get("run"), get("seq"), get("chain")) {
            return Some((run, seq.parse().ok()?, chain));
        }
    }
    let start = line.find('{')?;
    let value = serde_json::Deserializer::from_str(&line[start..])
        .into_iter::<Value>()
        .next()?
        .ok()?;
    find(&value, 0)
}

fn find(value: &Value, depth: usize) -> Option<(String, u64, String)> {
    let object = value.as_object()?;
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_string);
    let seq = object.get("seq").and_then(|v| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    });
    if let (Some(run), Some(seq), Some(chain)) = (text("run"), seq, text("chain")) {
        return Some((run, seq, chain));
    }
    if depth >= 4 {
        return None;
    }
    object.values().find_map(|v| find(v, depth + 1))
}

/// Reads the anchors of a collected file; lines without one (other programs) are counted.
pub fn read(path: &Path) -> Result<(Vec<Anchor>, u64), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut anchors = Vec::new();
    let mut other = 0;
    for (i, line) in text.lines().enumerate() {
        match anchor_of(line) {
            Some((run, seq, chain)) => anchors.push(Anchor {
                run,
                seq,
                chain,
                line: i + 1,
            }),
            None if line.trim().is_empty() => {}
            None => other += 1,
        }
    }
    Ok((anchors, other))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    /// The local record's chain value is not the one it left with.
    Rewritten,
    /// The collector has it, the files lack it, and records after it are still there.
    Removed,
    /// The collector has it, and the files end before it.
    Truncated,
    /// The collector received two different records for the same place.
    Conflicting,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    pub kind: Finding,
    pub run: String,
    pub seq: u64,
    /// Where the local record is (or the last one before where it should be).
    pub file: Option<String>,
    pub line: Option<usize>,
    pub detail: String,
}

/// A run of `seq`s.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Span {
    pub run: String,
    pub from: u64,
    pub to: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct AnchorVerdict {
    /// Records the collector holds (duplicates counted once).
    pub anchored: u64,
    /// Records the collector received more than once (at-least-once delivery).
    pub duplicates: u64,
    /// Local records whose value the collector confirms.
    pub confirmed: u64,
    /// Collected lines that are not Passerelle's records.
    pub other_lines: u64,
    /// Runs at the collector before the files given (older files not given).
    pub runs_before: u64,
    /// The first record the collector contradicts.
    pub problem: Option<Problem>,
    /// Local records never forwarded: after the last the collector has (still in a spool).
    pub never_forwarded: Vec<Span>,
    /// Local records between forwarded ones that the collector lacks (lost on the way: a
    /// plain syslog collector that died with them).
    pub missing_at_collector: Vec<Span>,
}

impl AnchorVerdict {
    pub fn intact(&self) -> bool {
        self.problem.is_none()
    }
}

fn spans(items: impl Iterator<Item = (String, u64)>) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    for (run, seq) in items {
        match out.last_mut() {
            Some(last) if last.run == run && last.to + 1 == seq => last.to = seq,
            _ => out.push(Span {
                run,
                from: seq,
                to: seq,
            }),
        }
    }
    out
}

/// Checks the local records (in file order) against the collected anchors.
pub(crate) fn check(local: &[Line], anchors: &[Anchor], other_lines: u64) -> AnchorVerdict {
    let mut verdict = AnchorVerdict {
        other_lines,
        ..AnchorVerdict::default()
    };
    // The collector's view, first value per place; a second, different value is a conflict.
    let mut held: HashMap<(&str, u64), &Anchor> = HashMap::new();
    for a in anchors {
        match held.get(&(a.run.as_str(), a.seq)) {
            None => {
                held.insert((&a.run, a.seq), a);
            }
            Some(first) if first.chain == a.chain => verdict.duplicates += 1,
            Some(first) => {
                verdict.problem.get_or_insert(Problem {
                    kind: Finding::Conflicting,
                    run: a.run.clone(),
                    seq: a.seq,
                    file: None,
                    line: None,
                    detail: format!(
                        "the collector received two different records for run {} seq {} (collected lines {} and {}): one was forged on the way or by the host",
                        a.run, a.seq, first.line, a.line
                    ),
                });
            }
        }
    }
    verdict.anchored = held.len() as u64;
    let place: HashMap<(&str, u64), usize> = local
        .iter()
        .enumerate()
        .map(|(i, l)| ((l.event.run.as_str(), l.event.seq), i))
        .collect();
    // Each run's records in the files: first and last seq, and where the last one is.
    let mut runs: HashMap<&str, (u64, u64, usize)> = HashMap::new();
    for (i, l) in local.iter().enumerate() {
        let e = runs
            .entry(&l.event.run)
            .or_insert((l.event.seq, l.event.seq, i));
        e.0 = e.0.min(l.event.seq);
        if l.event.seq >= e.1 {
            e.1 = l.event.seq;
            e.2 = i;
        }
    }
    let mut confirmed = vec![false; local.len()];
    let mut problems: BTreeMap<(usize, u64), Problem> = BTreeMap::new();
    // A collected record is "after the files" when it comes after the last one they confirm.
    let last_matched_line = anchors
        .iter()
        .filter(|a| place.contains_key(&(a.run.as_str(), a.seq)))
        .map(|a| a.line)
        .max()
        .unwrap_or(0);
    for a in held.values() {
        match place.get(&(a.run.as_str(), a.seq)) {
            Some(&i) => {
                if local[i].chain == a.chain {
                    confirmed[i] = true;
                } else {
                    problems.insert(
                        (i, a.seq),
                        Problem {
                            kind: Finding::Rewritten,
                            run: a.run.clone(),
                            seq: a.seq,
                            file: Some(local[i].file.clone()),
                            line: Some(local[i].number),
                            detail: format!(
                                "rewritten after it was forwarded: the collector received it with another chain value (collected line {})",
                                a.line
                            ),
                        },
                    );
                }
            }
            None => {
                let (kind, at, detail) = match runs.get(a.run.as_str()) {
                    Some(&(_, last, i)) if a.seq > last => (
                        Finding::Truncated,
                        i,
                        format!("the collector has it (collected line {}), the files end before it: cut off after it was forwarded", a.line),
                    ),
                    Some(&(first, _, i)) if a.seq >= first => {
                        // Where it should be: after the last record of its run before it.
                        let before = local
                            .iter()
                            .enumerate()
                            .filter(|(_, l)| l.event.run == a.run && l.event.seq < a.seq)
                            .map(|(j, _)| j)
                            .max()
                            .unwrap_or(i);
                        (
                            Finding::Removed,
                            before,
                            format!("the collector has it (collected line {}), the files do not, and records after it are still there: removed after it was forwarded", a.line),
                        )
                    }
                    // Before the first of its run in the files: in an older file, not given.
                    Some(_) => continue,
                    None if a.line > last_matched_line => (
                        Finding::Truncated,
                        local.len().saturating_sub(1),
                        format!("the collector has a later run's record (collected line {}) that no file given holds: cut off after it was forwarded", a.line),
                    ),
                    None => continue,
                };
                let at_line = local.get(at);
                problems.insert(
                    (at, a.seq),
                    Problem {
                        kind,
                        run: a.run.clone(),
                        seq: a.seq,
                        file: at_line.map(|l| l.file.clone()),
                        line: at_line.map(|l| l.number),
                        detail,
                    },
                );
            }
        }
    }
    let mut before_runs: Vec<&str> = held
        .keys()
        .map(|(run, _)| *run)
        .filter(|run| !runs.contains_key(run))
        .collect();
    before_runs.sort_unstable();
    before_runs.dedup();
    verdict.runs_before = before_runs
        .iter()
        .filter(|run| {
            held.iter()
                .filter(|((r, _), _)| r == *run)
                .all(|(_, a)| a.line <= last_matched_line)
        })
        .count() as u64;
    if verdict.problem.is_none() {
        verdict.problem = problems.into_values().next();
    }
    verdict.confirmed = confirmed.iter().filter(|&&c| c).count() as u64;
    // Unconfirmed records before the last confirmed one were lost on the way; after it, they
    // were not sent yet.
    let split = confirmed
        .iter()
        .rposition(|&c| c)
        .map_or(0, |last| last + 1);
    let place_of = |l: &Line| (l.event.run.clone(), l.event.seq);
    verdict.missing_at_collector = spans(
        local[..split]
            .iter()
            .zip(&confirmed)
            .filter(|(_, &c)| !c)
            .map(|(l, _)| place_of(l)),
    );
    verdict.never_forwarded = spans(local[split..].iter().map(place_of));
    verdict
}

/// Reads the files and the collected anchors and checks one against the other.
pub fn verify(files: &[&Path], collected: &Path) -> Result<AnchorVerdict, String> {
    let (local, unreadable) = chain::read_lines(files)?;
    if let Some(b) = unreadable {
        return Err(format!(
            "{} line {}: {} (the anchors are checked against chained JSON files)",
            b.file, b.line, b.detail
        ));
    }
    let (anchors, other) = read(collected)?;
    Ok(check(&local, &anchors, other))
}

/// The verdict in a few lines, for a terminal.
pub fn describe(v: &AnchorVerdict) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "anchors: the collector holds {} records ({} received more than once); {} local records confirmed{}",
        v.anchored,
        v.duplicates,
        v.confirmed,
        if v.runs_before > 0 {
            format!("; {} earlier run(s) at the collector are in no file given", v.runs_before)
        } else {
            String::new()
        }
    );
    if let Some(p) = &v.problem {
        let _ = writeln!(
            out,
            "AUDIT ANCHORS CONTRADICT THE FILES at {}{} (run {} seq {}): {:?}, {}",
            p.file.as_deref().unwrap_or("-"),
            p.line.map(|l| format!(" line {l}")).unwrap_or_default(),
            p.run,
            p.seq,
            p.kind,
            p.detail
        );
    }
    let list = |spans: &[Span]| {
        spans
            .iter()
            .take(10)
            .map(|s| {
                if s.from == s.to {
                    format!("{}:{}", s.run, s.from)
                } else {
                    format!("{}:{}-{}", s.run, s.from, s.to)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
            + if spans.len() > 10 { ", …" } else { "" }
    };
    let count = |spans: &[Span]| spans.iter().map(|s| s.to - s.from + 1).sum::<u64>();
    if !v.missing_at_collector.is_empty() {
        let _ = writeln!(
            out,
            "missing at the collector: {} records (run:seq) {} — sent but not received (a plain syslog collector that died with them), or never sent",
            count(&v.missing_at_collector),
            list(&v.missing_at_collector)
        );
    }
    if !v.never_forwarded.is_empty() {
        let _ = writeln!(
            out,
            "never forwarded (yet): {} records (run:seq) {} — after the last one the collector has: still in a spool, or the collector was not asked",
            count(&v.never_forwarded),
            list(&v.never_forwarded)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_are_read_from_every_format() {
        let chain = "c".repeat(64);
        let json = format!(
            r#"{{"seq":3,"schema":"passerelle/2","run":"0a0b0c0d","ts":"t","chain":"{chain}"}}"#
        );
        let ecs = format!(
            r#"{{"@timestamp":"t","passerelle":{{"run":"0a0b0c0d","seq":3,"chain":"{chain}"}}}}"#
        );
        let ocsf = format!(
            r#"{{"class_uid":4002,"unmapped":{{"passerelle":{{"run":"0a0b0c0d","seq":3,"chain":"{chain}"}}}}}}"#
        );
        let rsyslog = format!("2026-12-03T10:00:00+00:00 jump passerelle[42]: {json}");
        let sd = format!(
            r#"<134>1 2026-12-03T10:00:00.000Z jump passerelle 42 audit [passerelle@32473 schema="passerelle/2" run="0a0b0c0d" seq="3" chain="{chain}"] 1764756000.000 0 - TAG_NONE/000 0 START passerelle:audit - HIER_NONE/- -"#
        );
        let syslog_ng = format!(
            r#"{{"SDATA":{{"passerelle@32473":{{"seq":"3","run":"0a0b0c0d","chain":"{chain}"}}}},"MESSAGE":"x"}}"#
        );
        for line in [json, ecs, ocsf, rsyslog, sd, syslog_ng] {
            assert_eq!(
                anchor_of(&line),
                Some(("0a0b0c0d".to_string(), 3, chain.clone())),
                "{line}"
            );
        }
        assert_eq!(anchor_of("Dec  3 10:00:00 jump sshd[1]: Accepted"), None);
    }
}
