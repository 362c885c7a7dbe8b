//! `identity.spireDelegated`: the SVID of the workload that selectors name, from SPIRE's
//! Delegated Identity API on the agent's admin socket (what Istio's ztunnel uses with SPIRE).
//!
//! Who may call it is SPIRE's decision: the agent attests the caller (meshd's process, through
//! the socket's peer credentials) and serves it only if one of its registration entries' SPIFFE
//! IDs is in the agent's `authorized_delegates`; anyone else gets `PermissionDenied`, which
//! meshd reports as the reason it is not ready. meshd never asks by PID, only by selectors,
//! and never with an empty selector list (SPIRE would refuse it; meshd refuses it first).
//!
//! One connection per source, carrying two streams: `SubscribeToX509SVIDs` (the workload's
//! SVIDs) and `SubscribeToX509Bundles` (every bundle the agent holds). A set is built whenever
//! either changes, from the SVID and the bundles of its own trust domain and of those its
//! entry federates with (`federates_with`, what the Workload API would give the workload).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use futures::stream;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::net::UnixStream;
use tonic::Streaming;
use tonic::transport::{Endpoint, Uri};

use super::proto::delegated::delegated_identity_client::DelegatedIdentityClient;
use super::proto::delegated::{
    SubscribeToX509BundlesRequest, SubscribeToX509BundlesResponse, SubscribeToX509sviDsRequest,
    SubscribeToX509sviDsResponse,
};
use super::proto::types;
use super::{Agent, Updates};
use crate::credentials::{CredentialSet, Credentials};
use crate::{Error, SpiffeId, TrustBundle, TrustDomain};

/// A SPIRE agent's Delegated Identity API, for the workload its selectors name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpireDelegatedSource {
    /// The agent's admin socket (its `admin_socket_path`), `unix:///run/spire/admin.sock`.
    pub admin_socket: String,
    /// The workload's selectors, such as `unix:uid:1001`: the SVIDs of the entries these
    /// match. Never empty (an empty list would name no workload, not every workload).
    #[serde(deserialize_with = "non_empty")]
    pub selectors: Vec<Selector>,
    /// The SPIFFE ID to use among the SVIDs the selectors match; if unset, there must be
    /// exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<SpiffeId>,
}

/// A SPIRE selector, `type:value` (`unix:uid:1001`: type `unix`, value `uid:1001`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    value: String,
}

impl Selector {
    /// The selector's type (the workload attestor's name: `unix`, `k8s`, `docker`, …).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// What the attestor must have found (`uid:1001`).
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl FromStr for Selector {
    type Err = Error;

    /// SPIRE's own rules (`api.SelectorsFromProto`): a type without `:`, a non-empty value.
    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Config {
            field: "spireDelegated.selectors".into(),
            reason: format!("{text:?}: {reason}"),
        };
        let (kind, value) = text
            .split_once(':')
            .ok_or_else(|| bad("expected type:value, such as unix:uid:1001"))?;
        if kind.is_empty() || kind.trim() != kind {
            return Err(bad("the selector type is empty or padded"));
        }
        if value.is_empty() {
            return Err(bad("the selector value is empty"));
        }
        Ok(Selector {
            kind: kind.to_string(),
            value: value.to_string(),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|e| match e {
            Error::Config { reason, .. } => serde::de::Error::custom(reason),
            other => serde::de::Error::custom(other),
        })
    }
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Selector>, D::Error> {
    let selectors = Vec::<Selector>::deserialize(d)?;
    if selectors.is_empty() {
        return Err(serde::de::Error::custom(NO_SELECTORS));
    }
    Ok(selectors)
}

const NO_SELECTORS: &str =
    "is empty: name the workload by at least one selector (an empty list names no workload)";

/// Refuses an admin socket that is not `unix:///absolute/path` or can never exist, and an
/// empty selector list (serde refuses it in files; this catches a source built in code).
pub(crate) fn check_delegated(source: &SpireDelegatedSource) -> Result<(), Error> {
    super::check_socket(
        "spireDelegated.adminSocket",
        &source.admin_socket,
        "the agent's admin socket, its admin_socket_path",
    )?;
    if source.selectors.is_empty() {
        return Err(Error::Config {
            field: "spireDelegated.selectors".into(),
            reason: NO_SELECTORS.into(),
        });
    }
    Ok(())
}

/// The source and the path of its socket, as the follow loop uses them.
pub(crate) struct Delegated {
    source: SpireDelegatedSource,
}

impl Delegated {
    pub(crate) fn new(source: SpireDelegatedSource) -> Self {
        Delegated { source }
    }

    async fn client(&self) -> Result<DelegatedIdentityClient<tonic::transport::Channel>, Error> {
        let path = super::unix_socket_path(&self.source.admin_socket)
            .map(PathBuf::from)
            .ok_or_else(|| self.error("not a unix:///absolute/path socket".into()))?;
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        });
        // The URI only names the :authority; the connector decides where to dial.
        let channel = Endpoint::from_static("http://spire-agent-admin")
            .connect_with_connector(connector)
            .await
            .map_err(|e| self.error(format!("cannot connect: {}", error_chain(&e))))?;
        Ok(DelegatedIdentityClient::new(channel))
    }

