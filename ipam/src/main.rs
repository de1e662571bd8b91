//! coordinator-ipam: a CNI plugin when `CNI_COMMAND` is set, else the operator CLI.

use coordinator_ipam::{cli, verbs::IpamPlugin};

const ABOUT: cni::plugin::About = cni::plugin::About {
    name: "coordinator-ipam",
    version: env!("CARGO_PKG_VERSION"),
};

fn main() {
    if std::env::var_os("CNI_COMMAND").is_some() {
        // stdout carries only the CNI result: logs go to stderr (or a file).
        let level = std::env::var("COORDINATOR_IPAM_LOG_LEVEL").ok();
        let file = std::env::var_os("COORDINATOR_IPAM_LOG_FILE").map(std::path::PathBuf::from);
        cni::logging::init(&cni::logging::Settings {
            level: Some(level.as_deref().unwrap_or("warn")),
            file: file.as_deref(),
            rotation: Default::default(),
        });
        cni::plugin::run(&IpamPlugin, &ABOUT);
    }
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", cli::help_for(args.first().map(String::as_str)));
        return;
    }
    if args.iter().any(|a| a == "--version") {
        println!("coordinator-ipam {}", ABOUT.version);
        return;
    }
    if args.first().map(String::as_str) == Some("install") {
        let (out, err) = (&mut std::io::stdout(), &mut std::io::stderr());
        std::process::exit(cni::install::run(ABOUT.name, &args[1..], None, out, err));
    }
    let code = cli::run(&args, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
