//! HBONE over HTTP/3 on QUIC: not implemented yet; the `quic` feature does not build.
