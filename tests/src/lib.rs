//! Helpers shared by the cross-crate tests.

use std::path::PathBuf;

/// Where cargo put our plugin binaries (`coordinator`, `coordinator-ipam`):
/// the test executable lives in `target/<profile>/deps`, the binaries one up.
pub fn bin_dir() -> PathBuf {
    integration::chain::default_bin_dir()
}

/// `CNI_PATH` for test chains: the reference plugins, then ours.
pub fn cni_path() -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/lib/cni"), bin_dir()]
}

/// A file under the repository's `conf-examples/`.
pub fn conf_example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("conf-examples")
        .join(name)
}
pub mod exec;
