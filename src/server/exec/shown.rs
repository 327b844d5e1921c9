//! What the operator (`GET /v1/approvals`) and the audit log (`exec_request`) are shown of a
//! request besides its command: the job's environment with values, the job's stdin (digest,
//! size, a bounded excerpt, which commands read it as their program), the resolved working
//! directory and the run terms. Bounded: a value or stdin beyond its cap is shown as an
//! excerpt with its length and digest (the approval hash binds the whole).

use serde_json::{Value, json};

use crate::policy::StdinFacts;

/// Bytes of one environment value shown before it is cut.
pub(super) const ENV_VALUE_SHOWN: usize = 1024;
/// Variables shown by name and value; the rest by count and digest only.
pub(super) const ENV_SHOWN: usize = 128;
/// Bytes of names and values shown in all (so one request's `exec_request` stays small).
pub(super) const ENV_TOTAL_SHOWN: usize = 16 * 1024;

fn cut(s: &str, max: usize) -> (&str, usize) {
    if s.len() <= max {
        return (s, 0);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], s.len() - end)
}

/// `{"vars": {name: value…}, "cut": […], "omitted": n, "sha256": …}` for the job's
/// environment (sorted by name); `requested` lists the names the request set.
pub(super) fn env(env: &[(String, String)], requested: &[String]) -> Value {
    let mut sorted: Vec<&(String, String)> = env.iter().collect();
    sorted.sort();
    let mut vars = serde_json::Map::new();
    let mut cut_names = Vec::new();
    let mut total = 0;
    let mut shown_count = 0;
    for (k, v) in sorted.iter().take(ENV_SHOWN) {
        let (shown, more) = cut(v, ENV_VALUE_SHOWN);
        total += k.len() + shown.len();
        if total > ENV_TOTAL_SHOWN {
            break;
        }
        shown_count += 1;
        if more > 0 {
            cut_names.push(json!({"name": k, "bytes": v.len(), "sha256": crate::config::sha256_hex(v.as_bytes())}));
        }
        vars.insert(k.clone(), shown.into());
    }
    let canonical: Vec<(&str, &str)> = sorted
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    json!({
        "vars": vars,
        "requested": requested,
        "cut": cut_names,
        "omitted": sorted.len() - shown_count,
        "sha256": crate::config::sha256_hex(&serde_json::to_vec(&canonical).unwrap_or_default()),
    })
}

/// The stdin facts, or `null` when the job reads none.
pub(super) fn stdin(facts: Option<&StdinFacts>) -> Value {
    facts.map_or(Value::Null, |f| serde_json::to_value(f).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_and_many_variables_are_bounded() {
        let mut vars: Vec<(String, String)> =
            (0..300).map(|i| (format!("V{i:03}"), "x".into())).collect();
        vars.push(("BIG".into(), "é".repeat(2000)));
        let v = env(&vars, &["BIG".into()]);
        assert_eq!(v["omitted"], 301 - ENV_SHOWN as u64);
        let big = v["vars"]["BIG"].as_str().unwrap();
        assert!(big.len() <= ENV_VALUE_SHOWN);
        assert_eq!(v["cut"][0]["bytes"], 4000);
        assert!(v.to_string().len() < 64 * 1024);
        // Many long values: the total is bounded too, and the rest are counted.
        let long: Vec<(String, String)> = (0..100)
            .map(|i| (format!("L{i:02}"), "y".repeat(1000)))
            .collect();
        let v = env(&long, &[]);
        assert!(
            v["vars"].to_string().len() <= ENV_TOTAL_SHOWN + 2048,
            "{}",
            v["vars"].to_string().len()
        );
        assert_eq!(
            v["vars"].as_object().unwrap().len() as u64 + v["omitted"].as_u64().unwrap(),
            100
        );
    }
}
