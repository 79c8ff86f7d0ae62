//! openpi-flash-transport: the QUIC sidecar of openpi-triton, wire-compatible with openpi-flash.
//!
//! - [`local_frame`]: the LocalFrame body spoken on unix sockets (Python <-> client binary, server binary
//!   <-> bridge); [`envelope`]: the `[u32 BE length][type][body]` framing of those sockets and the QUIC stream.
//! - [`arrow_codec`]: the Arrow IPC stream that carries the same payload on the QUIC link.
//! - [`quic`]: transport settings, TLS and link message types shared by both ends.
//! - [`server`], [`client`]: the two modes; [`admission`]: the server's session limit and handshake checks;
//!   [`chunk_cache`]: the client's open-loop action cache; [`parent_watch`]: exit with the parent process.
pub mod admission;
pub mod arrow_codec;
pub mod chunk_cache;
pub mod client;
pub mod envelope;
pub mod image_preprocess;
pub mod local_frame;
pub mod parent_watch;
pub mod quic;
pub mod server;
