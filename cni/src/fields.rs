//! Typed access to the fields of a JSON config, for both plugins' own
//! fields: every wrong type is code 7 naming the field by its whole path
//! (`ipam.pools[1].ranges[0]`, `detectOptions.retries`). A JSON `null` counts
//! as absent, as Go's decoders (Spiderpool, Multus) treat it.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The value of `key`, `None` when absent or null.
pub fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// `parent.key`, or `key` at the top level.
pub fn path(parent: &str, key: &str) -> String {
    match parent {
        "" => key.to_string(),
        p => format!("{p}.{key}"),
    }
}

/// A wrong type: the message shows the value, cut short.
fn wrong(field: &str, v: &Value, want: &str) -> Error {
    let mut shown = v.to_string();
    if shown.len() > 64 {
        let cut = (0..=61)
            .rev()
            .find(|i| shown.is_char_boundary(*i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push_str("...");
    }
    Error::config(field, format!("{shown} is not {want}"))
}

pub fn as_object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| wrong(field, v, "an object"))
}

pub fn as_str<'a>(v: &'a Value, field: &str) -> Result<&'a str> {
    v.as_str().ok_or_else(|| wrong(field, v, "a string"))
}

pub fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str, field: &str) -> Result<Option<&'a str>> {
    get(obj, key).map(|v| as_str(v, field)).transpose()
}

pub fn opt_bool(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<bool>> {
    get(obj, key)
        .map(|v| v.as_bool().ok_or_else(|| wrong(field, v, "true or false")))
        .transpose()
}

pub fn opt_int(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<i64>> {
    get(obj, key)
        .map(|v| v.as_i64().ok_or_else(|| wrong(field, v, "an integer")))
        .transpose()
}

/// A list; absent is empty.
pub fn opt_array<'a>(obj: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a [Value]> {
    match get(obj, key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(wrong(field, v, "a list")),
    }
}

pub fn opt_object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a Map<String, Value>>> {
    get(obj, key).map(|v| as_object(v, field)).transpose()
}

/// Unknown keys are typos that would otherwise be silently ignored (a
/// misspelt `exclude` widens a pool), so they are refused.
pub fn known_keys(obj: &Map<String, Value>, keys: &[&str], field: &str) -> Result<()> {
    match obj.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(Error::config(
            &path(field, k),
            format!("unknown field (known: {})", keys.join(", ")),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrong_types_name_the_field_and_null_is_absent() {
        let v = json!({"s": "x", "n": 5, "b": true, "l": [1], "o": {}, "z": null,
                       "long": "y".repeat(500)});
        let o = v.as_object().unwrap();
        assert_eq!(opt_str(o, "s", "a.s").unwrap(), Some("x"));
        assert_eq!(opt_str(o, "z", "a.z").unwrap(), None);
        assert_eq!(opt_int(o, "n", "a.n").unwrap(), Some(5));
        assert_eq!(opt_bool(o, "b", "a.b").unwrap(), Some(true));
        assert_eq!(opt_array(o, "missing", "a.m").unwrap().len(), 0);
        assert!(opt_object(o, "o", "a.o").unwrap().is_some());
        for e in [
            opt_str(o, "n", "a.n").unwrap_err(),
            opt_int(o, "s", "a.s").unwrap_err(),
            opt_bool(o, "l", "a.l").unwrap_err(),
            opt_array(o, "o", "a.o").unwrap_err(),
            opt_object(o, "b", "a.b").unwrap_err(),
            opt_int(o, "long", "a.long").unwrap_err(),
        ] {
            assert_eq!(e.code(), 7);
            assert!(e.to_string().contains("\"a."), "{e}");
            assert!(e.to_string().len() < 200, "{e}");
        }
        let e = known_keys(o, &["s"], "ipam").unwrap_err();
        assert!(
            e.to_string().contains("\"ipam.n\"") || e.to_string().contains("\"ipam."),
            "{e}"
        );
        assert_eq!(path("", "k"), "k");
        assert_eq!(path("p", "k"), "p.k");
    }
}
