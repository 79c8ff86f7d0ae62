//! `client` mode: the robot-side sidecar. Python (`FlashTransportPolicy`) talks LocalFrame on a unix
//! socket; this binary forwards over QUIC (Arrow payloads) to a `server`.
//!
//! Beyond openpi-flash: when the QUIC connection is lost the failing request gets an error and the next
//! request reconnects (openpi-flash never reconnects); on SIGTERM / SIGINT, or when the parent process (the
//! robot script) dies, the connection is closed properly, so the server notices at once instead of after its
//! idle timeout. A local request that fails (bad LocalFrame, preprocessing, a lost link) is answered with an
//! ERROR frame and the local connection stays usable; it is closed only when its framing is broken.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::arrow_codec;
use crate::chunk_cache::ChunkCache;
use crate::image_preprocess::{self, ImageSpec};
use crate::local_frame::{kind, read_message, write_message, LocalFrame};
use crate::parent_watch::ParentWatch;
use crate::quic::{self, link, LinkOptions};

#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    #[arg(long)]
    pub server_host: String,
    #[arg(long, default_value_t = 5555)]
    pub server_port: u16,
    /// Local UDP port; 0 picks a free one.
    #[arg(long, default_value_t = 5556)]
    pub local_port: u16,
    #[arg(long)]
    pub local_socket_path: PathBuf,
    #[command(flatten)]
    pub link: LinkOptions,
    #[command(flatten)]
    pub token: quic::TokenOptions,
}

/// How long shutting down may wait for an in-flight request and the QUIC close.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// What the client reads from the server's metadata (unknown keys ignored).
#[derive(Debug, Default, Deserialize)]
struct ServerMetadata {
    #[serde(default)]
    action_horizon: Option<u64>,
    #[serde(default)]
    image_specs: Vec<ImageSpec>,
}

struct Link {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// The QUIC side: one connection and one stream, re-established on demand.
struct Upstream {
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    link: Option<Link>,
    max_message_bytes: u32,
    token: quic::TokenOptions,
}

impl Upstream {
    async fn connect(&mut self) -> Result<Vec<u8>> {
        let connection = match self.endpoint.connect(self.server, "localhost")?.await {
            Ok(connection) => connection,
            Err(quinn::ConnectionError::ConnectionClosed(close))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                bail!(
                    "the server at {} refused the connection: it serves as many robots as its --max-connections \
                     allows; try again later",
                    self.server
                )
            }
            Err(err) => return Err(err).context("QUIC connect failed"),
        };
        let (mut send, mut recv) = connection.open_bi().await?;
        write_message(&mut send, link::DATA, self.token.handshake_body()).await?;
        let metadata = match read_message(&mut recv, self.max_message_bytes).await? {
            Some((link::DATA, body)) => body,
            Some((link::ERROR, text)) => bail!("server refused the handshake: {}", String::from_utf8_lossy(&text)),
            Some((other, _)) => bail!("handshake answered with type 0x{other:02x}"),
            None => bail!("server closed the stream during the handshake"),
        };
        self.link = Some(Link { connection, send, recv });
        Ok(metadata)
    }

    /// One request/response on the link; reconnects first if the previous connection was lost.
    async fn exchange(&mut self, kind_byte: u8, body: &[u8]) -> Result<(u8, Vec<u8>)> {
        if self.link.as_ref().is_none_or(|l| l.connection.close_reason().is_some()) {
            info!("(re)connecting to {}", self.server);
            self.connect().await?;
        }
        let link = self.link.as_mut().expect("connected");
        let result = async {
            write_message(&mut link.send, kind_byte, body).await?;
            read_message(&mut link.recv, self.max_message_bytes).await?.context("server closed the stream")
        }
        .await;
        if result.is_err() {
            self.link = None; // the next request reconnects
        }
        result
    }

    async fn close(&mut self) {
        if let Some(link) = self.link.take() {
            link.connection.close(0u32.into(), b"client closed");
        }
        self.endpoint.wait_idle().await;
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> =
        (host, port).to_socket_addrs().with_context(|| format!("cannot resolve {host}"))?.collect();
    addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first()).copied().context("no address for the server")
}

fn open_loop_horizon() -> Result<Option<u64>> {
    match std::env::var("OPENPI_OPEN_LOOP_HORIZON") {
        Err(_) => Ok(None),
        Ok(value) => {
            let n: u64 = value
                .trim()
                .parse()
                .with_context(|| format!("OPENPI_OPEN_LOOP_HORIZON={value:?} is not an integer"))?;
            anyhow::ensure!(n >= 1, "OPENPI_OPEN_LOOP_HORIZON must be >= 1");
            Ok(Some(n))
        }
    }
}

