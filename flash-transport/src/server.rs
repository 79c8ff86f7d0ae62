//! `server` mode: QUIC from robots -> the bridge's unix socket (LocalFrame), many connections at once.
//!
//! Per QUIC connection: take a session slot (`--max-connections`), accept its single bidirectional stream and
//! check the handshake within `--handshake-timeout-secs` (the token, when one is configured; see
//! [`crate::admission`]), dial the backend socket, answer the handshake with the backend's metadata, then forward
//! INFER (Arrow <-> LocalFrame, with `server_timing` injected into successful replies) and RESET until the
//! client goes away.

use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use tokio::net::UnixStream;
use tracing::{info, warn};

use crate::admission::{self, Session, SessionLimit};
use crate::arrow_codec;
use crate::local_frame::{kind, read_message, write_message, LocalFrame};
use crate::parent_watch::ParentWatch;
use crate::quic::{self, link, LinkOptions};

#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    #[arg(long, default_value_t = 5555)]
    pub listen_port: u16,
    #[arg(long)]
    pub backend_socket_path: PathBuf,
    /// QUIC sessions served at once (as the bridge's `max_connections`): one more is refused on its first
    /// packet (QUIC CONNECTION_REFUSED), before any TLS work or bridge connection is spent on it.
    #[arg(long, env = "OPENPI_QUIC_MAX_CONNECTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds a new connection has for the QUIC handshake, opening its stream and sending its handshake
    /// frame; a slower one is closed, with an error frame once it has a stream.
    #[arg(long, env = "OPENPI_QUIC_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout_secs: u64,
    #[command(flatten)]
    pub link: LinkOptions,
    #[command(flatten)]
    pub token: quic::TokenOptions,
}

/// A UDP socket for both IPv4 and IPv6 when the host has IPv6, else IPv4 only, with room for request bursts.
fn bind_udp(port: u16, buffer_bytes: usize) -> Result<UdpSocket> {
    let socket = match UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok(socket) => socket,
        Err(_) => UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("cannot bind UDP port {port}"))?,
    };
    quic::size_udp_buffers(&socket, buffer_bytes)?;
    Ok(socket)
}

/// Logs refused connections at most once a second, so a flood does not flood the log too.
struct RefusalLog {
    since_last: u64,
    last: Option<Instant>,
}

impl RefusalLog {
    fn refused(&mut self, remote: SocketAddr, max: u32) {
        self.since_last += 1;
        if self.last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            warn!(
                "refused {} connection(s) (latest from {remote}): {max} sessions already (--max-connections)",
                self.since_last
            );
            self.since_last = 0;
            self.last = Some(Instant::now());
        }
    }
}

pub async fn run(args: ServerArgs, parent: ParentWatch) -> Result<()> {
    quic::install_crypto_provider();
    let socket = bind_udp(args.listen_port, args.link.udp_buffer_bytes)?;
    let endpoint = quinn::Endpoint::new(
        quic::endpoint_config(&args.link)?,
        Some(quic::server_config(&args.link)?),
        socket,
        quinn::default_runtime().context("no async runtime")?,
    )?;
    info!("Listening for QUIC connections on udp://{}", endpoint.local_addr()?);
    info!("Forwarding requests to Python backend at {}", args.backend_socket_path.display());
    let sessions = SessionLimit::new(args.max_connections as usize);
    let mut refusals = RefusalLog { since_last: 0, last: None };
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            () = parent.gone() => {
                warn!("parent process {} went away: shutting down", parent.parent());
                break;
            }
        };
        let remote = incoming.remote_address();
        let Some(permit) = sessions.try_enter() else {
            refusals.refused(remote, args.max_connections);
            incoming.refuse();
            continue;
        };
        let args = args.clone();
        tokio::spawn(async move {
            let _permit = permit; // the slot is taken until this session ends
            match serve_connection(incoming, &args).await {
                Ok(()) => info!("Client {remote} disconnected"),
                Err(err) => warn!("Client {remote}: session ended: {err:#}"),
            }
        });
    }
    // Robots learn at once that this server is gone, instead of after their idle timeout.
    endpoint.close(0u32.into(), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(())
}

