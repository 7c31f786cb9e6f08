//! Config diagnostics: every error names the file, the line and the field, and all errors of a file
//! are reported at once (linkerd's habit), so an operator fixes a config in one pass.
//!
//! The flow every Keel config follows: [`Source::read`] → [`parse`] into raw `deny_unknown_fields`
//! serde structs → a `validate` that pushes problems into [`Diagnostics`] by field path
//! (`pools[1].backends[0].port`) → [`Diagnostics::finish`] yields the typed model or every error.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config file's path and text, kept so that errors can point at lines.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    /// Field path -> line, built in one pass on the first lookup (a file with many errors is not
    /// rescanned per error).
    lines: std::sync::OnceLock<HashMap<String, usize>>,
}

/// The largest config file read: far beyond any real config, small enough to parse at once.
pub const MAX_FILE_BYTES: usize = 4 << 20;
/// The deepest nesting of flow collections (`[`, `{`) a config may have.
pub const MAX_FLOW_DEPTH: usize = 64;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line of the field (or of its nearest enclosing field that exists in the file).
    pub line: Option<usize>,
    /// Field path such as `pools[1].backends[0].port`; empty for the whole file.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one file; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    pub fn single(file: &Path, field: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: None,
            field: field.into(),
            message: message.to_string(),
        }])
    }
}

impl Source {
    /// Reads a config file, refusing one larger than [`MAX_FILE_BYTES`] before reading it whole.
    pub fn read(path: &Path) -> Result<Source, ConfigErrors> {
        use std::io::Read;
        let f = std::fs::File::open(path)
            .map_err(|e| ConfigErrors::single(path, "", format!("cannot read: {e}")))?;
        let mut text = String::new();
        f.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .map_err(|e| ConfigErrors::single(path, "", format!("cannot read: {e}")))?;
        if text.len() > MAX_FILE_BYTES {
            return Err(too_big(path));
        }
        Ok(Source::from_text(path, text))
    }

    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> Source {
        Source {
            path: path.into(),
            text: text.into(),
            lines: std::sync::OnceLock::new(),
        }
    }

    /// The 1-based line where `field` (e.g. `pools[1].backends[0].port`) is written, or the line of its
    /// deepest enclosing field that is written (a missing field points at its parent).
    pub fn line_of(&self, field: &str) -> Option<usize> {
        let mut target = split_path(field);
        let index = self.lines.get_or_init(|| index_lines(&self.text));
        while !target.is_empty() {
            if let Some(line) = index.get(&render(&target)) {
                return Some(*line);
            }
            target.pop();
        }
        None
    }
}

/// One pass over the text: every field path written, with the line of its first occurrence.
fn index_lines(text: &str) -> HashMap<String, usize> {
    let mut out: HashMap<String, usize> = HashMap::new();
    let mut stack: Vec<Entry> = Vec::new();
    let mut note = |stack: &[Entry], lineno: usize| {
        let segs: Vec<Seg> = stack.iter().map(|e| e.seg.clone()).collect();
        out.entry(render(&segs)).or_insert(lineno + 1);
    };
    for (lineno, raw) in text.lines().enumerate() {
        let content = strip_comment(raw);
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed.starts_with("---") || trimmed.starts_with("...") {
            continue;
        }
        let mut indent = content.len() - trimmed.len();
        let mut rest = trimmed;
        // Sequence items, possibly nested on one line (`- - x`).
        while rest == "-" || rest.starts_with("- ") {
            while stack
                .last()
                .is_some_and(|t| t.indent > indent || (t.indent == indent && t.item))
            {
                stack.pop();
            }
            let index = match stack.last_mut() {
                Some(parent) => {
                    let i = parent.next_index;
                    parent.next_index += 1;
                    i
                }
                None => 0,
            };
            stack.push(Entry {
                indent,
                seg: Seg::Index(index),
                item: true,
                next_index: 0,
            });
            note(&stack, lineno);
            let after = &rest[1..];
            let skip = after.len() - after.trim_start().len();
            indent += 1 + skip;
            rest = after.trim_start();
        }
        if let Some(key) = mapping_key(rest) {
            while stack.last().is_some_and(|t| t.indent >= indent) {
                stack.pop();
            }
            stack.push(Entry {
                indent,
                seg: Seg::Key(key),
                item: false,
                next_index: 0,
            });
            note(&stack, lineno);
        }
    }
    out
}

