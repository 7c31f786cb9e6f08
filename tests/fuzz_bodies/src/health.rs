//! What node health reads from outside the agent: kernel log records and plugin output.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keel_agent::config::health::PatternSpec;
use keel_agent::health::kernel_log::{self, Window};
use keel_agent::health::outcome::Status;
use keel_agent::health::plugin;

/// What the reader keeps of one line (`kernel_log`'s private `MAX_LINE`).
const MAX_LINE: usize = 1024;
/// How much plugin output is read (`plugin`'s private `MAX_READ`).
const MAX_READ: usize = 4096;
const WINDOW: Duration = Duration::from_secs(60);

/// The patterns of `configs/agent-health-linux.yaml`.
fn patterns() -> &'static [PatternSpec] {
    static P: OnceLock<Vec<PatternSpec>> = OnceLock::new();
    P.get_or_init(|| {
        [
            ("OOMKilling", r"Out of memory: Kill(ed)? process \d+", 1),
            (
                "TaskHung",
                r"task \S+:\w+ blocked for more than \w+ seconds\.",
                1,
            ),
            (
                "FilesystemErrors",
                r"EXT4-fs error|XFS \(\S+\): Corruption",
                3,
            ),
        ]
        .into_iter()
        .filter_map(|(reason, re, count)| {
            Some(PatternSpec {
                reason: reason.into(),
                regex: regex::Regex::new(re).ok()?,
                count,
            })
        })
        .collect()
    })
}

/// Input: kernel log text, one record per line (a `dmesg`-style file or `/dev/kmsg` records). The
/// framing (lines cut at 1 KiB, decoded lossily, trailing whitespace dropped) copies the reader
/// thread, which is private (`kernel_log::follow`); from there on the code is the agent's own:
/// `strip_kmsg_prefix`, then `Window::observe` / `evaluate`, one line every 100 ms.
///
/// One `Window` serves every input of a process, as one serves the agent's whole life: building it
/// compiles the patterns, which cost 50 ms an input (17 inputs/s) in the instrumented build. Each
/// input ends with its window passed, which drops every match, so inputs do not see each other's.
pub fn kernel_log(data: &[u8]) {
    thread_local! {
        static STATE: std::cell::RefCell<(Window, Instant)> =
            std::cell::RefCell::new((Window::new(WINDOW, patterns().to_vec()), Instant::now()));
    }
    STATE.with_borrow_mut(|(w, t)| {
        for raw in data.split(|&b| b == b'\n') {
            let raw = &raw[..raw.len().min(MAX_LINE)];
            let text = String::from_utf8_lossy(raw);
            let text = text.trim_end();
            if let Some(msg) = kernel_log::strip_kmsg_prefix(text) {
                assert!(text.ends_with(msg), "{msg:?} is not the end of {text:?}");
                w.observe(msg, *t);
            }
            *t += Duration::from_millis(100);
        }
        let now = w.evaluate(*t);
        if now.status == Status::Problem {
            assert!(patterns().iter().any(|p| p.reason == now.reason), "{now:?}");
        }
        // A log-derived condition clears once the window has passed without matches (NPD #215,
        // #728).
        *t += WINDOW + Duration::from_secs(1);
        let later = w.evaluate(*t);
        assert_eq!(later.status, Status::Ok, "{later:?}");
    });
}

/// Input: a byte for `max_output_length`, then what the plugin wrote to stdout (only the first
/// 4 KiB are read). `plugin::first_line` is the message NPD would report.
pub fn plugin_output(data: &[u8]) {
    let Some((&max, out)) = data.split_first() else {
        return;
    };
    let max = usize::from(max);
    let out = &out[..out.len().min(MAX_READ)];
    let line = plugin::first_line(out, max);
    assert!(line.chars().count() <= max, "{line:?} longer than {max}");
    assert!(!line.contains('\n'), "{line:?}");
    assert!(!line.starts_with(char::is_whitespace), "{line:?}");
    assert!(
        String::from_utf8_lossy(out).contains(line.as_str()),
        "{line:?} is not in the output"
    );
}
