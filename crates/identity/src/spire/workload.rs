//! `identity.spire`: the SVID and bundles from a SPIRE agent's SPIFFE Workload API (gRPC over
//! the agent's Unix socket): each X.509 context the agent sends becomes a [`CredentialSet`]
//! for the follow loop in `mod.rs`.

use std::path::Path;

use futures::StreamExt;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};

use super::Updates;
use crate::credentials::{CredentialSet, Credentials};
use crate::{Error, SpiffeId, TrustBundle, TrustDomain};

/// A SPIRE agent's Workload API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpireSource {
    /// The agent's Workload API socket, `unix:///run/spire/agent.sock` (SPIFFE's endpoint form).
    pub socket: String,
    /// The SPIFFE ID to use among those the agent issues to meshd; if unset, the first (the
    /// Workload API's default SVID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<SpiffeId>,
}

impl super::Agent for SpireSource {
    fn socket(&self) -> &str {
        &self.socket
    }

    async fn open(&self) -> Result<Updates, Error> {
        let client = WorkloadApiClient::connect_to(&self.socket)
            .await
            .map_err(|e| agent_error(self, &e))?;
        let contexts = client
            .stream_x509_contexts()
            .await
            .map_err(|e| agent_error(self, &e))?;
        let source = self.clone();
        Ok(Box::pin(contexts.map(move |next| match next {
            Ok(context) => Ok(to_set(&context, &source)),
            Err(e) => Err(e.to_string()),
        })))
    }

    fn error(&self, reason: String) -> Error {
        workload_api(self, reason)
    }
}

/// Refuses a socket that is not `unix:///absolute/path` (a `tcp:` Workload API would hand
/// meshd's key over the network unauthenticated) or where no agent could ever listen.
pub(crate) fn check_socket(field: &str, socket: &str, what: &str) -> Result<(), Error> {
    let Some(path) = super::unix_socket_path(socket) else {
        return Err(Error::Config {
            field: field.into(),
            reason: format!("{socket:?} is not unix:///absolute/path ({what})"),
        });
    };
    match crate::source::impossible_path(Path::new(path), false) {
        Some(reason) => Err(Error::Config {
            field: field.into(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The context's SVID (the configured ID's, or the default) and all its bundles, validated.
fn to_set(context: &X509Context, source: &SpireSource) -> Result<CredentialSet, Error> {
    let svid = match &source.spiffe_id {
        Some(want) => context
            .svids()
            .iter()
            .find(|svid| svid.spiffe_id().to_string() == want.to_string()),
        None => context.default_svid(),
    }
    .ok_or_else(|| {
        let ids: Vec<String> = context
            .svids()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect();
        workload_api(
            source,
            format!("no X.509-SVID with the wanted ID among {ids:?}"),
        )
    })?;
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let credentials = Credentials::new(chain, key)?;
    let mut bundle = TrustBundle::default();
    for (trust_domain, roots) in context.bundle_set().iter() {
        let roots = roots
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        bundle.insert(TrustDomain::new(trust_domain.as_str())?, roots)?;
    }
    CredentialSet::new(credentials, bundle, source.spiffe_id.as_ref())
}

fn agent_error(source: &SpireSource, e: &WorkloadApiError) -> Error {
    workload_api(source, e.to_string())
}

fn workload_api(source: &SpireSource, reason: String) -> Error {
    Error::WorkloadApi {
        socket: source.socket.clone(),
        reason,
    }
}
