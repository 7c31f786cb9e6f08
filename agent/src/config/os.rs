//! The node's operating system as the config names it, and the path rules that depend on it.

use std::path::Path;

use keel_common::Diagnostics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Linux,
    Windows,
}

impl Os {
    pub fn as_str(self) -> &'static str {
        match self {
            Os::Linux => "linux",
            Os::Windows => "windows",
        }
    }
}

/// Whether `p` is absolute on a node running `os`, judged from the text alone (not by the host
/// doing the check): image pipelines validate Windows nodes' configs on Linux build hosts. On
/// Windows a drive letter with a separator (`C:\x`, `C:/x`) or a UNC/device path (`\\server\share`,
/// `\\?\C:\x`) is absolute; `\x` and `C:x` are relative to the current drive/directory.
pub fn is_absolute_for(os: Os, p: &Path) -> bool {
    let s = p.to_string_lossy();
    let b = s.as_bytes();
    match os {
        Os::Linux => b.first() == Some(&b'/'),
        Os::Windows => {
            let sep = |c: u8| c == b'\\' || c == b'/';
            (b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && sep(b[2]))
                || (b.len() >= 3 && sep(b[0]) && sep(b[1]) && !sep(b[2]))
        }
    }
}

/// Records an error at `field` unless `p` is absolute for `os`.
pub fn require_absolute(d: &mut Diagnostics, field: &str, os: Os, p: &Path) {
    if !is_absolute_for(os, p) {
        let example = match os {
            Os::Linux => "/var/lib/keel",
            Os::Windows => r"C:\ProgramData\keel or \\server\share",
        };
        d.error(
            field,
            format!(
                "`{}` must be an absolute path on a {} node (like {example})",
                p.display(),
                os.as_str()
            ),
        );
    }
}
