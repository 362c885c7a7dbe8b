//! The daemon configuration in layers (figment): built-in defaults < the configuration file
//! (`/etc/meshd/meshd.yaml`, `--config FILE`, or the embedded development file) < `MESHD_*`
//! environment variables < command-line flags.
//!
//! The file is read by meshd's positioned YAML parser, once: the tree is typed alone first, so an
//! unknown key or a wrong type is reported with file, line, column and field, exactly as for the
//! Istio YAML, and the same tree is the file's figment layer ([`crate::file_layer`]).
//! Environment variables name nested keys with `__` and snake case:
//! `MESHD_LISTEN__INBOUND_PLAINTEXT=0.0.0.0:15006` sets `listen.inboundPlaintext`.
//!
//! What a reload applies: the configuration directory (`configDir`'s contents). Everything
//! else in this file — listeners, identity source, plugins, trust domain, the directory's path
//! — is read at start; a reload that finds one changed logs that a restart is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::file_layer::{FileLayer, Origin};
use crate::schema::MeshdConfig;
use figment::providers::{Env, Serialized};
use figment::{Figment, Metadata, Source};
use meshd_manifests::{parse_tree, read_tree, type_tree};

/// Where meshd looks for its configuration file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/meshd/meshd.yaml";

/// Environment variables meshd's command line reads itself, not configuration keys.
const NOT_KEYS: [&str; 3] = ["config", "log_format", "istio_bundle"];

/// The file layer.
#[derive(Debug, Clone, Copy)]
pub enum Base<'a> {
    /// A file on disk.
    File(&'a Path),
    /// Text built into the binary, shown under `name`.
    Embedded {
        /// How messages name it.
        name: &'a str,
        /// The YAML.
        text: &'a str,
    },
}

/// The command-line flags that override configuration keys.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--config-dir`.
    pub config_dir: Option<PathBuf>,
    /// `--istio-bundle`: the directory `istioctl x workload entry configure` writes. It is the
    /// lowest layer of `controlPlane:` (the file and the environment may override its keys),
    /// and it gives the mesh's trust domain and the identity (the Istio CA's, in
    /// `controlPlane.certDir`, in place of a development CA).
    pub istio_bundle: Option<PathBuf>,
}

/// Why the configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file itself (positioned: `file:line:col: field: message`).
    #[error("{0}")]
    File(String),
    /// An environment variable or flag (named in the message).
    #[error("{0}")]
    Layer(String),
}

/// The effective configuration and where each value came from.
#[derive(Debug)]
pub struct Settings {
    /// The configuration meshd runs with.
    pub config: MeshdConfig,
    /// What was ignored: `MESHD_*` environment variables that name no key (a deployment's
    /// `MESHD_BIN`, a guessed `MESHD_LOG`) are a warning, never a reason not to start.
    pub warnings: Vec<String>,
    figment: Figment,
    flags: Flags,
}

/// One value of the effective configuration, for `meshd config show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The dotted key, e.g. `listen.admin`.
    pub key: String,
    /// The value, as YAML flow text.
    pub value: String,
    /// `default`, the file's path, or the environment variable / flag that set it.
    pub source: String,
}