/// The canonical spelling of a path: `a.b[1].c`.
fn render(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => {
                s.push('[');
                s.push_str(&i.to_string());
                s.push(']');
            }
        }
    }
    s
}

fn too_big(path: &Path) -> ConfigErrors {
    ConfigErrors::single(
        path,
        "",
        format!(
            "the file is larger than {} MiB; a config is never that big, refusing to read it",
            MAX_FILE_BYTES >> 20
        ),
    )
}

/// Checks made before a parser sees the text, in one pass: size, flow nesting, emptiness.
fn precheck(src: &Source) -> Result<(), ConfigErrors> {
    if src.text.len() > MAX_FILE_BYTES {
        return Err(too_big(&src.path));
    }
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut content = false;
    for (lineno, line) in src.text.lines().enumerate() {
        let line = strip_comment(line);
        let t = line.trim();
        if !t.is_empty() && t != "---" && t != "..." {
            content = true;
        }
        for c in line.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c == '[' || c == '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err(ConfigErrors(vec![ConfigError {
                            file: src.path.clone(),
                            line: Some(lineno + 1),
                            field: String::new(),
                            message: format!(
                                "nested deeper than {MAX_FLOW_DEPTH} levels of [ ] or {{ }}; refusing to parse it"
                            ),
                        }]));
                    }
                }
                None if c == ']' || c == '}' => depth = depth.saturating_sub(1),
                None => {}
            }
        }
        // A quote never spans lines in a config we accept; do not let one swallow the file.
        quote = None;
    }
    if !content {
        return Err(ConfigErrors::single(
            &src.path,
            "",
            "the file is empty (or only comments): refusing it, since running it would serve nothing",
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug)]
struct Entry {
    indent: usize,
    seg: Seg,
    item: bool,
    next_index: usize,
}

fn split_path(field: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            let key = &rest[..open];
            if !key.is_empty() {
                segs.push(Seg::Key(key.to_string()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                match stripped[..close].parse() {
                    Ok(i) => segs.push(Seg::Index(i)),
                    Err(_) => segs.push(Seg::Key(stripped[..close].to_string())),
                }
                rest = &stripped[close + 1..];
            }
        } else {
            segs.push(Seg::Key(rest.to_string()));
        }
    }
    segs
}

fn strip_comment(line: &str) -> &str {
    // A `#` starts a comment at the line start or after white space, outside quotes.
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev_space => return &line[..i],
            None => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

fn mapping_key(rest: &str) -> Option<String> {
    if rest.starts_with('{') || rest.starts_with('[') {
        return None;
    }
    if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = rest[1..].find(q)? + 1;
        return rest[end + 1..]
            .starts_with(':')
            .then(|| rest[1..end].to_string());
    }
    let colon = rest
        .find(": ")
        .or_else(|| rest.strip_suffix(':').map(str::len))?;
    let key = rest[..colon].trim();
    (!key.is_empty()).then(|| key.to_string())
}

/// Parses YAML into raw config structs; a serde error becomes a [`ConfigError`] with line and field.
pub fn parse<T: DeserializeOwned>(src: &Source) -> Result<T, ConfigErrors> {
    precheck(src)?;
    // Typed maps keep the last of two equal keys without a word; the generic loader refuses them.
    serde_yaml::from_str::<serde_yaml::Value>(&src.text).map_err(|e| yaml_error(src, e))?;
    serde_yaml::from_str(&src.text).map_err(|e| yaml_error(src, e))
}

fn yaml_error(src: &Source, e: serde_yaml::Error) -> ConfigErrors {
    let full = e.to_string();
    // serde_yaml renders "<path>: <message> at line L column C"; keep the parts apart.
    let without_loc = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => full.as_str(),
    };
    let (field, message) = match without_loc.split_once(": ") {
        Some((p, m)) if !p.contains(' ') && p != "." => (p.to_string(), m.to_string()),
        _ => (String::new(), without_loc.to_string()),
    };
    let mut line = e
        .location()
        .map(|l| l.line())
        .or_else(|| src.line_of(&field));
    // The loader points at the mapping; the operator needs the second spelling of the key.
    if let (Some(key), Some(start)) = (
        message
            .strip_prefix("duplicate entry with key \"")
            .and_then(|k| k.strip_suffix('"')),
        line,
    ) {
        line = second_key_line(&src.text, start, key).or(line);
    }
    ConfigErrors(vec![ConfigError {
        file: src.path.clone(),
        line,
        field,
        message,
    }])
}

