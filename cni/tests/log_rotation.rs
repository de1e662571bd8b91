//! Rotation of the shared log file with many plugin processes writing at
//! once: every line written is found exactly once, whole, in the live file
//! or a backup, however the rotations fell between the writers.
//!
//! The writers are this test binary run again as child processes (the
//! `writer` test does nothing unless the parent asked for it), so each one
//! has its own descriptors and its own view of the file, as plugin execs do.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use cni::logging::{open_rotating, Rotation};

const WRITER_ENV: &str = "LOG_ROTATION_WRITER";
const WRITERS: usize = 6;
const OPENS: usize = 80;
const LINES: usize = 10;

fn rotation() -> Rotation {
    Rotation {
        // Small, so that the run rotates a few hundred times.
        max_bytes: 4096,
        max_age: None,
        max_backups: None,
    }
}

/// A line that says who wrote it and carries a checksum of itself, so a torn
/// or interleaved line cannot pass for a whole one.
fn line(writer: usize, open: usize, n: usize) -> String {
    let body = format!(
        "w{writer} o{open} n{n} {}",
        "x".repeat((writer * 31 + open * 7 + n * 13) % 300)
    );
    let sum: u32 = body.bytes().map(u32::from).sum();
    format!("{body} {sum}\n")
}

fn parse(l: &str) -> Option<(usize, usize, usize)> {
    let (body, sum) = l.rsplit_once(' ')?;
    let expect: u32 = body.bytes().map(u32::from).sum();
    if sum.parse::<u32>().ok()? != expect {
        return None;
    }
    let mut it = body.split(' ');
    let num = |s: Option<&str>, p: char| s?.strip_prefix(p)?.parse::<usize>().ok();
    let key = (
        num(it.next(), 'w')?,
        num(it.next(), 'o')?,
        num(it.next(), 'n')?,
    );
    (line(key.0, key.1, key.2).trim_end() == l).then_some(key)
}

#[test]
fn writer() {
    let Ok(spec) = std::env::var(WRITER_ENV) else {
        return;
    };
    let (id, path) = spec.split_once(':').expect("id:path");
    let id: usize = id.parse().unwrap();
    for open in 0..OPENS {
        // One exec: open (rotating when full), write its lines, exit.
        let mut f = open_rotating(Path::new(path), &rotation()).unwrap();
        for n in 0..LINES {
            f.write_all(line(id, open, n).as_bytes()).unwrap();
        }
    }
}

#[test]
fn concurrent_writers_lose_tear_and_mix_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("coordinator.log");
    let me = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WRITERS)
        .map(|id| {
            Command::new(&me)
                .args(["--exact", "writer", "--test-threads=1", "--quiet"])
                .env(WRITER_ENV, format!("{id}:{}", log.display()))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }

    let mut files = 0;
    let mut seen = BTreeSet::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        files += 1;
        for l in text.lines() {
            let key = parse(l).unwrap_or_else(|| panic!("torn or mixed line: {l:?}"));
            assert!(seen.insert(key), "line written twice: {l:?}");
        }
    }
    assert_eq!(seen.len(), WRITERS * OPENS * LINES, "lines lost");
    // The run must really have rotated, many times, for this to mean much.
    assert!(files > 50, "only {files} files: rotation did not happen");
}
