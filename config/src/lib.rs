//! Layered configuration, shared by the coordinator and the agent: a TOML file, then `MERIDIAN_*`
//! environment variables, each of which replaces one option of the file.
//!
//! An option's variable is `MERIDIAN_` and its TOML path in upper case joined by `_` (`[raft] listen` →
//! `MERIDIAN_RAFT_LISTEN`). Each process lists the options the environment may set together with their
//! kind ([`EnvKind`]), and a variable's text is read as that kind: nothing is guessed from how the text
//! looks, so `MERIDIAN_NAME=1` names a coordinator `"1"` and `MERIDIAN_NODE_ID=x` is refused, naming the
//! variable. The merged document is then deserialized and validated by its owner.

use std::collections::BTreeMap;

/// How a variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKind {
    /// Taken as it is.
    Text,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// Comma-separated items (`c1:7170,c2:7170`).
    List,
    /// Comma-separated `key=value` pairs, replacing a whole table (`zone=eu-1a,instance=spot`).
    Pairs,
}

/// Why the layers could not be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    /// The file is not valid TOML.
    #[error("{0}")]
    File(String),
    /// A variable's value does not fit its option.
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
}

/// The environment variable of a TOML path.
pub fn env_name(path: &str) -> String {
    format!("MERIDIAN_{}", path.replace('.', "_").to_uppercase())
}

/// The `MERIDIAN_*` variables of this process.
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("MERIDIAN_"))
        .collect()
}

/// The file's TOML with the variables of `env` that name an option of `keys` laid over it.
pub fn layered(
    file: &str,
    keys: &[(&str, EnvKind)],
    env: &BTreeMap<String, String>,
) -> Result<toml::Table, LayerError> {
    let mut doc: toml::Table = toml::from_str(file).map_err(|e| LayerError::File(e.to_string()))?;
    for (path, kind) in keys {
        let name = env_name(path);
        if let Some(raw) = env.get(&name) {
            let value = env_value(*kind, raw).map_err(|message| LayerError::Env {
                name: name.clone(),
                message,
            })?;
            set_path(&mut doc, path, value).map_err(|message| LayerError::Env { name, message })?;
        }
    }
    Ok(doc)
}

fn env_value(kind: EnvKind, raw: &str) -> Result<toml::Value, String> {
    let items = || {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
    };
    Ok(match kind {
        EnvKind::Text => toml::Value::String(raw.to_owned()),
        EnvKind::Integer => {
            let t = raw.trim();
            let digits = t.strip_prefix('-').unwrap_or(t);
            toml::Value::Integer(t.parse().map_err(|_| {
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    format!("{raw:?} is too large")
                } else {
                    format!("{raw:?} is not a whole number")
                }
            })?)
        }
        EnvKind::Boolean => match raw.trim() {
            "true" => toml::Value::Boolean(true),
            "false" => toml::Value::Boolean(false),
            _ => return Err(format!("{raw:?} is neither true nor false")),
        },
        EnvKind::List => toml::Value::Array(
            items()
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        ),
        EnvKind::Pairs => {
            let mut table = toml::Table::new();
            for item in items() {
                let (k, v) = item
                    .split_once('=')
                    .ok_or_else(|| format!("{item:?} is not key=value"))?;
                table.insert(
                    k.trim().to_owned(),
                    toml::Value::String(v.trim().to_owned()),
                );
            }
            toml::Value::Table(table)
        }
    })
}

/// Sets `path` (dotted) in `doc`, creating tables on the way.
fn set_path(doc: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().ok_or_else(|| "empty path".to_owned())?;
    let mut table = doc;
    for part in parts {
        table = table
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a table in the file"))?;
    }
    table.insert(last.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[(&str, EnvKind)] = &[
        ("name", EnvKind::Text),
        ("node_id", EnvKind::Integer),
        ("admin.tls", EnvKind::Boolean),
        ("coordinators", EnvKind::List),
        ("labels", EnvKind::Pairs),
    ];

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn variables_replace_options_as_their_kind_says() {
        let doc = layered(
            "name = \"c1\"\nnode_id = 1\n[admin]\ntls = true\n",
            KEYS,
            &env(&[
                ("MERIDIAN_NAME", "1"),
                ("MERIDIAN_NODE_ID", "7"),
                ("MERIDIAN_ADMIN_TLS", "false"),
                ("MERIDIAN_COORDINATORS", "c1:7170, c2:7170,"),
                ("MERIDIAN_LABELS", "zone=eu-1a,instance=spot"),
                ("MERIDIAN_UNKNOWN", "ignored"),
            ]),
        )
        .expect("layers merge");
        assert_eq!(
            doc["name"],
            toml::Value::String("1".into()),
            "digits stay text"
        );
        assert_eq!(doc["node_id"], toml::Value::Integer(7));
        assert_eq!(doc["admin"]["tls"], toml::Value::Boolean(false));
        assert_eq!(
            doc["coordinators"],
            toml::Value::Array(vec!["c1:7170".into(), "c2:7170".into()])
        );
        assert_eq!(doc["labels"]["zone"], toml::Value::String("eu-1a".into()));
        assert!(!doc.contains_key("unknown"));
    }

    #[test]
    fn a_value_that_does_not_fit_names_its_variable() {
        for (name, value) in [
            ("MERIDIAN_NODE_ID", "x"),
            ("MERIDIAN_NODE_ID", "18446744073709551615"),
            ("MERIDIAN_ADMIN_TLS", "yes"),
            ("MERIDIAN_LABELS", "zone"),
        ] {
            match layered("", KEYS, &env(&[(name, value)])) {
                Err(LayerError::Env { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}={value}: {other:?}"),
            }
        }
        assert!(matches!(
            layered("admin = 3", KEYS, &env(&[("MERIDIAN_ADMIN_TLS", "true")])),
            Err(LayerError::Env { .. })
        ));
        assert!(matches!(
            layered("not toml [", KEYS, &env(&[])),
            Err(LayerError::File(_))
        ));
    }
}