    fn request(&self) -> SubscribeToX509sviDsRequest {
        let selectors = self
            .source
            .selectors
            .iter()
            .map(|s| types::Selector {
                r#type: s.kind.clone(),
                value: s.value.clone(),
            })
            .collect();
        SubscribeToX509sviDsRequest { selectors, pid: 0 }
    }

    /// Why the agent refused a call, with what to do about the refusals an operator can fix.
    fn refused(&self, call: &str, status: &tonic::Status) -> Error {
        let hint = match status.code() {
            tonic::Code::PermissionDenied => {
                "; meshd is not an authorized delegate: register meshd's own workload at this \
                 agent and list its SPIFFE ID in the agent's authorized_delegates"
            }
            tonic::Code::Unimplemented => "; is this the agent's admin socket?",
            _ => "",
        };
        self.error(format!(
            "Delegated Identity API {call} refused: {:?}: {}{hint}",
            status.code(),
            status.message()
        ))
    }
}

impl Agent for Delegated {
    fn socket(&self) -> &str {
        &self.source.admin_socket
    }

    async fn open(&self) -> Result<Updates, Error> {
        // Fail closed before any call: an empty list would name no workload.
        check_delegated(&self.source)?;
        let mut client = self.client().await?;
        let svids = client
            .subscribe_to_x509svi_ds(self.request())
            .await
            .map_err(|s| self.refused("SubscribeToX509SVIDs", &s))?
            .into_inner();
        let bundles = client
            .subscribe_to_x509_bundles(SubscribeToX509BundlesRequest {})
            .await
            .map_err(|s| self.refused("SubscribeToX509Bundles", &s))?
            .into_inner();
        let merge = Merge {
            source: self.source.clone(),
            svids,
            bundles,
            last_svids: None,
            last_bundles: None,
        };
        Ok(Box::pin(stream::unfold(merge, |mut merge| async move {
            let update = merge.next().await;
            Some((update, merge))
        })))
    }

    fn error(&self, reason: String) -> Error {
        Error::WorkloadApi {
            socket: self.source.admin_socket.clone(),
            reason,
        }
    }
}

/// The two streams of one connection and the latest message of each.
struct Merge {
    source: SpireDelegatedSource,
    svids: Streaming<SubscribeToX509sviDsResponse>,
    bundles: Streaming<SubscribeToX509BundlesResponse>,
    last_svids: Option<SubscribeToX509sviDsResponse>,
    last_bundles: Option<HashMap<String, Vec<u8>>>,
}

