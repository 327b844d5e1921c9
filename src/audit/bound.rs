//! Bounding what one record stores: a request of a megabyte must not become a megabyte of
//! audit log (issue 15: 1 MiB requests, withdrawn at once, wrote 575 MB in 5 s).
//!
//! Applied to every event's fields before encoding (`chain::encode_bounded`). A string longer
//! than the cap becomes `{"excerpt", "bytes", "sha256"}`: its first bytes (cut on a character
//! boundary), its length and the SHA-256 of all of it, so the full value can still be matched
//! against a copy. An array or object whose compact JSON is longer than the cap becomes
//! `{"excerpt", "bytes", "sha256", "items"}`: the leading items that fit (each bounded itself),
//! the length and SHA-256 of its whole compact JSON, and its item count. A record of an event
//! with `f` fields is therefore at most about `f × cap` plus the chain fields.
//!
//! Must never: change a value that fits, or drop the digest of one that does not.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The default cap of one field (`audit.max_field_bytes`).
pub const DEFAULT_FIELD_BYTES: usize = 4096;
/// The smallest cap allowed: room for the summary's own keys and digest.
pub const MIN_FIELD_BYTES: usize = 256;

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The longest prefix of `s` of at most `n` bytes that ends on a character boundary.
fn prefix(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Bounds every field of `fields` (a record's event fields) to `cap` bytes of JSON.
pub fn bound_fields(fields: &mut Map<String, Value>, cap: usize) {
    for v in fields.values_mut() {
        bound(v, cap);
    }
}

/// Bounds one value (see the module docs).
pub fn bound(v: &mut Value, cap: usize) {
    let cap = cap.max(MIN_FIELD_BYTES);
    match v {
        Value::String(s) if s.len() > cap => {
            // The summary's keys and digest take ~130 bytes; the excerpt gets the rest.
            let excerpt = prefix(s, cap - 160).to_string();
            *v = serde_json::json!({"excerpt": excerpt, "bytes": s.len(), "sha256": hex(s.as_bytes())});
        }
        Value::Array(_) | Value::Object(_) => {
            let whole = serde_json::to_vec(v).unwrap_or_default();
            if whole.len() <= cap {
                return;
            }
            let digest = hex(&whole);
            let budget = cap - 200;
            let mut used = 2usize;
            let summary = match std::mem::take(v) {
                Value::Array(items) => {
                    let n = items.len();
                    let mut keep = Vec::new();
                    for mut item in items {
                        bound(&mut item, budget / 4);
                        let len = serde_json::to_vec(&item).map(|b| b.len()).unwrap_or(0) + 1;
                        if used + len > budget {
                            break;
                        }
                        used += len;
                        keep.push(item);
                    }
                    serde_json::json!({"excerpt": keep, "items": n, "bytes": whole.len(), "sha256": digest})
                }
                Value::Object(map) => {
                    let n = map.len();
                    let mut keep = Map::new();
                    for (k, mut item) in map {
                        bound(&mut item, budget / 4);
                        let key = prefix(&k, budget / 4).to_string();
                        let len =
                            serde_json::to_vec(&item).map(|b| b.len()).unwrap_or(0) + key.len() + 4;
                        if used + len > budget {
                            break;
                        }
                        used += len;
                        keep.insert(key, item);
                    }
                    serde_json::json!({"excerpt": keep, "items": n, "bytes": whole.len(), "sha256": digest})
                }
                other => other,
            };
            *v = summary;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(v: &Value) -> usize {
        serde_json::to_vec(v).unwrap().len()
    }

    #[test]
    fn values_that_fit_are_unchanged() {
        let mut v = serde_json::json!({"a": "short", "b": ["x", "y"], "c": 3, "d": null});
        let before = v.clone();
        bound(&mut v, 4096);
        assert_eq!(v, before);
    }

    #[test]
    fn a_megabyte_command_becomes_an_excerpt_its_length_and_its_digest() {
        let cmd = format!("echo {}; rm -rf ./*", "é".repeat(512 * 1024));
        let mut v = Value::String(cmd.clone());
        bound(&mut v, 4096);
        assert!(size(&v) <= 4096, "{}", size(&v));
        assert_eq!(v["bytes"], cmd.len());
        assert_eq!(v["sha256"], hex(cmd.as_bytes()));
        let excerpt = v["excerpt"].as_str().unwrap();
        assert!(cmd.starts_with(excerpt) && excerpt.starts_with("echo é"));
    }

    #[test]
    fn a_huge_argv_keeps_its_leading_items_and_a_digest_of_all() {
        let argv: Vec<String> = std::iter::once("/bin/echo".to_string())
            .chain((0..200_000).map(|i| format!("a{i}")))
            .collect();
        let mut v = serde_json::to_value(&argv).unwrap();
        let whole = serde_json::to_vec(&v).unwrap();
        bound(&mut v, 4096);
        assert!(size(&v) <= 4096, "{}", size(&v));
        assert_eq!(v["items"], argv.len());
        assert_eq!(v["sha256"], hex(&whole));
        assert_eq!(v["excerpt"][0], "/bin/echo");
        // One giant argument among small ones: bounded in place, the rest kept.
        let mut v = serde_json::json!(["sh", "-c", "x".repeat(100_000)]);
        bound(&mut v, 4096);
        assert!(size(&v) <= 4096);
        assert_eq!(v["excerpt"][1], "-c");
        assert_eq!(v["excerpt"][2]["bytes"], 100_000);
    }

    #[test]
    fn an_object_with_many_keys_is_bounded_too() {
        let env: Map<String, Value> = (0..10_000)
            .map(|i| (format!("K{i}"), Value::String("v".repeat(50))))
            .collect();
        let mut fields = Map::new();
        fields.insert("env".into(), Value::Object(env));
        fields.insert("job".into(), "j_1".into());
        bound_fields(&mut fields, 4096);
        assert!(size(&fields["env"]) <= 4096);
        assert_eq!(fields["env"]["items"], 10_000);
        assert_eq!(fields["job"], "j_1");
    }
}
