//! The outermost layer: whatever error ends the stack below is written into the connection's
//! record (which the entry point opened and which closes itself when the connection is gone).
//! The relay's own failures are recorded by [`Relay::run`](crate::relay::Relay::run).

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service};

use crate::conn::Conn;
use crate::error::ProxyError;
use crate::relay::Relay;

/// Adds [`Record`] around a stack.
#[derive(Debug, Clone, Default)]
pub struct RecordLayer;

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record { inner }
    }
}

/// See [`RecordLayer`].
#[derive(Debug, Clone)]
pub struct Record<S> {
    inner: S,
}

impl<S> Service<Conn> for Record<S>
where
    S: Service<Conn, Response = Relay, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Relay;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Relay, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn) -> Self::Future {
        let record = conn.ctx.record.clone();
        let future = self.inner.call(conn);
        Box::pin(async move {
            let result = future.await;
            if let Err(e) = &result {
                record.fail(e);
            }
            result
        })
    }
}
