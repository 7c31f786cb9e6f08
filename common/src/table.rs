//! Plain-text tables for the status commands (`keel-agent status`, `keel-lb status`): columns two
//! spaces apart, sized to their widest cell, like `kubectl get`; a column whose every cell is a
//! number (`12`, `3ms`, `4/10`) is right-aligned, header included. Cells are one line: a newline or
//! tab inside one (an error message from the cluster) is shown as a space, so a row never breaks the
//! layout, and a cell longer than `max_cell` is cut with `…`.

#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    max_cell: usize,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
            max_cell: 80,
        }
    }

    /// Cells longer than this many characters are cut (at least 8).
    pub fn max_cell(mut self, n: usize) -> Table {
        self.max_cell = n.max(8);
        self
    }

    /// Adds a row; missing cells are blank, extra ones are dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut r: Vec<String> = cells
            .into_iter()
            .map(|c| one_line(&c.into(), self.max_cell))
            .collect();
        r.resize(self.headers.len(), String::new());
        self.rows.push(r);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(width(c));
            }
        }
        let numeric =
            |c: &String| c.starts_with(|ch: char| ch.is_ascii_digit()) && !c.contains(' ');
        let right: Vec<bool> = (0..self.headers.len())
            .map(|i| !self.rows.is_empty() && self.rows.iter().all(|r| numeric(&r[i])))
            .collect();
        let mut out = String::new();
        for r in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (c, w)) in r.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = w - width(c);
                if right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// A Unix time as `2026-12-01T23:16:06Z (5m ago)` relative to `now`, or `in 3d` for the future;
/// `-` when unknown.
pub fn when(unix: Option<i64>, now: i64) -> String {
    let Some(t) = unix else {
        return "-".into();
    };
    let rel = if t <= now {
        format!("{} ago", ago(now - t))
    } else {
        format!("in {}", ago(t - now))
    };
    format!("{} ({rel})", utc(t))
}

/// A span of seconds as the largest unit or two: `45s`, `3m20s`, `5h2m`, `12d3h`.
pub fn ago(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// Unix seconds as RFC 3339 UTC, without a date crate (civil-from-days, H. Hinnant's algorithm).
pub fn utc(unix: i64) -> String {
    let days = unix.div_euclid(86400);
    let secs = unix.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(["NAME", "STATUS"]);
        t.row(["memory", "Ok"]);
        t.row(["system-disk", "Problem"]);
        assert_eq!(
            t.render(),
            "NAME         STATUS\nmemory       Ok\nsystem-disk  Problem\n"
        );
    }

    #[test]
    fn number_columns_are_right_aligned() {
        let mut t = Table::new(["NAME", "N", "LATENCY"]);
        t.row(["a", "5", "3ms"]);
        t.row(["longer", "12345", "-"]);
        assert_eq!(
            t.render(),
            "NAME        N  LATENCY\na           5  3ms\nlonger  12345  -\n"
        );
    }

    #[test]
    fn a_cell_stays_on_one_line_and_is_cut_when_long() {
        let mut t = Table::new(["A", "B"]).max_cell(10);
        t.row(["x\ny\tz", "0123456789abc"]);
        t.row(["only"]);
        let out = t.render();
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(out.contains("x y z"), "{out}");
        assert!(out.contains("012345678…"), "{out}");
        assert!(out.lines().all(|l| l == l.trim_end()), "{out}");
    }

    #[test]
    fn times_are_utc_and_relative() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_795_821_366), "2026-11-27T23:16:06Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(when(Some(100), 400), "1970-01-01T00:01:40Z (5m0s ago)");
        assert_eq!(
            when(Some(400 + 3 * 86400), 400),
            format!("{} (in 3d0h)", utc(400 + 3 * 86400))
        );
        assert_eq!(when(None, 1), "-");
        assert_eq!(ago(59), "59s");
        assert_eq!(ago(3 * 3600 + 125), "3h2m");
    }
}
