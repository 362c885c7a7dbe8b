//! Plugins: tower layers added to the connection stacks by name from the daemon configuration.
//!
//! ```yaml
//! plugins:
//! - name: connection_limit
//!   config: {maxPerSource: 100}
//! ```
//!
//! Plugins sit after authorization and before the upstream connect, in the order listed, so
//! no plugin can bypass a deny. They are compiled in: a third party adds one by writing a
//! `tower::Layer` over [`ChosenService`] (see the built-in ones in this module), a factory that
//! reads its configuration from a `serde_json::Value`, and registering the factory under a name
//! with [`PluginRegistry::register`] before the proxy is built.

mod connection_limit;
mod rate_limit;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tower::util::BoxCloneSyncServiceLayer;

use crate::conn::{Conn, Upstream};
use crate::error::ProxyError;
use crate::layers::ChosenService;
use crate::relay::Relay;

pub use connection_limit::ConnectionLimitLayer;
pub use rate_limit::RateLimitLayer;

/// A plugin's layer, boxed so plugins of any type stack together.
pub type PluginLayer = BoxCloneSyncServiceLayer<ChosenService, Conn<Upstream>, Relay, ProxyError>;

/// Builds a plugin's layer from its configuration.
pub type PluginFactory = fn(&serde_json::Value) -> Result<PluginLayer, String>;

/// `plugins[]` in the daemon configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSpec {
    /// The registered name.
    pub name: String,
    /// The plugin's own configuration.
    #[serde(default)]
    pub config: serde_json::Value,
}

/// A plugin that could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// No plugin has this name.
    #[error("plugins[{index}]: unknown plugin {name:?}; known plugins: {known}")]
    Unknown {
        /// Position in the list.
        index: usize,
        /// The name asked for.
        name: String,
        /// The registered names.
        known: String,
    },
    /// The plugin rejected its configuration.
    #[error("plugins[{index}].config: {name}: {message}")]
    Config {
        /// Position in the list.
        index: usize,
        /// The plugin.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// The plugins that can be named in configuration.
#[derive(Debug, Clone)]
pub struct PluginRegistry {
    factories: BTreeMap<String, PluginFactory>,
}

impl PluginRegistry {
    /// The built-in plugins: `connection_limit`, `rate_limit`.
    pub fn builtin() -> Self {
        let mut registry = PluginRegistry {
            factories: BTreeMap::new(),
        };
        registry.register("connection_limit", connection_limit::factory);
        registry.register("rate_limit", rate_limit::factory);
        registry
    }

    /// Adds (or replaces) a plugin.
    pub fn register(&mut self, name: &str, factory: PluginFactory) {
        self.factories.insert(name.to_string(), factory);
    }

    /// Builds the layers for a configuration's plugin list, in order.
    pub fn build(&self, specs: &[PluginSpec]) -> Result<Vec<PluginLayer>, PluginError> {
        specs
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                let factory =
                    self.factories
                        .get(&spec.name)
                        .ok_or_else(|| PluginError::Unknown {
                            index,
                            name: spec.name.clone(),
                            known: self
                                .factories
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", "),
                        })?;
                factory(&spec.config).map_err(|message| PluginError::Config {
                    index,
                    name: spec.name.clone(),
                    message,
                })
            })
            .collect()
    }
}

/// Reads a plugin's configuration; `null` (no `config:`) reads as `{}`.
pub fn parse_config<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, String> {
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value.clone()
    };
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// The key limits are counted per: the peer identity (its Istio principal, as the refusal
/// reason names it) when there is one, else the source IP.
pub(crate) fn source_key(conn: &Conn<Upstream>) -> String {
    match conn.ctx.peer() {
        Some(peer) => peer.principal(),
        None => conn.ctx.source().ip().to_string(),
    }
}
