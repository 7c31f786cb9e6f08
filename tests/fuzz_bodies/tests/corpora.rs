//! Replays the committed fuzz corpora on stable: every file in `fuzz/corpus/<target>/` and every
//! regression in `fuzz/artifacts/<target>/` goes through the same body the fuzz target runs. A
//! crash the fuzzer found, once fixed, stays fixed here without nightly.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use keel_fuzz_bodies::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_file_and_regression_passes_its_target() {
    let mut failures = Vec::new();
    for (name, body) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} is empty or missing: the replay would prove nothing"
        );
        let artifacts = files(&fuzz_dir().join("artifacts").join(name));
        for path in corpus.iter().chain(&artifacts) {
            let data = std::fs::read(path).expect("read a corpus file");
            if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}

/// Each fuzz target is one line that calls its body here; a target without a body (or a body
/// without a target or corpus) would silently drop out of the replay.
#[test]
fn every_fuzz_target_has_a_body_and_a_corpus() {
    let bodies: BTreeSet<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    let stems = |dir: &str, want_rs: bool| -> BTreeSet<String> {
        std::fs::read_dir(fuzz_dir().join(dir))
            .expect("list a fuzz/ folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() != want_rs)
            .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
            .collect()
    };
    let targets = stems("fuzz_targets", true);
    assert_eq!(
        targets.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        bodies,
        "fuzz/fuzz_targets/*.rs against keel_fuzz_bodies::TARGETS"
    );
    for t in &targets {
        let src = std::fs::read_to_string(fuzz_dir().join("fuzz_targets").join(format!("{t}.rs")))
            .expect("read a fuzz target");
        assert!(
            src.contains(&format!("keel_fuzz_bodies::run(\"{t}\", data)")),
            "fuzz/fuzz_targets/{t}.rs does not run the body named {t}"
        );
    }
    let corpora = stems("corpus", false);
    assert_eq!(
        corpora.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        bodies,
        "fuzz/corpus/* against keel_fuzz_bodies::TARGETS"
    );
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for t in &bodies {
        assert!(
            manifest.contains(&format!("name = \"{t}\"")),
            "fuzz/Cargo.toml has no [[bin]] {t}"
        );
    }
}

/// fuzz/seed.py makes each target's seeds from the repository's fixtures (tests/bench/fuzz.sh runs
/// it before fuzzing): it must still find them (it broke silently once when the agent's modules
/// moved), and every seed must pass its target's body.
#[test]
fn the_seed_script_runs_and_its_seeds_pass_their_targets() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let run = std::process::Command::new("python3")
        .arg(fuzz_dir().join("seed.py"))
        .arg(out.path())
        .output()
        .expect("run python3 fuzz/seed.py");
    assert!(
        run.status.success(),
        "fuzz/seed.py failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut failures = Vec::new();
    for (name, body) in TARGETS {
        let seeds = files(&out.path().join(name));
        assert!(!seeds.is_empty(), "fuzz/seed.py made no seed for {name}");
        for path in &seeds {
            let data = std::fs::read(path).expect("read a seed");
            if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
                failures.push(path.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "seeds that fail: {failures:#?}");
}
