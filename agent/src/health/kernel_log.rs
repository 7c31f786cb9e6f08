//! Kernel log patterns (OOM kills, hung tasks, filesystem errors) counted over a window.
//!
//! A reader thread follows `/dev/kmsg` (or a file, for tests and for `dmesg`-style captures) from its
//! current end. Lines are matched against a `RegexSet` at most `max_lines_per_second` per second;
//! lines beyond that are counted and dropped, so a kernel-log flood costs a bounded amount of CPU
//! (node-problem-detector #282, #498). The condition is a count over a sliding window, so it clears
//! once the window passes without new matches (NPD #215, #728: log-derived conditions never cleared).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::outcome::Outcome;
use crate::config::health::PatternSpec;

const MAX_LINE: usize = 1024;

/// Match times per pattern within the window: the pure part, fed by the reader.
#[derive(Debug)]
pub struct Window {
    window: Duration,
    patterns: Vec<PatternSpec>,
    hits: Vec<VecDeque<Instant>>,
    last_line: Vec<String>,
    set: regex::RegexSet,
}

impl Window {
    pub fn new(window: Duration, patterns: Vec<PatternSpec>) -> Window {
        let set = regex::RegexSet::new(patterns.iter().map(|p| p.regex.as_str()))
            .unwrap_or_else(|_| regex::RegexSet::empty());
        Window {
            window,
            hits: vec![VecDeque::new(); patterns.len()],
            last_line: vec![String::new(); patterns.len()],
            patterns,
            set,
        }
    }

    /// Takes one message; whether any pattern matched it.
    pub fn observe(&mut self, line: &str, now: Instant) -> bool {
        let matches = self.set.matches(line);
        for i in matches.iter() {
            let h = &mut self.hits[i];
            h.push_back(now);
            // Only the newest `count` matches matter for "count within window".
            while h.len() > self.patterns[i].count as usize {
                h.pop_front();
            }
            self.last_line[i] = line.chars().take(200).collect();
        }
        matches.matched_any()
    }

    pub fn evaluate(&mut self, now: Instant) -> Outcome {
        let mut problems = Vec::new();
        for (i, p) in self.patterns.iter().enumerate() {
            let h = &mut self.hits[i];
            while h
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
            {
                h.pop_front();
            }
            if h.len() >= p.count as usize {
                problems.push(i);
            }
        }
        match problems.first() {
            Some(&i) => Outcome::problem(
                self.patterns[i].reason.clone(),
                format!(
                    "{} ({} in {:?}): {}",
                    self.patterns[i].reason,
                    self.hits[i].len(),
                    self.window,
                    self.last_line[i]
                ),
                Some(problems.len() as f64),
            ),
            None => Outcome::ok(
                format!("no kernel problems in the last {:?}", self.window),
                Some(0.0),
            ),
        }
    }
}

/// `/dev/kmsg` records look like `6,1234,5678901,-;message`; continuation lines start with a space.
pub fn strip_kmsg_prefix(line: &str) -> Option<&str> {
    if line.starts_with(' ') {
        return None;
    }
    match line.split_once(';') {
        Some((head, msg))
            if head.split(',').count() >= 3
                && head
                    .split(',')
                    .take(3)
                    .all(|f| f.chars().all(|c| c.is_ascii_digit())) =>
        {
            Some(msg)
        }
        _ => Some(line),
    }
}

pub struct Watcher {
    state: Arc<Mutex<Window>>,
    stop: Arc<AtomicBool>,
    pub dropped: Arc<AtomicU64>,
    /// Lines matched against the patterns (within the rate limit).
    pub read: Arc<AtomicU64>,
    /// Bumped when a line matched, so the check runs at once instead of at its interval.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Watcher {
    pub fn start(
        name: &str,
        source: PathBuf,
        window: Duration,
        patterns: Vec<PatternSpec>,
        max_lines_per_second: u32,
    ) -> Watcher {
        let state = Arc::new(Mutex::new(Window::new(window, patterns)));
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let read = Arc::new(AtomicU64::new(0));
        let counts = Counts {
            dropped: dropped.clone(),
            read: read.clone(),
        };
        let (s, st) = (state.clone(), stop.clone());
        let changed = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let wake = changed.clone();
        let check = name.to_string();
        let spawned = std::thread::Builder::new()
            .name("kernel-log".into())
            .spawn(move || {
                follow(
                    &check,
                    &source,
                    false,
                    &st,
                    &counts,
                    max_lines_per_second,
                    &mut |text, now| {
                        if let Some(msg) = strip_kmsg_prefix(text) {
                            let matched =
                                s.lock().map(|mut w| w.observe(msg, now)).unwrap_or(false);
                            if matched {
                                wake.send_modify(|n| *n = n.wrapping_add(1));
                            }
                        }
                    },
                )
            });
        if let Err(e) = spawned {
            tracing::error!(check = name, error = %e, "cannot start kernel log reader");
        }
        Watcher {
            state,
            stop,
            dropped,
            read,
            changed,
        }
    }

