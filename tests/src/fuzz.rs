//! Structure-aware mutation for the fuzz harness (`tests/tests/fuzz.rs`):
//! a deterministic generator, JSON values of the shapes the plugins read,
//! and byte-level damage. Stable Rust, no dependency.

use serde_json::{json, Map, Value};

/// xorshift64*: deterministic, dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// A JSON value of any shape, with the strings and numbers that sit on the
/// edges of what the plugins accept.
pub fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 2 { 9 } else { 11 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(rng.next_u64() as i64),
        3 => json!(-(rng.below(1000) as i64)),
        4 => json!(rng.below(70000)),
        5 => json!(*rng.pick(&[1.5e300, 0.5, -0.0, 1279.0, 4294967296.0])),
        6 => json!(*rng.pick(&[
            "",
            "underlay",
            "disabled",
            "auto",
            "10.6.0.5/16",
            "10.6.0.1",
            "fd00::1",
            "fe80::1/64",
            "::/0",
            "0b:00",
            "0a:1b",
            "eth0",
            "veth0",
            "1h",
            "10ms",
            "20000000000000000000s",
            "1e400s",
            "\u{0}",
            "é/..",
            "/dev/zero",
            "relative/path",
            "9999999999999999999999",
            "169.254.1.1"
        ])),
        7 => {
            let n = rng.below(12);
            json!((0..n)
                .map(|_| (b'!' + rng.below(90) as u8) as char)
                .collect::<String>())
        }
        8 => json!("x".repeat(*rng.pick(&[15, 16, 1024, 1025, 70_000]))),
        9 => {
            let n = rng.below(3);
            Value::Array((0..n).map(|_| random_value(rng, depth + 1)).collect())
        }
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(3) {
                let k = rng.pick(&[
                    "address",
                    "dst",
                    "gw",
                    "retries",
                    "interval",
                    "timeout",
                    "x",
                    "ips",
                    "name",
                    "mac",
                    "sandbox",
                    "interface",
                    "gateway",
                ]);
                m.insert(k.to_string(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Set, replace or remove the value at a random key of `obj` (one of `keys`),
/// or reach one level into an object or list already there.
pub fn mutate_object(rng: &mut Rng, obj: &mut Value, keys: &[&str]) {
    let Some(o) = obj.as_object_mut() else {
        *obj = random_value(rng, 0);
        return;
    };
    let k = *rng.pick(keys);
    match rng.below(4) {
        0 => {
            o.remove(k);
        }
        1 => match o.get_mut(k) {
            Some(Value::Object(inner)) if !inner.is_empty() => {
                let i = rng.below(inner.len());
                if let Some((_, v)) = inner.iter_mut().nth(i) {
                    *v = random_value(rng, 1);
                }
            }
            Some(Value::Array(list)) if !list.is_empty() => {
                let i = rng.below(list.len());
                let item = &mut list[i];
                let inner: Vec<String> = item
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                if inner.is_empty() {
                    *item = random_value(rng, 1);
                } else {
                    let ik = rng.pick(&inner).clone();
                    item[ik] = random_value(rng, 1);
                }
            }
            _ => {
                o.insert(k.into(), random_value(rng, 0));
            }
        },
        _ => {
            o.insert(k.into(), random_value(rng, 0));
        }
    }
}

/// Damage a document's bytes: flip, cut, insert a delimiter, repeat a run.
pub fn mutate_bytes(rng: &mut Rng, doc: &mut Vec<u8>) {
    if doc.is_empty() {
        doc.push(*rng.pick(b"{[\"0"));
        return;
    }
    let at = rng.below(doc.len());
    match rng.below(5) {
        0 => doc[at] = rng.next_u64() as u8,
        1 => doc.truncate(at),
        2 => doc.insert(at, *rng.pick(b"{}[]\",:\\0\xff\n ")),
        3 => doc[at] ^= 1 << rng.below(8),
        _ => {
            let end = (at + rng.below(16)).min(doc.len());
            let chunk = doc[at..end].to_vec();
            doc.splice(at..at, chunk);
        }
    }
}

/// How many inputs a target runs: `FUZZ_ITERS` when set (the long run),
/// else as many as fit in `FUZZ_SECS` (default 3) seconds (the CI smoke run).
pub struct Budget {
    iters: Option<u64>,
    until: std::time::Instant,
}

impl Budget {
    pub fn from_env() -> Budget {
        let iters = std::env::var("FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok());
        let secs = std::env::var("FUZZ_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        Budget {
            iters,
            until: std::time::Instant::now() + std::time::Duration::from_secs(secs),
        }
    }

    /// Go on with input `i`? The smoke run does at least `min` inputs.
    pub fn more(&self, i: u64, min: u64) -> bool {
        match self.iters {
            Some(n) => i < n,
            None => i < min || std::time::Instant::now() < self.until,
        }
    }

    pub fn long(&self) -> bool {
        self.iters.is_some()
    }
}