/// Reads the layers.
pub fn load(base: Base<'_>, flags: &Flags) -> Result<Settings, SettingsError> {
    let bundle =
        match &flags.istio_bundle {
            Some(dir) => Some(meshd_xds::bundle::load(dir).map_err(|e| {
                SettingsError::Layer(format!("--istio-bundle {}: {e}", dir.display()))
            })?),
            None => None,
        };
    let below = match &bundle {
        Some(cp) => Figment::new().merge(Serialized::default("controlPlane", cp)),
        None => Figment::new(),
    };
    // One read, one parse: the tree is typed first (errors with file, line, column, field)
    // and then gives figment the file's values.
    let (root, origin, shown_as) = match base {
        Base::File(path) => (read_tree(path), Origin::File(path.to_path_buf()), path),
        Base::Embedded { name, text } => (
            parse_tree(Path::new(name), text),
            Origin::Embedded(name.to_string()),
            Path::new(name),
        ),
    };
    let root = root.map_err(|p| SettingsError::File(p.to_string()))?;
    type_tree::<MeshdConfig>(shown_as, &root).map_err(|p| SettingsError::File(p.to_string()))?;
    let file = below.merge(FileLayer::new(origin, root));
    let warnings = stray_variables();
    let mut figment = file.merge(env());
    if let Some(dir) = &flags.config_dir {
        figment = figment.merge(Serialized::default("configDir", dir));
    }
    let mut config = figment
        .extract::<MeshdConfig>()
        .map_err(|e| SettingsError::Layer(layer_error(&e)))?;
    if bundle.is_some() {
        from_bundle(&mut config);
    }
    Ok(Settings {
        config,
        warnings,
        figment,
        flags: flags.clone(),
    })
}

/// What `--istio-bundle` decides beyond `controlPlane:`: the mesh's trust domain is the
/// bundle's, and a development CA (the embedded file's identity) gives way to the Istio CA's
/// certificate directory. Another identity source stays (a certificate chaining to istiod's
/// root also authenticates to it); `MeshdConfig::check` refuses what cannot work.
fn from_bundle(config: &mut MeshdConfig) {
    let Some(cp) = &config.control_plane else {
        return;
    };
    config.trust_domain = cp.trust_domain.clone();
    if matches!(config.identity, meshd_identity::IdentitySource::DevCa(_)) {
        config.identity = meshd_identity::IdentitySource::IstioCa(meshd_identity::IstioCaSource {
            cert_dir: cp.cert_dir.clone(),
            spiffe_id: cp.spiffe_id().ok(),
        });
    }
}

impl Settings {
    /// Every value of the effective configuration with its source, in key order.
    pub fn show(&self) -> Vec<Shown> {
        let value = serde_json::to_value(&self.config).unwrap_or_default();
        let mut shown = Vec::new();
        leaves(&value, String::new(), &mut |key, value| {
            let source = if key == "configDir" && self.flags.config_dir.is_some() {
                "--config-dir flag".to_string()
            } else {
                self.figment
                    .find_metadata(&key)
                    .map_or_else(|| "default".to_string(), describe)
            };
            shown.push(Shown {
                source,
                value: serde_json::to_string(value).unwrap_or_default(),
                key,
            });
        });
        shown
    }
}

/// The keys whose values differ between two configurations (dotted), for "needs a restart".
pub fn changed_keys(old: &MeshdConfig, new: &MeshdConfig) -> Vec<String> {
    let flatten = |config: &MeshdConfig| {
        let mut values = BTreeMap::new();
        let value = serde_json::to_value(config).unwrap_or_default();
        leaves(&value, String::new(), &mut |k, v| {
            values.insert(k, v.clone());
        });
        values
    };
    let (before, after) = (flatten(old), flatten(new));
    let keys: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

fn leaves(
    value: &serde_json::Value,
    prefix: String,
    f: &mut impl FnMut(String, &serde_json::Value),
) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, key, f);
            }
        }
        _ => f(prefix, value),
    }
}

fn describe(metadata: &Metadata) -> String {
    match &metadata.source {
        Some(Source::File(path)) => path.display().to_string(),
        Some(other) => format!("{} ({other})", metadata.name),
        None => metadata.name.to_string(),
    }
}

