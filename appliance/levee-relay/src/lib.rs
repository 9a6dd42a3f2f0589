//! the tokio drivers: inbound listener, outbound delivery, DSN
