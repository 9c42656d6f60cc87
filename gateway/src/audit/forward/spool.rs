//! A stream forwarder's persistent spool: the messages not yet delivered, on disk, in order,
//! bounded. The audit writer appends; the forwarder's sender reads from the last delivered
//! position and moves it forward only once the collector has them (RELP's acknowledgement,
//! or the socket's for plain syslog), so a dead collector or a restart loses nothing.
//!
//! On disk: segments `<first index>.seg` of lines `<ms> <message>` (index: the spool's own
//! count, across runs), and `position`, the index of the first message not yet delivered,
//! replaced atomically. A line cut by a crash is cut off at the next start.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use passerelle_config::SpoolFull;

/// One message read back.
#[derive(Debug, Clone)]
pub struct Message {
    pub index: u64,
    /// When the record was written (ms since the epoch), for the oldest waiting's age.
    pub ms: u64,
    pub bytes: Vec<u8>,
}

/// What became of a message offered to the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Spooled,
    /// Spooled after a full spool had refused messages: how many.
    Room {
        refused: u64,
    },
    /// Refused (`on_full = "refuse_new"`); `first` for the first of a run of refusals.
    Refused {
        first: bool,
    },
    /// Spooled after dropping this many of the oldest (`on_full = "drop_oldest"`).
    DroppedOldest(u64),
    /// The disk refused the write.
    Failed(String),
}

struct Segment {
    first: u64,
    count: u64,
    bytes: u64,
}

struct SpoolState {
    /// Oldest first; the last one is written to.
    segments: VecDeque<Segment>,
    writer: Option<File>,
    /// The first message not yet delivered.
    read: u64,
    bytes: u64,
    /// When the message at `read` was written, when known.
    oldest_ms: Option<u64>,
    refused_run: u64,
    refused: u64,
    dropped: u64,
}

impl SpoolState {
    fn end(&self) -> u64 {
        self.segments
            .back()
            .map_or(self.read, |s| s.first + s.count)
    }
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    on_full: SpoolFull,
    state: Mutex<SpoolState>,
    wake: Condvar,
}

/// Where a reader is: the next message's index, and its segment and offset.
#[derive(Debug, Default)]
pub struct Cursor {
    index: u64,
    segment: u64,
    offset: u64,
    file: Option<BufReader<File>>,
}

