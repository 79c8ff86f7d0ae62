//! QUIC settings shared by both ends (openpi-flash's values) and the stream framing of the QUIC link.
//!
//! Link message types: `0x00` Data (handshake, metadata, Arrow payloads), `0x01` Error (UTF-8 text),
//! `0x02` ResetRequest, `0x03` ResetAck; framing `[u32 BE length][type][body]` as on unix sockets.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use quinn::congestion::CubicConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tracing::warn;

pub mod link {
    pub const DATA: u8 = 0x00;
    pub const ERROR: u8 = 0x01;
    pub const RESET_REQUEST: u8 = 0x02;
    pub const RESET_ACK: u8 = 0x03;
}

/// Transport tuning flags common to `server` and `client`.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct LinkOptions {
    /// A connection silent for this long is dead (QUIC idle timeout); keep-alives keep a quiet robot alive.
    #[arg(long, default_value_t = 10)]
    pub max_idle_timeout_secs: u64,
    /// Seconds between QUIC keep-alive pings on an otherwise quiet connection (below the idle timeout).
    #[arg(long, default_value_t = 2)]
    pub keep_alive_interval_secs: u64,
    /// CUBIC's initial congestion window, in bytes.
    #[arg(long, default_value_t = 1_048_576)]
    pub initial_window_bytes: u64,
    /// Largest message accepted from a peer, in bytes (type byte + body); larger declared lengths are
    /// refused before anything is read, and a body costs memory only as it arrives.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: u32,
    /// Kernel receive and send buffer of the UDP socket, in bytes (capped by `net.core.rmem_max` /
    /// `wmem_max`); 0 keeps the kernel's default. See [`UDP_BUFFER_BYTES`].
    #[arg(long, env = "OPENPI_QUIC_UDP_BUFFER_BYTES", default_value_t = UDP_BUFFER_BYTES)]
    pub udp_buffer_bytes: usize,
    /// Largest UDP payload this end sends or accepts once the path has shown it carries it (QUIC's path MTU
    /// discovery, starting from 1200 bytes). 1200 keeps openpi-flash's fixed 1200-byte packets. See
    /// [`MAX_UDP_PAYLOAD_BYTES`].
    #[arg(long, env = "OPENPI_QUIC_MAX_UDP_PAYLOAD_BYTES", default_value_t = MAX_UDP_PAYLOAD_BYTES,
          value_parser = clap::value_parser!(u16).range(1200..))]
    pub max_udp_payload_bytes: u16,
}

/// Default upper bound of path MTU discovery. An observation of ~600 KB is ~500 packets of 1200 bytes, each
/// encrypted, sent and received on its own: most of the sidecars' CPU per request. Where the path carries
/// larger packets (loopback, a jumbo-frame LAN) discovery raises them up to this bound; over a 1500-byte
/// Ethernet it settles at about 1450. A peer that advertises less (openpi-flash's own ends: 1472) is never
/// sent more, and one that does not probe (openpi-flash: discovery off) keeps sending 1200-byte packets.
pub const MAX_UDP_PAYLOAD_BYTES: u16 = 65_000;

/// The endpoint settings of either end: the largest UDP payload it accepts.
pub fn endpoint_config(options: &LinkOptions) -> Result<quinn::EndpointConfig> {
    let mut config = quinn::EndpointConfig::default();
    config.max_udp_payload_size(options.max_udp_payload_bytes).context("max UDP payload")?;
    Ok(config)
}

/// The opt-in shared secret of a QUIC link. openpi-flash's server ignores the handshake body, so a client
/// carries the token there: unchanged robots (empty body) still connect to a server that has no token.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TokenOptions {
    /// Shared secret: the client sends it in the handshake, the server refuses handshakes without it.
    /// Off by default. Prefer the environment variable, which `ps` does not show.
    #[arg(long = "auth-token", env = "OPENPI_QUIC_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

impl TokenOptions {
    /// Whether a handshake body is acceptable: anything when no token is configured.
    pub fn admits(&self, handshake_body: &[u8]) -> bool {
        match &self.auth_token {
            None => true,
            Some(token) => constant_time_eq(token.as_bytes(), handshake_body),
        }
    }

    /// The body a client sends in its handshake.
    pub fn handshake_body(&self) -> &[u8] {
        self.auth_token.as_deref().map_or(&[], str::as_bytes)
    }
}

/// Equality whose time depends only on the lengths, so a wrong token does not reveal its matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Connection-level receive window once a peer is admitted (openpi-flash's value).
pub const RECEIVE_WINDOW: u32 = 10_000_000;

/// The server's connection-level receive window until the handshake is accepted: an unauthenticated peer
/// can make quinn buffer at most this much unread data (the handshake frame is a few KiB at most).
pub const PRE_ADMISSION_RECEIVE_WINDOW: u32 = 64 * 1024;

