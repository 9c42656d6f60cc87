//! The SOC schemas' published field lists, kept in `tests/data` with their version, and the
//! checks of a record against them: every field known to the schema (or under our own
//! namespace), of its type, with an allowed value where the schema lists them.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;

fn data(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(path)
}

/// Elastic Common Schema 9.4.0: fields and their types, and the categorization fields' allowed
/// values.
pub struct Ecs {
    types: HashMap<String, String>,
    allowed: HashMap<String, Vec<String>>,
}

impl Ecs {
    pub fn load() -> Ecs {
        let read = |name: &str| {
            std::fs::read_to_string(data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let pairs = |text: String| -> Vec<(String, String)> {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| {
                    let (a, b) = l.split_once('\t')?;
                    Some((a.to_string(), b.to_string()))
                })
                .collect()
        };
        Ecs {
            types: pairs(read("ecs/fields-9.4.0.tsv")).into_iter().collect(),
            allowed: pairs(read("ecs/allowed-values-9.4.0.tsv"))
                .into_iter()
                .map(|(f, v)| (f, v.split(',').map(str::to_string).collect()))
                .collect(),
        }
    }

    /// Every problem with `record` (an ECS document), as `field: why`.
    pub fn check(&self, record: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        let mut fields = Vec::new();
        flatten("", record, &mut fields);
        for (field, value) in fields {
            if field.starts_with("passerelle.") {
                continue;
            }
            let Some(kind) = self.types.get(&field) else {
                problems.push(format!("{field}: not an ECS 9.4.0 field"));
                continue;
            };
            let values: Vec<&Value> = match &value {
                Value::Array(items) => items.iter().collect(),
                v => vec![v],
            };
            for v in values {
                let ok = match kind.as_str() {
                    "keyword" | "wildcard" | "match_only_text" | "text" | "constant_keyword" => {
                        v.is_string()
                    }
                    "long" | "integer" | "short" | "byte" => v.is_i64() || v.is_u64(),
                    "unsigned_long" => v.is_u64(),
                    "float" | "double" | "scaled_float" => v.is_number(),
                    "boolean" => v.is_boolean(),
                    "ip" => v
                        .as_str()
                        .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
                    "date" => v
                        .as_str()
                        .is_some_and(|s| humantime::parse_rfc3339_weak(s).is_ok()),
                    other => {
                        problems.push(format!("{field}: type {other} not checked here"));
                        true
                    }
                };
                if !ok {
                    problems.push(format!("{field}: {v} is not a {kind}"));
                }
                if let Some(allowed) = self.allowed.get(&field) {
                    if !v.as_str().is_some_and(|s| allowed.iter().any(|a| a == s)) {
                        problems.push(format!("{field}: {v} is not one of {allowed:?}"));
                    }
                }
            }
        }
        problems
    }
}

/// `a.b.c` paths of the leaves (arrays are leaves).
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.clone())),
    }
}

/// OCSF 1.8.0's HTTP Activity class, its objects and types, as tests/data/ocsf/extract.py
/// took them from the schema.
pub struct Ocsf {
    schema: Value,
}

impl Ocsf {
    pub fn load() -> Ocsf {
        let text = std::fs::read_to_string(data("ocsf/http_activity-1.8.0.json"))
            .expect("the OCSF extract");
        Ocsf {
            schema: serde_json::from_str(&text).expect("JSON"),
        }
    }

    pub fn version(&self) -> &str {
        self.schema["version"].as_str().unwrap_or_default()
    }

    /// Every problem with `record` (an HTTP Activity event), as `path: why`.
    pub fn check(&self, record: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        let class = &self.schema["attributes"];
        let profiles: Vec<&str> = record["metadata"]["profiles"]
            .as_array()
            .map(|p| p.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for (name, spec) in class.as_object().expect("attributes") {
            let applies = spec["profile"]
                .as_str()
                .is_none_or(|p| profiles.contains(&p));
            if applies && spec["requirement"] == "required" && record.get(name).is_none() {
                problems.push(format!("{name}: required by the class, missing"));
            }
            if let (Some(profile), Some(_)) = (spec["profile"].as_str(), record.get(name)) {
                if !profiles.contains(&profile) {
                    problems.push(format!(
                        "{name}: of the {profile} profile, which metadata.profiles does not name"
                    ));
                }
            }
        }
        if record["class_uid"] != self.schema["class_uid"] {
            problems.push(format!(
                "class_uid: {} is not HTTP Activity",
                record["class_uid"]
            ));
        }
        self.attributes("", record, class, &mut problems);
        problems
    }

    fn attributes(&self, at: &str, value: &Value, attrs: &Value, problems: &mut Vec<String>) {
        let Some(object) = value.as_object() else {
            problems.push(format!("{at}: not an object"));
            return;
        };
        for (name, v) in object {
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            let Some(spec) = attrs.get(name) else {
                problems.push(format!("{path}: not an attribute here"));
                continue;
            };
            if spec.get("array") == Some(&Value::Bool(true)) {
                match v.as_array() {
                    Some(items) => {
                        for item in items {
                            self.value(&path, item, spec, problems);
                        }
                    }
                    None => problems.push(format!("{path}: {v} is not an array")),
                }
            } else {
                self.value(&path, v, spec, problems);
            }
        }
    }

    fn value(&self, path: &str, v: &Value, spec: &Value, problems: &mut Vec<String>) {
        let kind = spec["type"].as_str().unwrap_or_default();
        if kind == "object_t" {
            let name = spec["object_type"].as_str().unwrap_or_default();
            match self.schema["objects"].get(name) {
                Some(attrs) => self.attributes(path, v, attrs, problems),
                None => problems.push(format!("{path}: object {name} unknown")),
            }
            return;
        }
        if kind == "object" {
            // `unmapped`: free-form, as OCSF intends.
            if !v.is_object() {
                problems.push(format!("{path}: not an object"));
            }
            return;
        }
        let base = self.schema["types"][kind].as_str().unwrap_or(kind);
        let ok = match base {
            "integer_t" | "long_t" | "timestamp_t" | "port_t" => v.is_i64() || v.is_u64(),
            "float_t" => v.is_number(),
            "boolean_t" => v.is_boolean(),
            "ip_t" => v
                .as_str()
                .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok()),
            _ => v.is_string(),
        };
        if !ok {
            problems.push(format!("{path}: {v} is not a {kind}"));
        }
        if let Some(values) = spec["enum"].as_array() {
            if !values.contains(v) {
                problems.push(format!("{path}: {v} is not one of {values:?}"));
            }
        }
    }
}
