//! Config diagnostics: every error names the file, the line and the field, and all errors of a file
//! are reported at once (linkerd's habit), so an operator fixes a config in one pass.
//!
//! The flow every Keel config follows: [`Source::read`] → [`parse`] into raw `deny_unknown_fields`
//! serde structs → a `validate` that pushes problems into [`Diagnostics`] by field path
//! (`pools[1].backends[0].port`) → [`Diagnostics::finish`] yields the typed model or every error.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A config file's path and text, kept so that errors can point at lines.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

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
    pub fn read(path: &Path) -> Result<Source, ConfigErrors> {
        std::fs::read_to_string(path)
            .map(|text| Source {
                path: path.to_path_buf(),
                text,
            })
            .map_err(|e| ConfigErrors::single(path, "", format!("cannot read: {e}")))
    }

    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> Source {
        Source {
            path: path.into(),
            text: text.into(),
        }
    }

    /// The 1-based line where `field` (e.g. `pools[1].backends[0].port`) is written, or the line of its
    /// deepest enclosing field that is written (a missing field points at its parent).
    pub fn line_of(&self, field: &str) -> Option<usize> {
        let target = split_path(field);
        if target.is_empty() {
            return None;
        }
        let mut best: Option<(usize, usize)> = None; // (matched depth, line)
        let mut stack: Vec<Entry> = Vec::new();
        for (lineno, raw) in self.text.lines().enumerate() {
            let content = strip_comment(raw);
            let trimmed = content.trim_start();
            if trimmed.is_empty() || trimmed.starts_with("---") || trimmed.starts_with("...") {
                continue;
            }
            let mut indent = content.len() - trimmed.len();
            let mut rest = trimmed;
            let mut found = false;
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
                found |= consider(&stack, &target, lineno, &mut best);
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
                found |= consider(&stack, &target, lineno, &mut best);
            }
            if found {
                break;
            }
        }
        best.map(|(_, line)| line)
    }
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

/// Remembers the line when the current stack is the deepest prefix of the target so far; true once
/// the whole target matched.
fn consider(
    stack: &[Entry],
    target: &[Seg],
    lineno: usize,
    best: &mut Option<(usize, usize)>,
) -> bool {
    let depth = matched_depth(stack, target);
    if depth == stack.len() && best.is_none_or(|(d, _)| depth > d) {
        *best = Some((depth, lineno + 1));
    }
    depth == target.len() && depth == stack.len()
}

fn matched_depth(stack: &[Entry], target: &[Seg]) -> usize {
    stack
        .iter()
        .zip(target)
        .take_while(|(e, t)| &e.seg == *t)
        .count()
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
    serde_yaml::from_str(&src.text).map_err(|e| {
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
        let line = e
            .location()
            .map(|l| l.line())
            .or_else(|| src.line_of(&field));
        ConfigErrors(vec![ConfigError {
            file: src.path.clone(),
            line,
            field,
            message,
        }])
    })
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
}
