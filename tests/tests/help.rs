//! `--help` on every subcommand of both binaries: its own usage on stdout,
//! exit status 0, whatever else is on the command line.

use integration::exec::bin_path;
use std::process::Command;

fn help(binary: &str, args: &[&str]) -> String {
    let out = Command::new(bin_path(binary))
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{binary} {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("USAGE:") || stdout.contains("\nUSAGE:"),
        "{stdout}"
    );
    stdout
}

#[test]
fn every_coordinator_subcommand_has_its_own_help() {
    for (cmd, marks) in [
        (
            "explain",
            &["coordinator explain", "--netns", "--pid", "--json"][..],
        ),
        (
            "install",
            &["coordinator install", "--cni-bin-dir", "--defaults-to"][..],
        ),
    ] {
        for flag in ["--help", "-h"] {
            // After other arguments too: --help wins over them.
            for args in [vec![cmd, flag], vec![cmd, "--pid", "1", flag]] {
                let text = help("coordinator", &args);
                for m in marks {
                    assert!(text.contains(m), "{args:?} lacks {m}: {text}");
                }
                let other = if cmd == "explain" {
                    "install"
                } else {
                    "explain"
                };
                assert!(!text.contains(&format!("coordinator {other}")), "{text}");
            }
        }
    }
    help("coordinator", &["--help"]);
}

#[test]
fn every_coordinator_ipam_subcommand_has_its_own_help() {
    let cmds = ["list", "usage", "release", "install", "reclaim", "migrate"];
    for cmd in cmds {
        let text = help("coordinator-ipam", &[cmd, "--help"]);
        assert!(
            text.contains(&format!("coordinator-ipam {cmd}")),
            "{cmd}: {text}"
        );
        for other in cmds.iter().filter(|o| **o != cmd) {
            assert!(
                !text.contains(&format!("coordinator-ipam {other} ")),
                "{cmd} --help shows {other}: {text}"
            );
        }
        if cmd != "install" {
            assert!(
                text.contains("OPTIONS:") && text.contains("--config FILE"),
                "{text}"
            );
        }
    }
    let all = help("coordinator-ipam", &["--help"]);
    for cmd in cmds {
        assert!(all.contains(&format!("coordinator-ipam {cmd}")), "{all}");
    }
}