    /// A receiver that changes whenever a line matched.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn evaluate(&self, now: Instant) -> Outcome {
        match self.state.lock() {
            Ok(mut w) => w.evaluate(now),
            Err(_) => Outcome::unknown("KernelLogUnavailable", "kernel log state poisoned"),
        }
    }
}

/// Opens a log to follow: at its end, or (`from_start`, for a lookback) at its beginning.
fn open_log(path: &Path, from_start: bool) -> std::io::Result<(std::fs::File, bool)> {
    let is_kmsg = path == Path::new("/dev/kmsg");
    #[cfg(unix)]
    let mut f = if is_kmsg {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?
    } else {
        std::fs::File::open(path)?
    };
    #[cfg(not(unix))]
    let mut f = std::fs::File::open(path)?;
    // Start at the end: what was logged before the agent started is not this run's to report,
    // unless a lookback asks for it (the caller filters by time).
    f.seek(if from_start {
        SeekFrom::Start(0)
    } else {
        SeekFrom::End(0)
    })?;
    Ok((f, is_kmsg))
}

/// Lines a reader took (within its rate limit) and shed (beyond it).
#[derive(Clone, Default)]
pub struct Counts {
    pub dropped: Arc<AtomicU64>,
    pub read: Arc<AtomicU64>,
}

/// A reader's rate limit: at most `per_sec` lines in each second from the first line of it; the
/// rest are shed. Both outcomes are counted in `Counts`. No clock: callers pass `now`.
pub(crate) struct Budget {
    start: Instant,
    left: u32,
    per_sec: u32,
}

impl Budget {
    pub(crate) fn new(per_sec: u32, now: Instant) -> Budget {
        Budget {
            start: now,
            left: per_sec,
            per_sec,
        }
    }