impl Merge {
    /// Waits for either stream; once both have spoken, each message gives a new set.
    async fn next(&mut self) -> super::Update {
        loop {
            // `message()` is cancel-safe: the stream keeps its state between polls.
            tokio::select! {
                m = self.svids.message() => match m {
                    Ok(Some(svids)) => self.last_svids = Some(svids),
                    Ok(None) => return Err("the agent closed the SVID stream".into()),
                    Err(s) => return Err(format!("SVID stream: {:?}: {}", s.code(), s.message())),
                },
                m = self.bundles.message() => match m {
                    Ok(Some(b)) => self.last_bundles = Some(b.ca_certificates),
                    Ok(None) => return Err("the agent closed the bundle stream".into()),
                    Err(s) => return Err(format!("bundle stream: {:?}: {}", s.code(), s.message())),
                },
            }
            if let (Some(svids), Some(bundles)) = (&self.last_svids, &self.last_bundles) {
                return Ok(to_set(svids, bundles, &self.source));
            }
        }
    }
}

/// The selected SVID with the bundles of its trust domain and of those it federates with.
fn to_set(
    svids: &SubscribeToX509sviDsResponse,
    bundles: &HashMap<String, Vec<u8>>,
    source: &SpireDelegatedSource,
) -> Result<CredentialSet, Error> {
    let error = |reason: String| Error::WorkloadApi {
        socket: source.admin_socket.clone(),
        reason,
    };
    let ids: Vec<String> = svids
        .x509_svids
        .iter()
        .map(|s| s.x509_svid.as_ref().map(svid_id).unwrap_or_default())
        .collect();
    let chosen = match &source.spiffe_id {
        Some(want) => ids.iter().position(|id| *id == want.to_string()),
        None if ids.len() == 1 => Some(0),
        None if ids.len() > 1 => {
            return Err(error(format!(
                "the selectors match several SVIDs {ids:?}; choose one with spiffeId"
            )));
        }
        None => None,
    };
    let selectors: Vec<String> = source.selectors.iter().map(|s| s.to_string()).collect();
    let svid = chosen
        .and_then(|i| svids.x509_svids.get(i))
        .ok_or_else(|| {
            error(format!(
                "no X.509-SVID for selectors {selectors:?} with the wanted ID among {ids:?}"
            ))
        })?;
    let chain = svid
        .x509_svid
        .as_ref()
        .map(|s| {
            s.cert_chain
                .iter()
                .map(|c| CertificateDer::from(c.clone()))
                .collect()
        })
        .unwrap_or_default();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.x509_svid_key.clone()));
    let credentials = Credentials::new(chain, key)?;

    let local = credentials.id().trust_domain();
    let trusted = std::iter::once(local.to_string()).chain(
        svids
            .federates_with
            .iter()
            .map(|td| td_name(td).to_string()),
    );
    let mut bundle = TrustBundle::default();
    for name in trusted {
        let der = bundles.get(&format!("spiffe://{name}"));
        match der {
            Some(der) => bundle.insert(TrustDomain::new(&name)?, split_der(der, &name)?)?,
            // A federated bundle the agent has not sent yet: a later bundle message brings it.
            None if name != local.as_str() => continue,
            None => return Err(error(format!("the agent sent no bundle for {name}"))),
        }
    }
    CredentialSet::new(credentials, bundle, source.spiffe_id.as_ref())
}

fn svid_id(svid: &types::X509svid) -> String {
    svid.id
        .as_ref()
        .map(|id| format!("spiffe://{}{}", id.trust_domain, id.path))
        .unwrap_or_default()
}

/// `spiffe://example.org` (how the agent names trust domains) → `example.org`.
fn td_name(id: &str) -> &str {
    id.strip_prefix("spiffe://").unwrap_or(id)
}

/// The agent's bundle value: DER certificates one after the other (SPIRE's `marshalBundle`).
fn split_der(mut der: &[u8], trust_domain: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let mut roots = Vec::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(der).map_err(|e| Error::BadBundle {
            reason: format!("the agent's bundle for {trust_domain}: {e}"),
        })?;
        let (one, _) = der.split_at(der.len() - rest.len());
        roots.push(CertificateDer::from(one.to_vec()));
        der = rest;
    }
    Ok(roots)
}

/// An error and its causes on one line (tonic's transport errors hide the cause otherwise).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests;
