//! Runtime backend changes (`keel-lb backend drain|maint|ready|weight`, `POST /v1/backends/...`)
//! and the state file that keeps them across reloads and restarts, like HAProxy's
//! server-state-file. An override holds until the config file says otherwise: it records the file's
//! state and weight for that backend when it was made, and a file that now says something else for
//! it (or no longer lists it) wins and drops the override.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{self, AdminState, Config, MAX_WEIGHT};
use crate::status::admin_word;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    pub pool: String,
    pub address: SocketAddr,
    /// ready, drain or maint; None: the file's.
    pub state: Option<String>,
    pub weight: Option<u32>,
    /// What the file said when the override was made.
    pub file_state: String,
    pub file_weight: u32,
    /// Unix seconds.
    pub at: f64,
}

/// One change an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    State(AdminState),
    Weight(u32),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Failed(String),
}

/// `state=drain|maint|ready` or `weight=N` (a form body or a query string).
pub fn parse_change(body: &str) -> Result<Change, ChangeError> {
    let body = body.trim();
    let (k, v) = body.split_once('=').ok_or_else(|| {
        ChangeError::Bad(format!(
            "expected state=ready|drain|maint or weight=1-{MAX_WEIGHT}, got {body:?}"
        ))
    })?;
    match k.trim() {
        "state" => parse_state(v.trim()).map(Change::State).ok_or_else(|| {
            ChangeError::Bad(format!("state {v:?}: expected ready, drain or maint"))
        }),
        "weight" => match v.trim().parse::<u32>() {
            Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(Change::Weight(w)),
            _ => Err(ChangeError::Bad(format!(
                "weight {v:?} is out of range 1-{MAX_WEIGHT} (use state=maint to take a backend out)"
            ))),
        },
        other => Err(ChangeError::Bad(format!(
            "unknown field {other:?}: expected state or weight"
        ))),
    }
}

/// The status page's words, and the config file's.
pub fn parse_state(s: &str) -> Option<AdminState> {
    match s {
        "ready" | "active" => Some(AdminState::Active),
        "drain" => Some(AdminState::Drain),
        "maint" | "disabled" => Some(AdminState::Disabled),
        _ => None,
    }
}

#[derive(Debug, Default, Clone)]
pub struct Overrides {
    path: Option<PathBuf>,
    map: BTreeMap<(String, SocketAddr), Override>,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    backends: Vec<Override>,
}

const VERSION: u32 = 1;