/// The top-level keys of meshd.yaml, as environment variables name their first segment.
fn top_level_keys() -> Vec<String> {
    let mut keys: Vec<String> = match serde_json::to_value(MeshdConfig::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    // Optional sections absent from the default.
    keys.push("controlPlane".to_string());
    keys
}

/// Whether `MESHD_<key>` names a key of meshd.yaml (its first segment is a top-level key).
fn names_a_key(key: &str, keys: &[String]) -> bool {
    let path = camel_path(key);
    let first = path.split('.').next().unwrap_or_default();
    keys.iter().any(|k| k == first)
}

/// `MESHD_*` variables that are neither keys nor read by the command line, as warnings.
fn stray_variables() -> Vec<String> {
    let keys = top_level_keys();
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter_map(|name| {
            let key = name.strip_prefix("MESHD_")?.to_ascii_lowercase();
            (!NOT_KEYS.contains(&key.as_str()) && !names_a_key(&key, &keys)).then(|| {
                format!(
                    "environment variable {name} names no meshd.yaml key; ignored (the nearest is {})",
                    nearest(&name, &keys)
                )
            })
        })
        .collect()
}

/// The variable meshd reads whose name is nearest `name`, said as the warning's hint: one that
/// `name` begins (`MESHD_LOG` → `MESHD_LOG_FORMAT`), else the fewest edits away; a top-level
/// key's or one the command line reads.
fn nearest(name: &str, keys: &[String]) -> String {
    let as_keys = keys.iter().map(|k| {
        let var = env_name(std::slice::from_ref(k));
        let hint = format!("{var}, key `{k}`");
        (var, hint)
    });
    let as_flags = NOT_KEYS.iter().map(|k| {
        let var = format!("MESHD_{}", k.to_ascii_uppercase());
        let hint = format!("{var}, read by the command line");
        (var, hint)
    });
    as_keys
        .chain(as_flags)
        .min_by_key(|(var, _)| (!var.starts_with(name), strsim::levenshtein(name, var)))
        .map(|(_, hint)| hint)
        .unwrap_or_default()
}

/// `MESHD_LISTEN__INBOUND_PLAINTEXT` → `listen.inboundPlaintext`; variables that name no key
/// are left out (see [`stray_variables`]).
fn env() -> Env {
    let keys = top_level_keys();
    // `lowercase(false)` last: figment resets it with every filter or map.
    Env::prefixed("MESHD_")
        .ignore(&NOT_KEYS)
        .filter(move |key| names_a_key(key.as_str(), &keys))
        .map(|key| camel_path(key.as_str()).into())
        .lowercase(false)
}

fn camel_path(key: &str) -> String {
    key.to_ascii_lowercase()
        .split("__")
        .map(|segment| {
            let mut out = String::with_capacity(segment.len());
            let mut upper = false;
            for c in segment.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.extend(c.to_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// `["listen", "inboundPlaintext"]` → `MESHD_LISTEN__INBOUND_PLAINTEXT`.
fn env_name(path: &[String]) -> String {
    let segments: Vec<String> = path
        .iter()
        .map(|segment| {
            let mut out = String::new();
            for c in segment.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        })
        .collect();
    format!("MESHD_{}", segments.join("__"))
}

/// figment's error with the layer that caused it (e.g. the environment variable).
fn layer_error(error: &figment::Error) -> String {
    let key = error.path.join(".");
    match &error.metadata {
        Some(metadata) if metadata.name.contains("environment") => format!(
            "environment variable {}: {key}: {}",
            env_name(&error.path),
            error.kind
        ),
        Some(metadata) => format!("{}: {key}: {}", describe(metadata), error.kind),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::camel_path;

    #[test]
    fn environment_keys_become_camel_case_paths() {
        assert_eq!(camel_path("config_dir"), "configDir");
        assert_eq!(
            camel_path("listen__inbound_plaintext"),
            "listen.inboundPlaintext"
        );
        assert_eq!(camel_path("TRUST_DOMAIN"), "trustDomain");
    }

    #[test]
    fn keys_become_environment_names() {
        let path = ["listen".to_string(), "inboundPlaintext".to_string()];
        assert_eq!(super::env_name(&path), "MESHD_LISTEN__INBOUND_PLAINTEXT");
    }
}