async fn serve_connection(incoming: quinn::Incoming, args: &ServerArgs) -> Result<()> {
    let handshake_timeout = Duration::from_secs(args.handshake_timeout_secs);
    let Some(Session { connection, mut send, mut recv }) =
        admission::admit(incoming, &args.token, handshake_timeout).await?
    else {
        return Ok(());
    };
    let max = args.link.max_message_bytes;

    // Admitted: only now is the bridge involved. Answer the handshake with the bridge's metadata.
    let backend = match UnixStream::connect(&args.backend_socket_path).await {
        Ok(backend) => backend,
        Err(err) => {
            let text = format!("the openpi-triton server cannot reach its bridge ({err})");
            let _ = write_message(&mut send, link::ERROR, text.as_bytes()).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
            return Err(err)
                .with_context(|| format!("cannot reach the bridge at {}", args.backend_socket_path.display()));
        }
    };
    let (mut backend_read, mut backend_write) = backend.into_split();
    write_message(&mut backend_write, kind::METADATA, &[]).await?;
    match read_message(&mut backend_read, max).await?.context("bridge closed during the handshake")? {
        (kind::METADATA_RESPONSE, body) => write_message(&mut send, link::DATA, &body).await?,
        (kind::ERROR, body) => write_message(&mut send, link::ERROR, &body).await?,
        (other, _) => bail!("bridge answered the metadata request with type 0x{other:02x}"),
    }

    let mut prev_total_ms: Option<f64> = None;
    loop {
        let message = match read_message(&mut recv, max).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(err) if err.framing_broken() => {
                let _ = write_message(&mut send, link::ERROR, err.to_string().as_bytes()).await;
                return Err(err.into());
            }
            // Truncated or a read error: the client went away (reset, lost, closed mid-message).
            Err(_) => break,
        };
        let t0 = Instant::now();
        match message {
            (link::DATA, body) => {
                let frame = match arrow_codec::decode(&body) {
                    Ok(frame) => frame,
                    Err(err) => {
                        let text = format!("Wire-to-local transform failed: {err:#}");
                        write_message(&mut send, link::ERROR, text.as_bytes()).await?;
                        continue;
                    }
                };
                write_message(&mut backend_write, kind::INFER, &frame.encode()?).await?;
                match read_message(&mut backend_read, max).await?.context("bridge closed the socket")? {
                    (kind::INFER_RESPONSE, body) => {
                        let mut reply = LocalFrame::decode(&body)?;
                        let infer_ms = t0.elapsed().as_secs_f64() * 1000.0;
                        reply.scalar_json = inject_server_timing(&reply.scalar_json, infer_ms, prev_total_ms)?;
                        write_message(&mut send, link::DATA, &arrow_codec::encode(&reply)?).await?;
                        prev_total_ms = Some(t0.elapsed().as_secs_f64() * 1000.0);
                    }
                    (kind::ERROR, text) => write_message(&mut send, link::ERROR, &text).await?,
                    (other, _) => bail!("bridge answered INFER with type 0x{other:02x}"),
                }
            }
            (link::RESET_REQUEST, _) => {
                write_message(&mut backend_write, kind::RESET, &[]).await?;
                match read_message(&mut backend_read, max).await?.context("bridge closed the socket")? {
                    (kind::RESET_RESPONSE, _) => write_message(&mut send, link::RESET_ACK, &[]).await?,
                    (kind::ERROR, text) => write_message(&mut send, link::ERROR, &text).await?,
                    (other, _) => bail!("bridge answered RESET with type 0x{other:02x}"),
                }
            }
            (link::ERROR, text) => bail!("client sent an error: {}", String::from_utf8_lossy(&text)),
            (other, _) => {
                write_message(&mut send, link::ERROR, format!("unknown message type 0x{other:02x}").as_bytes()).await?;
                bail!("client sent unknown message type 0x{other:02x}");
            }
        }
    }
    let _ = send.finish();
    connection.close(0u32.into(), b"client disconnected");
    Ok(())
}

/// Sets `server_timing.infer_ms` (and `prev_total_ms` after the first INFER) in the nested scalar JSON.
pub fn inject_server_timing(scalar_json: &str, infer_ms: f64, prev_total_ms: Option<f64>) -> Result<String> {
    let mut root: Map<String, Value> = if scalar_json.trim().is_empty() {
        Map::new()
    } else {
        serde_json::from_str(scalar_json).context("reply scalar JSON is not an object")?
    };
    let timing = root.entry("server_timing").or_insert_with(|| Value::Object(Map::new()));
    if !timing.is_object() {
        *timing = Value::Object(Map::new());
    }
    let timing = timing.as_object_mut().expect("object");
    timing.insert("infer_ms".into(), Value::from(infer_ms));
    if let Some(prev) = prev_total_ms {
        timing.insert("prev_total_ms".into(), Value::from(prev));
    }
    Ok(serde_json::to_string(&root)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_timing_is_added_and_kept_with_other_keys() {
        let out = inject_server_timing(r#"{"policy_timing":{"infer_ms":3.0}}"#, 5.0, None).unwrap();
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["server_timing"]["infer_ms"], 5.0);
        assert!(value["server_timing"].get("prev_total_ms").is_none());
        assert_eq!(value["policy_timing"]["infer_ms"], 3.0);
        let out = inject_server_timing(r#"{"server_timing":1}"#, 2.0, Some(9.0)).unwrap();
        let value: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["server_timing"]["prev_total_ms"], 9.0);
        assert!(inject_server_timing("[1]", 1.0, None).is_err());
        assert_eq!(inject_server_timing("", 1.0, None).unwrap(), r#"{"server_timing":{"infer_ms":1.0}}"#);
    }
}
