//! The operator endpoints' own thread: a current-thread tokio runtime that serves the admin,
//! metrics and readiness listeners, so a flood of operator connections competes with the data
//! plane for CPU only as one more thread, never for the data plane's workers (one, on two
//! CPUs) or its task queue.

use std::io;
use std::net::SocketAddr;

use tokio::sync::mpsc;

use crate::{Endpoint, Handlers, ServeSettings, serve};

/// The name of the operator thread (shown by `top -H`, `ps -T`).
pub const THREAD_NAME: &str = "meshd-operator";

/// The running operator endpoints; dropping it stops them and closes their listeners.
#[derive(Debug)]
pub struct OperatorRuntime {
    /// Hands listeners to the thread; dropped, it ends the thread's loop and its runtime.
    listeners: mpsc::UnboundedSender<(Endpoint, std::net::TcpListener)>,
    bound: Vec<(Endpoint, SocketAddr)>,
}

impl OperatorRuntime {
    /// Starts the operator thread, serving nothing yet: listeners are added one by one with
    /// [`OperatorRuntime::serve`], so readiness answers while a later port is still waited for.
    pub fn start(handlers: Handlers, settings: ServeSettings) -> io::Result<OperatorRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (listeners, mut added) = mpsc::unbounded_channel::<(Endpoint, std::net::TcpListener)>();
        std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    // Until the owner drops its handle (or the process ends); the serving
                    // tasks end with this runtime.
                    while let Some((endpoint, listener)) = added.recv().await {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => {
                                tokio::spawn(serve(
                                    listener,
                                    endpoint,
                                    handlers.clone(),
                                    settings.clone(),
                                ));
                            }
                            Err(e) => tracing::error!(?endpoint, "cannot serve: {e}"),
                        }
                    }
                });
            })?;
        Ok(OperatorRuntime {
            listeners,
            bound: Vec::new(),
        })
    }

    /// Serves `endpoint` on a bound listener from now on; returns its address.
    pub fn serve(
        &mut self,
        endpoint: Endpoint,
        listener: std::net::TcpListener,
    ) -> io::Result<SocketAddr> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        self.listeners
            .send((endpoint, listener))
            .map_err(|_| io::Error::other("the operator thread has stopped"))?;
        self.bound.push((endpoint, addr));
        Ok(addr)
    }

    /// Where each endpoint listens (ports resolved when 0 was asked for).
    pub fn bound(&self) -> &[(Endpoint, SocketAddr)] {
        &self.bound
    }
}
