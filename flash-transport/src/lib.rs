//! openpi-flash-transport: the QUIC sidecar of openpi-triton, wire-compatible with openpi-flash.
//!
//! - [`local_frame`]: the LocalFrame body and the `[u32 BE length][type][body]` envelope spoken on unix
//!   sockets (Python <-> client binary, server binary <-> bridge).
//! - [`arrow_codec`]: the Arrow IPC stream that carries the same payload on the QUIC link.
//! - [`quic`]: transport settings, TLS and link message types shared by both ends.
//! - [`server`], [`client`]: the two modes; [`chunk_cache`]: the client's open-loop action cache.
pub mod arrow_codec;
pub mod chunk_cache;
pub mod image_preprocess;
pub mod client;
pub mod local_frame;
pub mod quic;
pub mod server;
