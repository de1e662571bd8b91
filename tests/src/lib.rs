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
/// The index of link `name` in the calling thread's netns (sysfs shows the
/// mount's netns, not the thread's: ask the kernel).
pub fn ifindex(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: valid C string; the result is checked.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

pub use integration::exec;
pub mod fuzz;
pub mod fuzz_http;
pub mod kstate;
pub mod samples;

/// Does the file at `path` contain `needle` anywhere (a string constant
/// compiled into a binary)? Panics when the file cannot be read.
pub fn file_contains(path: &std::path::Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The MAC address of `ifname` in netns `ns`, as `ip -j link` shows it.
pub fn mac_of(ns: &str, ifname: &str) -> String {
    let links = integration::lab::links(ns).unwrap();
    links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["ifname"] == ifname)
        .and_then(|l| l["address"].as_str())
        .unwrap_or_else(|| panic!("{ifname} not in {ns}: {links}"))
        .to_string()
}

/// The conflist's coordinator entry with `fields` merged in and its
/// quarantine file in `dir` (the lab's), for further settings.
pub fn coordinator_entry<'a>(
    list: &'a mut integration::chain::NetConfList,
    fields: &serde_json::Value,
    dir: &std::path::Path,
) -> &'a mut serde_json::Map<String, serde_json::Value> {
    let c = list.plugin_mut("coordinator").expect("a coordinator entry");
    for (k, v) in fields.as_object().expect("fields are an object") {
        c.insert(k.clone(), v.clone());
    }
    c.insert(
        "quarantineFile".into(),
        serde_json::json!(dir.join("quarantine.json")),
    );
    c
}
