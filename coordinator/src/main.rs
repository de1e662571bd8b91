//! coordinator: a CNI plugin when `CNI_COMMAND` is set, else the operator CLI
//! (`explain`, `install`, `--help`, `--version`).

use coordinator::explain;

const ABOUT: cni::plugin::About = cni::plugin::About {
    name: "coordinator",
    version: env!("CARGO_PKG_VERSION"),
};

fn help() -> String {
    format!(
        "\
coordinator: CNI meta-plugin that makes a multi-NIC pod's routing coherent,
and its operator tool.

As a CNI plugin it is run by the container runtime with CNI_COMMAND set and
the network configuration on stdin (without arguments it always is one). Run
by hand with a command, it explains a pod's routing and installs itself.

USAGE:
{}{}  coordinator --help | --version

EXAMPLES:
  coordinator explain --pid 4242
  coordinator explain --netns /var/run/netns/cni-1234 --json
  coordinator install --cni-bin-dir /host/opt/cni/bin \\
      --defaults-from /config/defaults.json --defaults-to /host/etc/cni/coordinator/defaults.json
",
        explain::USAGE,
        cni::install::usage("coordinator", true)
    )
}

/// Node defaults must parse as a coordinator config before they are installed.
fn check_defaults(data: &[u8]) -> cni::Result<()> {
    let v: serde_json::Value = serde_json::from_slice(data)
        .map_err(|e| cni::Error::config("defaultsFile", format!("not valid JSON: {e}")))?;
    let map = v
        .as_object()
        .ok_or_else(|| cni::Error::config("defaultsFile", "not a JSON object"))?;
    coordinator::config::Config::from_map(map).map(|_| ())
}

fn main() {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // A runtime passes no arguments: without them this stays a CNI plugin,
    // and a missing CNI_COMMAND is the CNI error (code 4) a runtime expects.
    if std::env::var_os("CNI_COMMAND").is_some() || args.is_empty() {
        cni::plugin::run(&coordinator::plugin::Coordinator, &ABOUT);
    }
    let (out, err) = (&mut std::io::stdout(), &mut std::io::stderr());
    let wants_help = args[1..].iter().any(|a| a == "--help" || a == "-h");
    let code = match args.first().map(String::as_str) {
        Some("explain") if wants_help => {
            print!("USAGE:\n{}", explain::USAGE);
            0
        }
        Some("install") if wants_help => {
            print!("USAGE:\n{}", cni::install::usage("coordinator", true));
            0
        }
        Some("--help" | "-h" | "help") => {
            print!("{}", help());
            0
        }
        Some("--version") => {
            println!("coordinator {}", ABOUT.version);
            0
        }
        Some("explain") => explain::run(&args[1..], out, err),
        Some("install") => {
            cni::install::run("coordinator", &args[1..], Some(&check_defaults), out, err)
        }
        other => {
            let other = other.unwrap_or_default();
            eprintln!(
                "coordinator: unknown command {other:?} (CNI_COMMAND is not set)\n\n{}",
                help()
            );
            2
        }
    };
    std::process::exit(code);
}