impl Cursor {
    /// The next message's index.
    pub fn index(&self) -> u64 {
        self.index
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, finding where delivery stands.
    pub fn open(dir: &Path, max_bytes: u64, on_full: SpoolFull) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        for first in firsts {
            let path = segment_path(dir, first);
            let mut data = Vec::new();
            File::open(&path)?.read_to_end(&mut data)?;
            let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < data.len() {
                tracing::warn!(file = %path.display(), "audit.spool.cut_line: a line cut by a crash is dropped (it is in the local record)");
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(whole as u64)?;
            }
            let count = data[..whole].iter().filter(|&&b| b == b'\n').count() as u64;
            if count == 0 {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            segments.push_back(Segment {
                first,
                count,
                bytes: whole as u64,
            });
        }
        let start = segments.front().map_or(0, |s| s.first);
        let read = std::fs::read_to_string(dir.join("position"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(start);
        let mut state = SpoolState {
            bytes: segments.iter().map(|s| s.bytes).sum(),
            segments,
            writer: None,
            read,
            oldest_ms: None,
            refused_run: 0,
            refused: 0,
            dropped: 0,
        };
        let end = state.end();
        state.read = state.read.clamp(start, end.max(start));
        let spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 * 1024, 16 << 20),
            on_full,
            state: Mutex::new(state),
            wake: Condvar::new(),
        };
        {
            let mut state = spool.lock();
            spool.forget_delivered(&mut state);
            if let Some(last) = state.segments.back() {
                let path = segment_path(dir, last.first);
                state.writer = Some(OpenOptions::new().append(true).open(path)?);
            }
        }
        Ok(spool)
    }

    /// The standing of the spool in `dir`, read without changing anything.
    pub fn inspect(dir: &Path) -> std::io::Result<Standing> {
        let mut segments: Vec<(u64, Vec<u8>)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Some(first) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            segments.push((first, std::fs::read(entry.path())?));
        }
        segments.sort_unstable_by_key(|(first, _)| *first);
        let start = segments.first().map_or(0, |(f, _)| *f);
        let read = std::fs::read_to_string(dir.join("position"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(start);
        let mut standing = Standing::default();
        for (first, data) in &segments {
            standing.bytes += data.len() as u64;
            for (i, line) in data.split(|&b| b == b'\n').enumerate() {
                let index = first + i as u64;
                if index < read || line.is_empty() {
                    continue;
                }
                if standing.waiting == 0 {
                    standing.oldest_ms = std::str::from_utf8(line)
                        .ok()
                        .and_then(|l| l.split(' ').next()?.parse().ok());
                }
                standing.waiting += 1;
            }
        }
        Ok(standing)
    }

    fn lock(&self) -> MutexGuard<'_, SpoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a message (one line: it holds no line break).
    pub fn push(&self, ms: u64, message: &[u8]) -> Pushed {
        let line_len = (ms.to_string().len() + 2 + message.len()) as u64;
        let mut state = self.lock();
        let mut dropped = 0;
        while state.bytes + line_len > self.max_bytes {
            match self.on_full {
                SpoolFull::RefuseNew => {
                    state.refused += 1;
                    state.refused_run += 1;
                    return Pushed::Refused {
                        first: state.refused_run == 1,
                    };
                }
                SpoolFull::DropOldest => {
                    if state.segments.len() == 1 {
                        // The oldest is the one being written: start another first.
                        state.writer = None;
                    }
                    if state.segments.is_empty() {
                        break;
                    }
                    dropped += self.drop_oldest(&mut state);
                }
            }
        }
        let new_segment = state.writer.is_none()
            || state
                .segments
                .back()
                .is_none_or(|s| s.bytes >= self.segment_bytes);
        if new_segment {
            let first = state.end();
            let path = segment_path(&self.dir, first);
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(file) => {
                    if let Some(old) = state.writer.replace(file) {
                        let _ = old.sync_data();
                    }
                    state.segments.push_back(Segment {
                        first,
                        count: 0,
                        bytes: 0,
                    });
                }
                Err(e) => return Pushed::Failed(format!("{}: {e}", path.display())),
            }
        }
        let mut line = Vec::with_capacity(line_len as usize);
        line.extend_from_slice(ms.to_string().as_bytes());
        line.push(b' ');
        line.extend_from_slice(message);
        line.push(b'\n');
        let written = match state.writer.as_mut() {
            Some(file) => file.write_all(&line),
            None => Err(std::io::Error::other("no segment open")),
        };
        if let Err(e) = written {
            // Whatever part went to disk is cut off at the next start.
            state.writer = None;
            return Pushed::Failed(e.to_string());
        }
        let empty = state.read == state.end();
        if let Some(last) = state.segments.back_mut() {
            last.count += 1;
            last.bytes += line_len;
        }
        state.bytes += line_len;
        if empty {
            state.oldest_ms = Some(ms);
        }
        self.wake.notify_all();
        let refused = std::mem::take(&mut state.refused_run);
        match (dropped, refused) {
            (0, 0) => Pushed::Spooled,
            (0, refused) => Pushed::Room { refused },
            (dropped, _) => Pushed::DroppedOldest(dropped),
        }
    }

    /// Drops the oldest segment; returns how many undelivered messages went with it.
    fn drop_oldest(&self, state: &mut SpoolState) -> u64 {
        let Some(oldest) = state.segments.pop_front() else {
            return 0;
        };
        let _ = std::fs::remove_file(segment_path(&self.dir, oldest.first));
        state.bytes -= oldest.bytes;
        let end = oldest.first + oldest.count;
        let lost = end.saturating_sub(state.read.max(oldest.first));
        if state.read < end {
            state.read = state.segments.front().map_or(end, |s| s.first);
            state.oldest_ms = None;
            self.save_position(state.read);
        }
        state.dropped += lost;
        lost
    }

    /// The collector has everything before `upto`: it need not be kept any longer.
    pub fn commit(&self, upto: u64, next_ms: Option<u64>) {
        let mut state = self.lock();
        if upto <= state.read {
            return;
        }
        state.read = upto.min(state.end());
        state.oldest_ms = if state.read == state.end() {
            None
        } else {
            next_ms
        };
        self.save_position(state.read);
        self.forget_delivered(&mut state);
    }

    /// Removes the segments wholly delivered (not the one being written).
    fn forget_delivered(&self, state: &mut SpoolState) {
        while state.segments.len() > 1 || (state.writer.is_none() && !state.segments.is_empty()) {
            let Some(front) = state.segments.front() else {
                break;
            };
            if front.first + front.count > state.read {
                break;
            }
            let _ = std::fs::remove_file(segment_path(&self.dir, front.first));
            state.bytes -= front.bytes;
            state.segments.pop_front();
        }
    }

    fn save_position(&self, read: u64) {
        let tmp = self.dir.join("position.next");
        let saved = std::fs::write(&tmp, format!("{read}\n"))
            .and_then(|()| std::fs::rename(&tmp, self.dir.join("position")));
        if let Err(e) = saved {
            tracing::error!(dir = %self.dir.display(), error = %e, "audit.spool.position_not_saved: messages may be sent again after a restart");
        }
    }

    /// Puts the cursor back at the first message not yet delivered.
    pub fn rewind(&self, cursor: &mut Cursor) {
        let state = self.lock();
        cursor.index = state.read;
        cursor.file = None;
        cursor.segment = u64::MAX;
        cursor.offset = 0;
    }

    /// Up to `max` messages from the cursor on, waiting up to `wait` for one when there are
    /// none yet. Returns fewer (none) on timeout or when woken by [`Spool::wake`].
    pub fn fetch(
        &self,
        cursor: &mut Cursor,
        max: usize,
        wait: Duration,
    ) -> std::io::Result<Vec<Message>> {
        let (segment, available, limit) = {
            let mut state = self.lock();
            if cursor.index >= state.end() && !wait.is_zero() {
                state = self
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if cursor.index < state.read {
                // Messages dropped under the cursor (drop_oldest): go on from what is left.
                cursor.index = state.read;
                cursor.segment = u64::MAX;
            }
            let Some(segment) = state
                .segments
                .iter()
                .find(|s| s.first <= cursor.index && cursor.index < s.first + s.count)
            else {
                return Ok(Vec::new());
            };
            (
                segment.first,
                segment.first + segment.count - cursor.index,
                segment.bytes,
            )
        };
        if cursor.segment != segment || cursor.file.is_none() {
            let file = File::open(segment_path(&self.dir, segment))?;
            let mut reader = BufReader::new(file);
            // Skip to the cursor's message within the segment.
            let mut offset = 0u64;
            let mut line = Vec::new();
            for _ in segment..cursor.index {
                line.clear();
                offset += reader.read_until(b'\n', &mut line)? as u64;
            }
            cursor.segment = segment;
            cursor.offset = offset;
            cursor.file = Some(reader);
        }
        let Some(reader) = cursor.file.as_mut() else {
            return Ok(Vec::new());
        };
        reader.seek(SeekFrom::Start(cursor.offset))?;
        let mut out = Vec::new();
        let mut line = Vec::new();
        while out.len() < max && (out.len() as u64) < available && cursor.offset < limit {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            cursor.offset += n as u64;
            line.pop();
            let (ms, bytes) = match line.iter().position(|&b| b == b' ') {
                Some(i) => (
                    std::str::from_utf8(&line[..i])
                        .ok()
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0),
                    line[i + 1..].to_vec(),
                ),
                None => (0, line.clone()),
            };
            out.push(Message {
                index: cursor.index,
                ms,
                bytes,
            });
            cursor.index += 1;
        }
        if let Some(first) = out.first() {
            self.note_oldest(first.index, first.ms);
        }
        Ok(out)
    }

    /// Wakes a reader waiting in [`Spool::fetch`].
    pub fn wake(&self) {
        self.wake.notify_all();
    }

    /// Messages not yet delivered, bytes on disk, the oldest's time, refused and dropped so
    /// far (this run).
    pub fn standing(&self) -> Standing {
        let state = self.lock();
        Standing {
            waiting: state.end() - state.read,
            bytes: state.bytes,
            oldest_ms: state.oldest_ms,
            refused: state.refused,
            dropped: state.dropped,
        }
    }

    /// Sets the oldest waiting message's time, once a reader has read it.
    pub fn note_oldest(&self, index: u64, ms: u64) {
        let mut state = self.lock();
        if state.read == index {
            state.oldest_ms = Some(ms);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    pub waiting: u64,
    pub bytes: u64,
    pub oldest_ms: Option<u64>,
    pub refused: u64,
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch_all(spool: &Spool, cursor: &mut Cursor) -> Vec<(u64, String)> {
        let mut all = Vec::new();
        loop {
            let got = spool.fetch(cursor, 7, Duration::ZERO).unwrap();
            if got.is_empty() {
                return all;
            }
            all.extend(
                got.into_iter()
                    .map(|m| (m.index, String::from_utf8(m.bytes).unwrap())),
            );
        }
    }

    #[test]
    fn what_is_not_delivered_survives_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, SpoolFull::RefuseNew).unwrap();
        for i in 0..100 {
            assert_eq!(
                spool.push(1000 + i, format!("m{i}").as_bytes()),
                Pushed::Spooled
            );
        }
        let mut cursor = Cursor::default();
        spool.rewind(&mut cursor);
        let first = spool.fetch(&mut cursor, 40, Duration::ZERO).unwrap();
        assert_eq!(first.len(), 40);
        assert_eq!(first[39].bytes, b"m39");
        spool.commit(30, Some(first[30].ms));
        assert_eq!(spool.standing().waiting, 70);
        assert_eq!(spool.standing().oldest_ms, Some(1030));
        drop(spool);
        // A crash in the middle of a line.
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .unwrap()
            .path();
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(b"1234 half a li")
            .unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, SpoolFull::RefuseNew).unwrap();
        assert_eq!(spool.standing().waiting, 70);
        // Read from disk without the spool open, as doctor does.
        let seen = Spool::inspect(dir.path()).unwrap();
        assert_eq!((seen.waiting, seen.oldest_ms), (70, Some(1030)));
        let mut cursor = Cursor::default();
        spool.rewind(&mut cursor);
        let rest = fetch_all(&spool, &mut cursor);
        assert_eq!(rest.first().unwrap(), &(30, "m30".to_string()));
        assert_eq!(rest.last().unwrap(), &(99, "m99".to_string()));
        assert_eq!(rest.len(), 70);
        assert_eq!(spool.push(5, b"after"), Pushed::Spooled);
        assert_eq!(
            fetch_all(&spool, &mut cursor),
            vec![(100, "after".to_string())]
        );
        spool.commit(101, None);
        assert_eq!(spool.standing().waiting, 0);
    }

