//! The operator endpoints' own thread: a current-thread tokio runtime that serves the admin,
//! metrics and readiness listeners, so a flood of operator connections competes with the data
//! plane for CPU only as one more thread, never for the data plane's workers (one, on two
//! CPUs) or its task queue.

use std::io;
use std::net::SocketAddr;

use tokio::sync::oneshot;

use crate::{Endpoint, Handlers, ServeSettings, serve};

/// The name of the operator thread (shown by `top -H`, `ps -T`).
pub const THREAD_NAME: &str = "meshd-operator";

/// The running operator endpoints; dropping it stops them and closes their listeners.
#[derive(Debug)]
pub struct OperatorRuntime {
    stop: Option<oneshot::Sender<()>>,
    bound: Vec<(Endpoint, SocketAddr)>,
}

impl OperatorRuntime {
    /// Serves each bound listener on a new thread of its own.
    pub fn start(
        listeners: Vec<(Endpoint, std::net::TcpListener)>,
        handlers: Handlers,
        settings: ServeSettings,
    ) -> io::Result<OperatorRuntime> {
        let mut bound = Vec::new();
        for (endpoint, listener) in &listeners {
            listener.set_nonblocking(true)?;
            bound.push((*endpoint, listener.local_addr()?));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    for (endpoint, listener) in listeners {
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
                    // Until the owner drops its handle (or the process ends).
                    let _ = stopped.await;
                });
            })?;
        Ok(OperatorRuntime {
            stop: Some(stop),
            bound,
        })
    }

    /// Where each endpoint listens (ports resolved when 0 was asked for).
    pub fn bound(&self) -> &[(Endpoint, SocketAddr)] {
        &self.bound
    }
}

impl Drop for OperatorRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