    /// Whether the line read at `now` is matched (true) or shed (false).
    pub(crate) fn admit(&mut self, now: Instant, counts: &Counts) -> bool {
        if now.duration_since(self.start) >= Duration::from_secs(1) {
            self.start = now;
            self.left = self.per_sec;
        }
        if self.left == 0 {
            counts.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.left -= 1;
        counts.read.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Follows `path` (`/dev/kmsg`: one record per read; anything else: lines, following truncation and
/// rotation) until `stop`, handing each line to `on_line` at most `max_per_sec` per second; the
/// rest are counted in `counts.dropped`. Shared by the kernel-log check and NPD's log monitors.
// A blocking reader thread outside the runtime: real time.
#[allow(clippy::disallowed_methods)]
pub(crate) fn follow(
    check: &str,
    path: &Path,
    mut from_start: bool,
    stop: &AtomicBool,
    counts: &Counts,
    max_per_sec: u32,
    on_line: &mut dyn FnMut(&str, Instant),
) {
    let idle = Duration::from_millis(200);
    let mut budget = Budget::new(max_per_sec, Instant::now());
    let mut file: Option<(BufReader<std::fs::File>, bool, u64)> = None;
    let mut line = Vec::with_capacity(MAX_LINE);
    while !stop.load(Ordering::Relaxed) {
        if file.is_none() {
            match open_log(path, from_start) {
                Ok((f, kmsg)) => {
                    let pos = if kmsg || from_start {
                        0
                    } else {
                        f.metadata().map(|m| m.len()).unwrap_or(0)
                    };
                    // Only the first open looks back; a reopen (truncation, an error) starts at
                    // the end as before.
                    from_start = false;
                    file = Some((BufReader::new(f), kmsg, pos));
                }
                Err(e) => {
                    tracing::warn!(check, source = %path.display(), error = %e, "cannot open kernel log");
                    std::thread::sleep(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let Some((reader, kmsg, pos)) = file.as_mut() else {
            continue;
        };
        let res = if *kmsg {
            line.clear();
            // Each read of /dev/kmsg returns exactly one record.
            let mut buf = [0u8; 8192];
            match reader.get_mut().read(&mut buf) {
                Ok(n) => {
                    line.extend_from_slice(&buf[..n.min(MAX_LINE)]);
                    Ok(n)
                }
                // Overrun: the kernel dropped records before we read them; go on.
                #[cfg(unix)]
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Ok(1),
                Err(e) => Err(e),
            }
        } else {
            // `line` may hold the start of a line a writer had not finished at the last read.
            let room = MAX_LINE.saturating_sub(line.len()) as u64;
            let r = reader.by_ref().take(room).read_until(b'\n', &mut line);
            if let Ok(n) = r {
                *pos += n as u64;
                if n > 0 && line.last() != Some(&b'\n') && line.len() >= MAX_LINE {
                    // Skip the rest of an overlong line.
                    let mut rest = Vec::new();
                    if let Ok(k) = reader.read_until(b'\n', &mut rest) {
                        *pos += k as u64;
                    }
                }
            }
            r
        };
        match res {
            Ok(0) => {
                if !*kmsg {
                    // Truncated or rotated file: start again from its new end.
                    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                    if len < *pos {
                        file = None;
                        line.clear();
                    }
                }
                std::thread::sleep(idle);
            }
            // The end of the file in the middle of a line: its writer has not finished it. Keep
            // what came (the next read appends) rather than take one line for two.
            Ok(_) if !*kmsg && line.last() != Some(&b'\n') && line.len() < MAX_LINE => {
                std::thread::sleep(idle);
            }
            Ok(_) => {
                let now = Instant::now();
                if budget.admit(now, counts) {
                    let text = String::from_utf8_lossy(&line);
                    on_line(text.trim_end(), now);
                }
                line.clear();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(idle),
            Err(e) => {
                tracing::warn!(check, source = %path.display(), error = %e, "kernel log read failed");
                file = None;
                line.clear();
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests build their own `now`.
mod tests {
    use super::*;
    use crate::health::outcome::Status;

    fn pat(reason: &str, re: &str, count: u32) -> PatternSpec {
        PatternSpec {
            reason: reason.into(),
            regex: regex::Regex::new(re).unwrap(),
            count,
        }
    }

    /// A line its writer has not finished at a read is one line once finished, not two.
    #[test]
    fn a_line_split_across_reads_is_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let (path, stop, lines) = (path.clone(), stop.clone(), lines.clone());
            let counts = Counts::default();
            std::thread::spawn(move || {
                follow("t", &path, true, &stop, &counts, 1000, &mut |l, _| {
                    lines.lock().unwrap().push(l.to_string())
                })
            })
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        use std::io::Write;
        f.write_all(b"first half of a ").unwrap();
        // Several of the follower's 200 ms idle polls see the half line.
        std::thread::sleep(Duration::from_millis(700));
        f.write_all(b"line\nnext\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines.lock().unwrap().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
        assert_eq!(
            *lines.lock().unwrap(),
            vec!["first half of a line".to_string(), "next".to_string()]
        );
    }

    #[test]
    fn condition_needs_count_within_window_and_clears_after_it() {
        let t0 = Instant::now();
        let mut w = Window::new(
            Duration::from_secs(60),
            vec![pat("FilesystemErrors", r"EXT4-fs error", 2)],
        );
        w.observe("EXT4-fs error (device sda1): bad block", t0);
        assert_eq!(w.evaluate(t0).status, Status::Ok);
        w.observe(
            "EXT4-fs error (device sda1): bad block",
            t0 + Duration::from_secs(10),
        );
        let o = w.evaluate(t0 + Duration::from_secs(11));
        assert_eq!(o.status, Status::Problem);
        assert_eq!(o.reason, "FilesystemErrors");
        // One match leaves the window: below the count again.
        assert_eq!(w.evaluate(t0 + Duration::from_secs(65)).status, Status::Ok);
    }

    #[test]
    fn kmsg_prefix_is_stripped_and_continuations_skipped() {
        assert_eq!(
            strip_kmsg_prefix("3,812,1234567,-;Out of memory: Killed process 42"),
            Some("Out of memory: Killed process 42")
        );
        assert_eq!(strip_kmsg_prefix(" SUBSYSTEM=block"), None);
        assert_eq!(
            strip_kmsg_prefix("[  1.0] plain dmesg"),
            Some("[  1.0] plain dmesg")
        );
    }
}
