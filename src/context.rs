//! Named contexts: which coordinators a command talks to, the CA to trust and the token file to use, kept
//! under a name in the CLI's config file so an operator of several clusters switches with one command
//! (`meridian context use prod`).
//!
//! The file is TOML at `$MERIDIAN_CONFIG`, else `$XDG_CONFIG_HOME/meridian/config.toml`, else
//! `~/.config/meridian/config.toml`. It holds paths, never a token itself, and is written mode 0600 through
//! a temporary file and a rename, so a reader never sees half of it.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::{parse_addrs, ClientError};

/// The config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextFile {
    /// The context commands use when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One named context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Coordinator admin API addresses, tried in turn.
    pub addr: Vec<String>,
    /// The CA that signed the admin API's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<PathBuf>,
    /// A file holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The project to act in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// Where the config file is, when the environment says (no `HOME` and no override: nowhere).
pub fn config_path() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(p) = var("MERIDIAN_CONFIG") {
        return Some(PathBuf::from(p));
    }
    if let Some(dir) = var("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(dir).join("meridian/config.toml"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".config/meridian/config.toml"))
}

fn no_config_path() -> ClientError {
    ClientError::Usage(
        "no place for the config file: set MERIDIAN_CONFIG (or HOME or XDG_CONFIG_HOME)".into(),
    )
}

/// Reads the config file; a file that does not exist is an empty one.
pub fn load(path: &Path) -> Result<ContextFile, ClientError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| ClientError::Usage(format!("config file {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ContextFile::default()),
        Err(e) => Err(ClientError::Usage(format!(
            "config file {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the config file (mode 0600, its folder 0700 when created) in one step.
pub fn save(path: &Path, file: &ContextFile) -> Result<(), ClientError> {
    let fail = |e: std::io::Error| {
        ClientError::Failed(format!("writing config file {}: {e}", path.display()))
    };
    let text = toml::to_string_pretty(file)
        .map_err(|e| ClientError::Failed(format!("encoding the config file: {e}")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(fail)?;
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.toml.")
        .tempfile_in(&dir)
        .map_err(fail)?;
    tmp.write_all(text.as_bytes()).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    // tempfile creates the file mode 0600 already; the rename keeps it.
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// The context a command uses: the one `name` names (an error when there is none by that name), else the
/// config file's current one, else none.
pub fn selected(name: Option<&str>) -> Result<Option<Context>, ClientError> {
    let Some(path) = config_path() else {
        return match name {
            Some(_) => Err(no_config_path()),
            None => Ok(None),
        };
    };
    let file = load(&path)?;
    match name.or(file.current.as_deref()) {
        None => Ok(None),
        Some(n) => match file.contexts.get(n) {
            Some(c) => Ok(Some(c.clone())),
            None => Err(ClientError::Usage(format!(
                "no context named {n:?} in {}{}",
                path.display(),
                known(&file)
            ))),
        },
    }
}

/// ` (known: a, b)` or ` (it has none; add one with meridian context add)`.
fn known(file: &ContextFile) -> String {
    if file.contexts.is_empty() {
        " (it has none: add one with `meridian context add`)".to_owned()
    } else {
        let names: Vec<&str> = file.contexts.keys().map(String::as_str).collect();
        format!(" (known: {})", names.join(", "))
    }
}

/// A context from what `meridian context add` was given: addresses checked, paths made absolute (the
/// file is read from other working directories) and required to exist.
pub fn new_context(
    addr: &str,
    cacert: Option<&Path>,
    token_file: Option<&Path>,
    project: Option<&str>,
) -> Result<Context, ClientError> {
    let addr = parse_addrs(addr)?;
    let absolute = |flag: &str, p: &Path| -> Result<PathBuf, ClientError> {
        std::fs::canonicalize(p)
            .map_err(|e| ClientError::Usage(format!("{flag} {}: {e}", p.display())))
    };
    let cacert = cacert.map(|p| absolute("--cacert", p)).transpose()?;
    if cacert.is_none() && addr.iter().any(|a| a.starts_with("https://")) {
        return Err(ClientError::Usage(
            "an https:// address needs --cacert (the CA that signed the admin API's certificate)"
                .into(),
        ));
    }
    Ok(Context {
        addr,
        cacert,
        token_file: token_file
            .map(|p| absolute("--token-file", p))
            .transpose()?,
        project: project.map(str::to_owned),
    })
}

/// Adds or replaces a context; `make_current` also selects it.
pub fn add(name: &str, context: Context, make_current: bool) -> Result<PathBuf, ClientError> {
    check_name(name)?;
    let path = config_path().ok_or_else(no_config_path)?;
    let mut file = load(&path)?;
    file.contexts.insert(name.to_owned(), context);
    if make_current || file.current.is_none() {
        file.current = Some(name.to_owned());
    }
    save(&path, &file)?;
    Ok(path)
}

/// Makes `name` the current context.
pub fn use_context(name: &str) -> Result<(), ClientError> {
    let path = config_path().ok_or_else(no_config_path)?;
    let mut file = load(&path)?;
    if !file.contexts.contains_key(name) {
        return Err(ClientError::NotFound(format!(
            "no context named {name:?} in {}{}",
            path.display(),
            known(&file)
        )));
    }
    file.current = Some(name.to_owned());
    save(&path, &file)
}

/// Removes a context (and unselects it when it was current).
pub fn remove(name: &str) -> Result<(), ClientError> {
    let path = config_path().ok_or_else(no_config_path)?;
    let mut file = load(&path)?;
    if file.contexts.remove(name).is_none() {
        return Err(ClientError::NotFound(format!(
            "no context named {name:?} in {}{}",
            path.display(),
            known(&file)
        )));
    }
    if file.current.as_deref() == Some(name) {
        file.current = None;
    }
    save(&path, &file)
}

/// The config file's contents (empty when there is none).
pub fn list() -> Result<ContextFile, ClientError> {
    match config_path() {
        Some(path) => load(&path),
        None => Ok(ContextFile::default()),
    }
}

/// Context names are short words: letters, digits, `-`, `_`, `.`.
fn check_name(name: &str) -> Result<(), ClientError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ClientError::Usage(format!(
            "context name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_round_trips_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        let mut file = ContextFile {
            current: Some("prod".into()),
            ..ContextFile::default()
        };
        file.contexts.insert(
            "prod".into(),
            Context {
                addr: vec!["https://a:7071".into(), "https://b:7071".into()],
                cacert: Some("/etc/meridian/ca.pem".into()),
                token_file: None,
                project: Some("vision".into()),
            },
        );
        save(&path, &file).unwrap();
        assert_eq!(load(&path).unwrap(), file);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        std::fs::write(
            &path,
            "[contexts.x]\naddr = [\"http://127.0.0.1:1\"]\ntoken = \"t\"\n",
        )
        .unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("token"), "{err}");
        assert_eq!(
            load(&dir.path().join("none.toml")).unwrap(),
            ContextFile::default()
        );
    }

    #[test]
    fn context_names_are_short_words() {
        for ok in ["prod", "eu-west.1", "a_b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "x/y", &"n".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_new_context_needs_a_ca_for_https_and_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(new_context("https://a:7071", None, None, None).is_err());
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let c = new_context("https://a:7071, https://b:7071/", Some(&ca), None, None).unwrap();
        assert_eq!(c.addr, ["https://a:7071", "https://b:7071"]);
        assert!(c.cacert.unwrap().is_absolute());
        let missing = dir.path().join("missing");
        assert!(new_context("http://127.0.0.1:7070", None, Some(&missing), None).is_err());
        assert!(new_context("ftp://x", None, None, None).is_err());
    }
}
