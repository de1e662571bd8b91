//! Bulk updates on etcd larger than one store timeout (issue 21): each
//! transaction of a migrate, reclaim or GC has its own deadline, so a copy
//! of many thousands of records finishes instead of failing halfway.

mod common;

use common::*;
use coordinator_ipam::allocator::{Attachment, Record};
use coordinator_ipam::store::{self, file::FileStore};
use serde_json::json;

/// Enough records that their transactions (16 records each) take several
/// times the 1 s timeout on a debug build.
const RECORDS: usize = 10_000;

#[test]
fn migrate_longer_than_one_timeout_copies_everything() {
    let lab = Lab::etcd();
    let file_lab = Lab::new();
    let source = FileStore::new(file_lab.data_dir());
    store::update(&source, "net1", |s| {
        for i in 0..RECORDS {
            s.put(Record {
                ip: format!("10.34.{}.{}", i / 250, 1 + i % 250)
                    .parse()
                    .unwrap(),
                pool: "p".into(),
                node: "node1".into(),
                owner: Some(Attachment {
                    container_id: format!("c{i}"),
                    ifname: "net1".into(),
                }),
                sticky: None,
            });
        }
        Ok(())
    })
    .expect("fill the file store");
    let mut conf = lab.conf(
        "1.0.0",
        json!([{"name": "p", "subnet": "10.34.0.0/16"}]),
        json!({}),
    );
    conf["ipam"]["store"]["timeout"] = json!("1s");
    let path = lab.dir.path().join("bulk.json");
    std::fs::write(&path, conf.to_string()).unwrap();
    let data_dir = file_lab.data_dir();
    let started = std::time::Instant::now();
    let (code, out, err) = cli(&[
        "migrate",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--config",
        path.to_str().unwrap(),
    ]);
    let took = started.elapsed();
    assert_eq!(code, 0, "after {took:?}: {out} {err}");
    assert!(
        out.contains(&format!("copied {RECORDS} of {RECORDS}")),
        "{out}"
    );
    assert_eq!(lab.recorded_ips("net1").len(), RECORDS);
    eprintln!("migrate of {RECORDS} records took {took:?} with a 1s timeout");
}