    #[test]
    fn a_full_spool_refuses_or_drops_the_oldest_and_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'x'; 1000];
        let spool = Spool::open(&dir.path().join("r"), 1 << 20, SpoolFull::RefuseNew).unwrap();
        let mut n = 0;
        while spool.push(1, &big) == Pushed::Spooled {
            n += 1;
        }
        assert!(n > 1000 && n < 1100, "{n}");
        assert_eq!(spool.push(1, &big), Pushed::Refused { first: false });
        let mut cursor = Cursor::default();
        spool.rewind(&mut cursor);
        let got = spool.fetch(&mut cursor, 500, Duration::ZERO).unwrap();
        spool.commit(got.last().unwrap().index + 1, None);
        assert_eq!(spool.push(1, &big), Pushed::Room { refused: 2 });
        assert_eq!(spool.standing().refused, 2);

        let spool = Spool::open(&dir.path().join("d"), 1 << 20, SpoolFull::DropOldest).unwrap();
        let mut dropped = 0;
        for i in 0..3000u64 {
            let mut m = format!("{i:05}").into_bytes();
            m.extend_from_slice(&big);
            if let Pushed::DroppedOldest(n) = spool.push(1, &m) {
                dropped += n;
            }
        }
        let standing = spool.standing();
        assert_eq!(standing.dropped, dropped);
        assert_eq!(standing.waiting + dropped, 3000);
        assert!(standing.bytes <= 1 << 20);
        let mut cursor = Cursor::default();
        spool.rewind(&mut cursor);
        let rest = fetch_all(&spool, &mut cursor);
        assert_eq!(rest.len() as u64, standing.waiting);
        assert!(rest.last().unwrap().1.starts_with("02999"));
        assert!(rest
            .first()
            .unwrap()
            .1
            .starts_with(&format!("{dropped:05}")));
    }
}