impl Overrides {
    /// Reads the state file (none yet is fine); an unreadable one is reported and ignored.
    pub fn load(path: Option<PathBuf>) -> (Overrides, Option<String>) {
        let mut o = Overrides {
            path,
            map: BTreeMap::new(),
        };
        let Some(p) = o.path.clone() else {
            return (o, None);
        };
        let text = match std::fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (o, None),
            Err(e) => return (o, Some(format!("{}: {e}", p.display()))),
        };
        match serde_json::from_slice::<File>(&text) {
            Ok(f) if f.version == VERSION => {
                o.map = f
                    .backends
                    .into_iter()
                    .map(|b| ((b.pool.clone(), b.address), b))
                    .collect();
                (o, None)
            }
            Ok(f) => (
                o,
                Some(format!(
                    "{}: state file version {} unknown",
                    p.display(),
                    f.version
                )),
            ),
            Err(e) => (
                o,
                Some(format!("{}: not a keel-lb state file: {e}", p.display())),
            ),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn keys(&self) -> impl Iterator<Item = &(String, SocketAddr)> {
        self.map.keys()
    }

    /// The file's pools with the overrides applied. Overrides the file now contradicts (another
    /// state or weight than recorded, or the backend gone) are dropped; each is described in the
    /// returned list, and the caller saves the file.
    pub fn apply(&mut self, file: &Config) -> (BTreeMap<String, config::Pool>, Vec<String>) {
        let mut pools = file.pools.clone();
        let mut dropped = Vec::new();
        self.map.retain(|(pool, addr), o| {
            let Some(b) = pools
                .get_mut(pool)
                .and_then(|p| p.backends.iter_mut().find(|b| b.addr == *addr))
            else {
                dropped.push(format!(
                    "{pool}/{addr}: no longer in the config file; runtime change dropped"
                ));
                return false;
            };
            if admin_word(b.state) != o.file_state || b.weight != o.file_weight {
                dropped.push(format!(
                    "{pool}/{addr}: the config file now says {} weight {}; runtime change dropped",
                    admin_word(b.state),
                    b.weight
                ));
                return false;
            }
            if let Some(s) = o.state.as_deref().and_then(parse_state) {
                b.state = s;
            }
            if let Some(w) = o.weight {
                b.weight = w;
            }
            true
        });
        (pools, dropped)
    }

    /// Records a change for a backend of the file; a change back to what the file says removes
    /// the override. Returns a sentence for the operator.
    pub fn set(
        &mut self,
        file: &Config,
        pool: &str,
        addr: SocketAddr,
        change: Change,
        now: f64,
    ) -> Result<String, ChangeError> {
        let p = file.pools.get(pool).ok_or_else(|| {
            ChangeError::NotFound(format!(
                "no pool {pool:?} in the config file (pools: {})",
                file.pools.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let b =
            p.backends.iter().find(|b| b.addr == addr).ok_or_else(|| {
                ChangeError::NotFound(format!("pool {pool:?} has no backend {addr}"))
            })?;
        let key = (pool.to_string(), addr);
        let mut o = self.map.remove(&key).unwrap_or(Override {
            pool: pool.to_string(),
            address: addr,
            state: None,
            weight: None,
            file_state: admin_word(b.state).into(),
            file_weight: b.weight,
            at: now,
        });
        o.at = now;
        match change {
            Change::State(s) => o.state = (s != b.state).then(|| admin_word(s).to_string()),
            Change::Weight(w) => o.weight = (w != b.weight).then_some(w),
        }
        let state = o
            .state
            .clone()
            .unwrap_or_else(|| admin_word(b.state).into());
        let weight = o.weight.unwrap_or(b.weight);
        let said = if o.state.is_none() && o.weight.is_none() {
            "as the config file says"
        } else {
            self.map.insert(key, o);
            "until the config file says otherwise"
        };
        Ok(format!("{pool}/{addr}: {state}, weight {weight} ({said})"))
    }

    /// The state file's bytes (written off the control loop by [`save`]).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&File {
            version: VERSION,
            backends: self.map.values().cloned().collect(),
        })
        .unwrap_or_default()
    }
}

/// Temporary file beside it, fsync, rename: a crash leaves the old or the new file.
pub fn save(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(state: &str, weight: u32) -> Config {
        let yaml = format!(
            "frontends:\n  - name: web\n    listen: 127.0.0.1:1\n    pool: p\npools:\n  p:\n    backends:\n      - address: 127.0.0.1:10\n        weight: {weight}\n        state: {state}\n      - address: 127.0.0.1:11\n"
        );
        config::load_source(&keel_common::Source::from_text("/etc/keel/lb.yaml", yaml)).unwrap()
    }

    const A: &str = "127.0.0.1:10";

    #[test]
    fn parses_changes_and_names_the_range() {
        assert_eq!(
            parse_change("state=drain"),
            Ok(Change::State(AdminState::Drain))
        );
        assert_eq!(
            parse_change("state=maint"),
            Ok(Change::State(AdminState::Disabled))
        );
        assert_eq!(parse_change("weight=7"), Ok(Change::Weight(7)));
        let e = parse_change("weight=0").unwrap_err().to_string();
        assert!(e.contains("1-256"), "{e}");
        assert!(parse_change("state=off").is_err());
        assert!(parse_change("colour=red").is_err());
    }

    #[test]
    fn an_override_holds_until_the_file_says_otherwise() {
        let mut o = Overrides::default();
        let f = file("active", 1);
        o.set(
            &f,
            "p",
            A.parse().unwrap(),
            Change::State(AdminState::Drain),
            1.0,
        )
        .unwrap();
        o.set(&f, "p", A.parse().unwrap(), Change::Weight(9), 2.0)
            .unwrap();
        let (pools, dropped) = o.apply(&f);
        assert!(dropped.is_empty());
        let b = &pools["p"].backends[0];
        assert_eq!((b.state, b.weight), (AdminState::Drain, 9));
        // The same file again (a reload that did not touch it): still there.
        let (pools, _) = o.apply(&file("active", 1));
        assert_eq!(pools["p"].backends[0].state, AdminState::Drain);
        // The file changes this backend's weight: the file wins, the whole override goes.
        let (pools, dropped) = o.apply(&file("active", 2));
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        let b = &pools["p"].backends[0];
        assert_eq!((b.state, b.weight), (AdminState::Active, 2));
        assert_eq!(o.keys().count(), 0);
    }

    #[test]
    fn a_change_back_to_the_file_removes_the_override_and_unknowns_are_404s() {
        let mut o = Overrides::default();
        let f = file("active", 1);
        let a: SocketAddr = A.parse().unwrap();
        o.set(&f, "p", a, Change::State(AdminState::Drain), 1.0)
            .unwrap();
        assert_eq!(o.keys().count(), 1);
        let msg = o
            .set(&f, "p", a, Change::State(AdminState::Active), 2.0)
            .unwrap();
        assert!(msg.contains("as the config file says"), "{msg}");
        assert_eq!(o.keys().count(), 0);
        assert!(matches!(
            o.set(&f, "nope", a, Change::Weight(2), 3.0),
            Err(ChangeError::NotFound(m)) if m.contains("\"nope\"")
        ));
        assert!(matches!(
            o.set(&f, "p", "127.0.0.1:99".parse().unwrap(), Change::Weight(2), 3.0),
            Err(ChangeError::NotFound(m)) if m.contains("127.0.0.1:99")
        ));
    }

    #[test]
    fn the_state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/backend-state.json");
        let mut o = Overrides::load(Some(path.clone())).0;
        let f = file("active", 1);
        o.set(
            &f,
            "p",
            A.parse().unwrap(),
            Change::State(AdminState::Disabled),
            1.0,
        )
        .unwrap();
        save(&path, &o.encode()).unwrap();
        let (back, err) = Overrides::load(Some(path.clone()));
        assert_eq!(err, None);
        assert_eq!(back.map, o.map);
        std::fs::write(&path, "not json").unwrap();
        let (_, err) = Overrides::load(Some(path));
        assert!(err.unwrap().contains("not a keel-lb state file"));
    }
}
