//! Which certificate a connection is answered with, by the local address it arrived on: one
//! identity per local workload (ztunnel's shared mode). rustls' `ResolvesServerCert` sees only
//! the ClientHello (SNI, which HBONE clients do not send), not the socket, so the choice is
//! made per accepted socket, before the handshake, by picking that identity's `ServerConfig`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use meshd_identity::{IdentityHandle, SpiffeId};

use crate::Error;

/// Chooses the identity a server presents on a connection from the local address the client
/// connected to (the workload's address: HBONE clients dial `<workload ip>:15008`).
pub trait ServerIdentities: Send + Sync + 'static {
    /// The identity to present on a connection that arrived on `local`.
    fn for_local(&self, local: IpAddr) -> IdentityHandle;
}

/// The server's identities and the TLS configuration of each, built once per identity (a
/// config reads its identity's current SVID per handshake, so rotations need no rebuild).
pub(crate) struct Identities {
    default: (IdentityHandle, Arc<rustls::ServerConfig>),
    chooser: Option<Arc<dyn ServerIdentities>>,
    configs: Mutex<HashMap<SpiffeId, Arc<rustls::ServerConfig>>>,
}

impl Identities {
    /// Presents `identity` on every connection.
    pub(crate) fn single(identity: &IdentityHandle) -> Result<Identities, Error> {
        Ok(Identities {
            default: (
                identity.clone(),
                meshd_identity::tls::server_config(identity)?,
            ),
            chooser: None,
            configs: Mutex::new(HashMap::new()),
        })
    }

    /// Presents what `chooser` picks for each connection's local address; `default` is what
    /// [`Server::new`](super::Server::new) was given (its config reused).
    pub(crate) fn choosing(
        default: (IdentityHandle, Arc<rustls::ServerConfig>),
        chooser: Arc<dyn ServerIdentities>,
    ) -> Identities {
        Identities {
            default,
            chooser: Some(chooser),
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// The default identity (when nothing chooses) and its configuration.
    pub(crate) fn default_config(&self) -> &Arc<rustls::ServerConfig> {
        &self.default.1
    }

    /// The identity to present on a connection that arrived on `local`, and its config;
    /// `None` when nothing chooses (the default, which the connection already holds: no
    /// per-connection cost for a server of one identity).
    pub(crate) fn for_local(
        &self,
        local: IpAddr,
    ) -> Result<Option<(IdentityHandle, Arc<rustls::ServerConfig>)>, Error> {
        let Some(chooser) = &self.chooser else {
            return Ok(None);
        };
        let identity = chooser.for_local(local);
        // Keyed by the identity's ID: a handle is pinned to one ID for its whole life.
        let id = identity.current().id().clone();
        let mut configs = self
            .configs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(config) = configs.get(&id) {
            return Ok(Some((identity, Arc::clone(config))));
        }
        let config = meshd_identity::tls::server_config(&identity)?;
        configs.insert(id, Arc::clone(&config));
        Ok(Some((identity, config)))
    }
}