pub async fn run(args: ClientArgs, parent: ParentWatch) -> Result<()> {
    quic::install_crypto_provider();
    let server = resolve(&args.server_host, args.server_port)?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], args.local_port).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, args.local_port).into()
    };
    let socket = std::net::UdpSocket::bind(bind).with_context(|| format!("cannot bind UDP {bind}"))?;
    quic::size_udp_buffers(&socket, args.link.udp_buffer_bytes)?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    let mut endpoint = quinn::Endpoint::new(quic::endpoint_config(&args.link)?, None, socket, runtime)?;
    endpoint.set_default_client_config(quic::client_config(&args.link)?);
    let mut upstream = Upstream {
        endpoint,
        server,
        link: None,
        max_message_bytes: args.link.max_message_bytes,
        token: args.token.clone(),
    };
    let metadata = upstream.connect().await?;
    let parsed = rmp_serde::from_slice::<ServerMetadata>(&metadata).unwrap_or_else(|err| {
        warn!(
            "cannot read image_specs / action_horizon from the server metadata ({err}): preprocessing and chunking off"
        );
        ServerMetadata::default()
    });
    let horizon = parsed.action_horizon.filter(|&h| h >= 1);
    let specs = Arc::new(parsed.image_specs);
    let open_loop = open_loop_horizon()?;
    let chunk = match (open_loop, horizon) {
        (Some(n), Some(h)) if h >= 1 => Some(n.min(h)),
        (Some(_), _) => {
            warn!("OPENPI_OPEN_LOOP_HORIZON is set but the server advertises no action_horizon: chunking off");
            None
        }
        _ => None,
    };

    if args.local_socket_path.exists() {
        std::fs::remove_file(&args.local_socket_path)?;
    }
    if let Some(parent) = args.local_socket_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = UnixListener::bind(&args.local_socket_path)?;
    info!("Local client sidecar socket ready at {}", args.local_socket_path.display());
    // One lock over each whole round trip: the link is one QUIC stream on which replies come back in request
    // order with no request id (openpi-flash's wire), so requests of several local connections must take
    // turns. A robot process normally has one local connection, so this costs nothing in practice.
    let upstream = Arc::new(Mutex::new(upstream));
    let metadata = Arc::new(metadata);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let upstream = upstream.clone();
                let metadata = metadata.clone();
                let specs = specs.clone();
                let cache = chunk.map(|n| ChunkCache::new(n, horizon.unwrap_or(n)));
                tokio::spawn(async move {
                    if let Err(err) = serve_local(stream, upstream, metadata, specs, cache, args.link.max_message_bytes).await {
                        warn!("local connection ended: {err:#}");
                    }
                });
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            () = parent.gone() => {
                warn!("parent process {} went away: closing the sidecar", parent.parent());
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&args.local_socket_path);
    // A request in flight holds the link until its reply (up to the idle timeout): the close is bounded so a
    // dead parent's sidecar is gone quickly either way (without it, the server notices at its idle timeout).
    let close = async { upstream.lock().await.close().await };
    if tokio::time::timeout(SHUTDOWN_GRACE, close).await.is_err() {
        warn!("the QUIC connection did not close within {SHUTDOWN_GRACE:?}: exiting anyway");
    }
    Ok(())
}

async fn serve_local(
    stream: UnixStream,
    upstream: Arc<Mutex<Upstream>>,
    metadata: Arc<Vec<u8>>,
    specs: Arc<Vec<ImageSpec>>,
    mut cache: Option<ChunkCache>,
    max: u32,
) -> Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    loop {
        let (message_kind, body) = match read_message(&mut reader, max).await {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(err) if err.framing_broken() => {
                // The rest of this message was not read, so nothing after it can be trusted: say why, then close.
                let _ = write_message(&mut writer, kind::ERROR, err.to_string().as_bytes()).await;
                return Err(err.into());
            }
            // The robot went away (closed mid-message or a read error): nobody to answer.
            Err(err) => return Err(err.into()),
        };
        let reply = match message_kind {
            kind::METADATA => Ok((kind::METADATA_RESPONSE, metadata.to_vec())),
            kind::RESET => {
                if let Some(cache) = cache.as_mut() {
                    cache.clear();
                }
                reset(&upstream).await
            }
            kind::INFER => infer(&body, &upstream, &specs, cache.as_mut()).await,
            other => Err(anyhow::anyhow!("unknown local message type 0x{other:02x}")),
        };
        match reply {
            Ok((reply_kind, reply_body)) => write_message(&mut writer, reply_kind, &reply_body).await?,
            Err(err) => write_message(&mut writer, kind::ERROR, format!("{err:#}").as_bytes()).await?,
        }
    }
}

fn link_lost(err: &anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("connection to the openpi-triton server lost ({err:#}); the next request reconnects")
}

async fn reset(upstream: &Mutex<Upstream>) -> Result<(u8, Vec<u8>)> {
    match upstream.lock().await.exchange(link::RESET_REQUEST, &[]).await {
        Ok((link::RESET_ACK, _)) => Ok((kind::RESET_RESPONSE, Vec::new())),
        Ok((link::ERROR, text)) => bail!("{}", String::from_utf8_lossy(&text)),
        Ok((other, _)) => bail!("server answered RESET with type 0x{other:02x}"),
        Err(err) => Err(link_lost(&err)),
    }
}

/// One local INFER: served from the chunk cache, or preprocessed and sent over the link.
async fn infer(
    body: &[u8],
    upstream: &Mutex<Upstream>,
    specs: &[ImageSpec],
    mut cache: Option<&mut ChunkCache>,
) -> Result<(u8, Vec<u8>)> {
    if let Some(reply) = cache.as_mut().and_then(|c| c.next_step()) {
        return Ok((kind::INFER_RESPONSE, reply.encode()?));
    }
    let mut frame = LocalFrame::decode(body).context("malformed INFER request")?;
    image_preprocess::preprocess(&mut frame, specs)?;
    let payload = arrow_codec::encode(&frame).context("cannot encode the request for the link")?;
    let exchanged = upstream.lock().await.exchange(link::DATA, &payload).await;
    match exchanged {
        Ok((link::DATA, body)) => {
            let reply = arrow_codec::decode(&body).context("the server's reply is not a valid Arrow payload")?;
            let first = match cache {
                Some(cache) => cache.store(reply),
                None => reply,
            };
            Ok((kind::INFER_RESPONSE, first.encode()?))
        }
        // The server's own text, unchanged (the robot's RuntimeError shows it as it is).
        Ok((link::ERROR, text)) => Ok((kind::ERROR, text)),
        Ok((other, _)) => bail!("server answered INFER with type 0x{other:02x}"),
        Err(err) => Err(link_lost(&err)),
    }
}