pub fn transport_config(options: &LinkOptions) -> Result<TransportConfig> {
    let mut config = TransportConfig::default();
    let idle = IdleTimeout::try_from(Duration::from_secs(options.max_idle_timeout_secs)).context("idle timeout")?;
    config.max_idle_timeout(Some(idle));
    config.keep_alive_interval(Some(Duration::from_secs(options.keep_alive_interval_secs)));
    config.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    config.send_window(10_000_000);
    config.stream_receive_window(VarInt::from_u32(5_000_000));
    config.initial_rtt(Duration::from_millis(20));
    config.max_concurrent_bidi_streams(VarInt::from_u32(100));
    config.max_concurrent_uni_streams(VarInt::from_u32(100));
    config.datagram_receive_buffer_size(Some(5_000_000));
    config.datagram_send_buffer_size(5_000_000);
    config.min_mtu(1200);
    if options.max_udp_payload_bytes > 1200 {
        let mut discovery = quinn::MtuDiscoveryConfig::default();
        discovery.upper_bound(options.max_udp_payload_bytes);
        config.mtu_discovery_config(Some(discovery));
    } else {
        config.mtu_discovery_config(None);
    }
    let mut cubic = CubicConfig::default();
    cubic.initial_window(options.initial_window_bytes);
    config.congestion_controller_factory(Arc::new(cubic));
    Ok(config)
}

/// Default kernel buffer of each end's UDP socket. An observation (~600 KB for four 224x224 cameras) arrives
/// as ~500 datagrams in one burst; Linux's default receive buffer (212 KB) holds about 90 of them, so whenever
/// the receiving thread is not scheduled at once (a busy host) most of the burst is dropped and each loss costs
/// a recovery round: milliseconds per request, tens of milliseconds in the tail.
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Below this effective receive buffer a burst still overflows on a busy host: worth a line in the log.
const UDP_BUFFER_WARN_BYTES: usize = 1024 * 1024;

/// Raises the socket's receive and send buffers to `bytes` (the kernel caps them at `net.core.rmem_max` /
/// `wmem_max`; 0 leaves the kernel's defaults); says so when the cap leaves too little.
pub fn size_udp_buffers(socket: &UdpSocket, bytes: usize) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let sock = socket2::SockRef::from(socket);
    sock.set_recv_buffer_size(bytes).context("cannot set the UDP receive buffer")?;
    sock.set_send_buffer_size(bytes).context("cannot set the UDP send buffer")?;
    let granted = sock.recv_buffer_size().context("cannot read the UDP receive buffer")?;
    if granted < bytes.min(UDP_BUFFER_WARN_BYTES) {
        warn!(
            "the UDP receive buffer is {granted} bytes (asked {bytes}; the kernel caps it at net.core.rmem_max): \
             requests may lose packets on a busy host; raise it with `sysctl -w net.core.rmem_max={bytes}`"
        );
    }
    Ok(())
}

pub fn install_crypto_provider() {
    // Another caller may have installed it already; either way ring is what we use.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Server crypto: a fresh self-signed certificate for "localhost", no client auth, no ALPN.
///
/// Transport differs from openpi-flash's only in what a peer may make the server hold before it is
/// admitted: a small connection receive window (raised to [`RECEIVE_WINDOW`] on admission), and one
/// bidirectional stream, no unidirectional ones (the link uses exactly one bidi stream, so no client notices).
pub fn server_config(options: &LinkOptions) -> Result<quinn::ServerConfig> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert_der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let tls = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(vec![cert_der], key)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut transport = transport_config(options)?;
    transport.receive_window(VarInt::from_u32(PRE_ADMISSION_RECEIVE_WINDOW));
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Client crypto: accepts the server's self-signed certificate (as openpi-flash), still checks signatures.
pub fn client_config(options: &LinkOptions) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config(options)?;
    // The client opens the link's one stream itself; the server never opens any toward it.
    transport.max_concurrent_bidi_streams(VarInt::from_u32(0));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_token_admits_any_handshake_and_a_token_admits_only_itself() {
        let open = TokenOptions::default();
        assert!(open.admits(b"") && open.admits(b"anything"));
        assert!(open.handshake_body().is_empty());
        let closed = TokenOptions { auth_token: Some("s3cret".into()) };
        assert!(closed.admits(b"s3cret"));
        assert!(
            !closed.admits(b"") && !closed.admits(b"s3cre") && !closed.admits(b"s3cret!") && !closed.admits(b"S3cret")
        );
        assert_eq!(closed.handshake_body(), b"s3cret");
    }

    #[test]
    fn udp_buffers_are_raised_and_zero_keeps_the_kernel_default() {
        let default = UdpSocket::bind("127.0.0.1:0").unwrap();
        size_udp_buffers(&default, 0).unwrap();
        let kernel = socket2::SockRef::from(&default).recv_buffer_size().unwrap();
        let raised = UdpSocket::bind("127.0.0.1:0").unwrap();
        size_udp_buffers(&raised, kernel * 2).unwrap();
        // Linux reports twice the granted size and caps it at net.core.rmem_max: a host whose cap is the default
        // cannot raise it, so the check is against the cap read from the kernel.
        let cap =
            std::fs::read_to_string("/proc/sys/net/core/rmem_max").map_or(usize::MAX, |v| v.trim().parse().unwrap());
        let expected = (kernel * 2).min(cap * 2).max(kernel);
        assert!(socket2::SockRef::from(&raised).recv_buffer_size().unwrap() >= expected);
    }
}
