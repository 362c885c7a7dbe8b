//! The outermost layer: opens the connection's record, and closes it with duration and error
//! when the stack below completes, handing it to every sink.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use crate::conn::Conn;
use crate::error::ProxyError;
use crate::record::Sinks;

/// Adds [`Record`] around a stack.
#[derive(Debug, Clone)]
pub struct RecordLayer {
    sinks: Sinks,
}

impl RecordLayer {
    /// Records go to these sinks.
    pub fn new(sinks: Sinks) -> Self {
        RecordLayer { sinks }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            sinks: self.sinks.clone(),
        }
    }
}

/// See [`RecordLayer`].
#[derive(Debug, Clone)]
pub struct Record<S> {
    inner: S,
    sinks: Sinks,
}

impl<S> Service<Conn> for Record<S>
where
    S: Service<Conn, Response = (), Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = ();
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<(), ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn) -> Self::Future {
        let record = conn.ctx.record.clone();
        let sinks = self.sinks.clone();
        sinks.opened(&record.snapshot());
        let future = self.inner.call(conn);
        Box::pin(async move {
            let result = future.await;
            record.update(|r| r.finish(result.as_ref().err()));
            sinks.closed(&record.snapshot());
            result
        })
    }
}
