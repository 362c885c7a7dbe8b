//! The TCP ways in: captured inbound plaintext (15006) and captured outbound (15001)
//! connections, SOCKS5 (15080) and explicit listeners. Each accepted socket gets its record
//! at once, then its target: the original destination, the SOCKS5 request, or the listener's
//! configured one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshd_hbone::TraceParent;
use meshd_record::{Direction, Identity, Outcome};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use super::socks5;
use super::{Arrival, Gate};
use crate::conn::{Downstream, Refusal, Target};
use crate::identities::LocalIdentities;
use crate::layers::ConnService;
use crate::relay::Relay;

/// How accepted connections on a listener find their target.
#[derive(Clone)]
pub(crate) enum Accepted {
    /// Redirected by the capture rules: the original destination.
    Captured,
    /// A SOCKS5 request names it.
    Socks5,
    /// An explicit listener's configured target, and the local workload it speaks for.
    Fixed(Target, Option<String>),
}

/// What a listener needs to turn a socket into a connection in its stack.
#[derive(Clone)]
pub(crate) struct Listener {
    direction: Direction,
    stack: ConnService,
    gate: Gate,
    identity: Option<Arc<Identity>>,
    /// Outbound: which identity each connection presents (its source workload's).
    identities: Option<LocalIdentities>,
}

impl Listener {
    /// Connections going `direction` through `stack`, entering through `gate`; `identity` is
    /// their source identity (this meshd's, for outbound; none for captured plaintext).
    pub(crate) fn new(
        direction: Direction,
        stack: ConnService,
        gate: Gate,
        identity: Option<Arc<Identity>>,
    ) -> Self {
        Listener {
            direction,
            stack,
            gate,
            identity,
            identities: None,
        }
    }

    /// Each connection presents its source workload's identity, chosen from `identities`.
    pub(crate) fn with_identities(mut self, identities: Option<LocalIdentities>) -> Self {
        self.identities = identities;
        self
    }

    /// Serves one accepted connection. The set-up runs in its own allocation, freed once the
    /// connection is established: the task then holds only the relay.
    fn handle(
        self,
        stream: TcpStream,
        source: SocketAddr,
        accepted: Accepted,
    ) -> impl Future<Output = ()> + Send + 'static {
        let setup = Box::pin(self.establish(stream, source, accepted));
        async move {
            if let Some(relay) = setup.await {
                // Its failure is in the record already.
                let _ = relay.run().await;
            }
        }
    }

    /// Takes a connection through the stack: the relay to run, or `None` when it was refused
    /// or failed (and recorded as such).
    async fn establish(
        self,
        stream: TcpStream,
        source: SocketAddr,
        accepted: Accepted,
    ) -> Option<Relay> {
        let _ = stream.set_nodelay(true);
        let opened = self.gate.open(Arrival {
            trace: TraceParent::random(),
            direction: self.direction,
            source,
            identity: self.identity.clone(),
            transport: None,
            destination: None,
        });
        let (target, downstream, named): (Target, Box<dyn Downstream>, Option<String>) =
            match accepted {
                Accepted::Captured => match meshd_redirect::original_dst(&stream) {
                    Ok(dst) => (Target::Addr(dst), Box::new(stream), None),
                    Err(e) => {
                        let reason = format!("no original destination (was it redirected?): {e}");
                        opened.fail(Outcome::Handshake, reason);
                        return None;
                    }
                },
                Accepted::Socks5 => {
                    match socks5::handshake(stream, socks5::HANDSHAKE_TIMEOUT).await {
                        Ok((request, target)) => {
                            let user = request.user().map(str::to_string);
                            (target, Box::new(request), user)
                        }
                        Err(e) => {
                            opened.fail(Outcome::Handshake, e.to_string());
                            return None;
                        }
                    }
                }
                Accepted::Fixed(target, workload) => (target, Box::new(stream), workload),
            };
        // With one identity for every workload and no name to check, there is nothing to
        // choose: the connection keeps meshd's own, at no cost per connection.
        let identities = self
            .identities
            .as_ref()
            .filter(|i| named.is_some() || i.set().has_workload_identities());
        let opened = match identities {
            Some(identities) => {
                match identities.for_source(&opened.state, source, named.as_deref()) {
                    Ok((identity, workload)) => opened.with_source(&identity, workload),
                    Err(refused) => {
                        // Fail closed: no identity is presented for a workload not on this
                        // machine (a mistyped listener `workload`, a SOCKS5 user name).
                        downstream.refuse(Refusal::Denied).await;
                        opened.fail(Outcome::Denied, refused.to_string());
                        return None;
                    }
                }
            }
            None => opened,
        };
        self.stack
            .oneshot(opened.toward(target, downstream))
            .await
            .ok()
    }
}

/// Accepts on `listener` until the task is aborted, each connection in a task of its own.
pub(crate) async fn serve(listener: TcpListener, entry: Listener, accepted: Accepted) {
    loop {
        match listener.accept().await {
            Ok((stream, source)) => {
                tokio::spawn(entry.clone().handle(stream, source, accepted.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