/// The line (1-based) of the second block key `key` at one indentation, from line `start` on.
fn second_key_line(text: &str, start: usize, key: &str) -> Option<usize> {
    let mut first_indent: Option<usize> = None;
    for (i, raw) in text.lines().enumerate().skip(start.saturating_sub(1)) {
        let content = strip_comment(raw);
        let trimmed = content.trim_start().trim_start_matches("- ");
        let indent = content.len() - trimmed.len();
        if mapping_key(trimmed).as_deref() != Some(key) {
            continue;
        }
        match first_indent {
            None => first_indent = Some(indent),
            Some(f) if f == indent => return Some(i + 1),
            Some(_) => {}
        }
    }
    None
}

/// Collects validation errors against one [`Source`].
pub struct Diagnostics<'a> {
    src: &'a Source,
    errors: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(src: &'a Source) -> Self {
        Self {
            src,
            errors: Vec::new(),
        }
    }

    /// Records a problem with `field` (a path such as `pools[1].backends[0].port`).
    pub fn error(&mut self, field: impl Into<String>, message: impl fmt::Display) {
        let field = field.into();
        self.errors.push(ConfigError {
            file: self.src.path.clone(),
            line: self.src.line_of(&field),
            field,
            message: message.to_string(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `value` when it lies in `min..=max`; otherwise an error that names the range in the units a
    /// person writes (`must be between 1s and 168h, not 1us`) and None.
    pub fn duration_in(
        &mut self,
        field: impl Into<String>,
        value: std::time::Duration,
        min: std::time::Duration,
        max: std::time::Duration,
    ) -> Option<std::time::Duration> {
        use crate::duration::format;
        if (min..=max).contains(&value) {
            return Some(value);
        }
        self.error(
            field,
            format!(
                "must be between {} and {}, not {}",
                format(min),
                format(max),
                format(value)
            ),
        );
        None
    }

    /// `value` when it lies in `min..=max`; otherwise an error naming the range, and None.
    pub fn count_in(
        &mut self,
        field: impl Into<String>,
        value: u64,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        if (min..=max).contains(&value) {
            return Some(value);
        }
        self.error(
            field,
            format!("must be between {min} and {max}, not {value}"),
        );
        None
    }

    /// How many errors so far (a section's validation compares before and after).
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn source(&self) -> &Source {
        self.src
    }

    /// Takes over the errors of a nested validation (e.g. a section validated by another module).
    pub fn extend(&mut self, other: ConfigErrors) {
        self.errors.extend(other.0);
    }

    /// Every error recorded so far (for a validation that cannot go on).
    pub fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.errors)
    }

    /// The validated value when nothing was recorded, else every recorded error.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
# keel-lb
admin:
  listen: 127.0.0.1:9100
frontends:
  - name: api
    listen: 0.0.0.0:6443   # the VIP
    pool: apiservers
  - name: dns
    listen: 0.0.0.0:53
    protocol: udp
pools:
  apiservers:
    backends:
      - address: 198.18.0.10:6443
      - address: 198.18.0.11:6443
        weight: 2
list:
- a
- b
";

    #[test]
    fn finds_lines_of_nested_fields() {
        let s = Source::from_text("lb.yaml", YAML);
        assert_eq!(s.line_of("admin.listen"), Some(3));
        assert_eq!(s.line_of("frontends[0].listen"), Some(6));
        assert_eq!(s.line_of("frontends[1]"), Some(8));
        assert_eq!(s.line_of("frontends[1].protocol"), Some(10));
        assert_eq!(s.line_of("pools.apiservers.backends[1].weight"), Some(16));
        assert_eq!(s.line_of("list[1]"), Some(19));
    }

    #[test]
    fn missing_field_points_at_its_parent() {
        let s = Source::from_text("lb.yaml", YAML);
        assert_eq!(s.line_of("frontends[1].pool"), Some(8));
        assert_eq!(s.line_of("pools.apiservers.health"), Some(12));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Raw {
        name: String,
        port: u16,
    }

    #[test]
    fn serde_errors_name_file_line_and_field() {
        let s = Source::from_text("x.yaml", "name: a\nport: 70000\n");
        let e = parse::<Raw>(&s).unwrap_err();
        assert_eq!(e.0[0].line, Some(2));
        assert!(e.to_string().starts_with("x.yaml:2"), "{e}");

        let s = Source::from_text("x.yaml", "name: a\nport: 1\nprot: 2\n");
        let e = parse::<Raw>(&s).unwrap_err().to_string();
        assert!(
            e.contains("x.yaml:3") && e.contains("unknown field `prot`"),
            "{e}"
        );
    }

    #[test]
    fn diagnostics_collect_every_error() {
        let s = Source::from_text("lb.yaml", YAML);
        let mut d = Diagnostics::new(&s);
        d.error("frontends[0].listen", "port 6443 is used twice");
        d.error("pools.apiservers.backends[1].weight", "must be 1-256");
        let e = d.finish(()).unwrap_err();
        assert_eq!(e.0.len(), 2);
        assert_eq!(
            e.0[0].to_string(),
            "lb.yaml:6: frontends[0].listen: port 6443 is used twice"
        );
        assert_eq!(e.0[1].line, Some(16));
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Pools {
        pools: std::collections::BTreeMap<String, u32>,
    }

    #[test]
    fn a_key_written_twice_is_refused_with_its_line() {
        let s = Source::from_text("x.yaml", "pools:\n  a: 1\n  b: 2\n  a: 3\n");
        let e = parse::<Pools>(&s).unwrap_err().to_string();
        assert!(e.contains("x.yaml:4") && e.contains("duplicate"), "{e}");
    }

    #[test]
    fn an_empty_or_comment_only_file_is_refused() {
        for text in ["", "\n\n", "# nothing here\n---\n", "   \n# x\n"] {
            let s = Source::from_text("x.yaml", text);
            let e = parse::<Pools>(&s).unwrap_err().to_string();
            assert!(e.contains("empty"), "{text:?}: {e}");
        }
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let text = format!("pools: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let s = Source::from_text("x.yaml", text);
        let started = std::time::Instant::now();
        let e = parse::<Pools>(&s).unwrap_err().to_string();
        assert!(e.contains("nested deeper than 64"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Brackets inside quotes are text.
        let s = Source::from_text(
            "x.yaml",
            format!("pools: {{a: 1}}\nx: \"{}\"\n", "[".repeat(100)),
        );
        assert!(precheck(&s).is_ok());
    }

    #[test]
    fn an_oversized_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.yaml");
        std::fs::write(&p, vec![b'#'; MAX_FILE_BYTES + 10]).unwrap();
        let e = Source::read(&p).unwrap_err().to_string();
        assert!(e.contains("larger than 4 MiB"), "{e}");
    }

    /// Locating errors is one pass over the file, not one per error.
    #[test]
    fn many_errors_in_a_big_file_are_located_at_once() {
        let mut text = String::from("pools:\n");
        for i in 0..20_000 {
            text.push_str(&format!("  p{i}:\n    backends:\n      - address: x\n"));
        }
        let s = Source::from_text("big.yaml", text);
        let started = std::time::Instant::now();
        let mut d = Diagnostics::new(&s);
        for i in 0..2_000 {
            d.error(format!("pools.p{}.backends[0].address", i * 10), "bad");
        }
        let e = d.finish(()).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(e.0[1].line, Some(10 * 3 + 4));
    }
}
