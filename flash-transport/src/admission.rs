//! What a new QUIC connection must get through before the server spends anything on it (a bridge
//! connection, a full-size read buffer, a session slot for long): a session limit checked on the first
//! packet, then one deadline for the QUIC handshake, the stream and the handshake frame, which is read with
//! a small size limit because it carries only the token.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use quinn::VarInt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};

use crate::envelope::{read_message, write_message};
use crate::quic::{link, TokenOptions, RECEIVE_WINDOW};

/// Largest handshake frame (type + body) read before the token is checked, unless a longer token is
/// configured. openpi-flash's clients send an empty body (or a 44-byte msgpack hello of older versions).
pub const HANDSHAKE_MAX_BYTES: u32 = 4096;

/// How long a refused peer gets to receive its error frame before the connection is closed.
const ERROR_DELIVERY: Duration = Duration::from_secs(1);

/// QUIC application close codes (the peer's sidecar logs them).
mod close_code {
    pub const REFUSED: u32 = 1;
    pub const HANDSHAKE_TIMEOUT: u32 = 2;
}

/// A connection whose handshake frame was accepted: the bridge may be dialed for it.
pub struct Session {
    pub connection: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// Counts live sessions; a permit is held from the first packet to the end of the session.
#[derive(Clone)]
pub struct SessionLimit(Arc<Semaphore>);

impl SessionLimit {
    pub fn new(max_sessions: usize) -> SessionLimit {
        SessionLimit(Arc::new(Semaphore::new(max_sessions)))
    }

    /// A slot, or `None` when every slot is taken (the caller refuses the connection).
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// The handshake frame limit for this token: room for the token itself when it is unusually long.
pub fn handshake_limit(token: &TokenOptions) -> u32 {
    let token_frame = token.auth_token.as_ref().map_or(0, |t| t.len().saturating_add(1));
    HANDSHAKE_MAX_BYTES.max(u32::try_from(token_frame).unwrap_or(u32::MAX))
}

/// Runs the handshake of one incoming connection within `deadline_after`. `Ok(None)`: the peer left
/// before sending its handshake. An error: the peer was refused (it got an error frame where it had a
/// stream) or the connection failed; the caller logs it.
pub async fn admit(
    incoming: quinn::Incoming,
    token: &TokenOptions,
    deadline_after: Duration,
) -> Result<Option<Session>> {
    let deadline = Instant::now() + deadline_after;
    let timed_out = || format!("handshake timeout: no handshake frame within {} s", deadline_after.as_secs_f64());
    let connection = match timeout_at(deadline, incoming).await {
        Ok(connecting) => connecting.context("QUIC handshake failed")?,
        Err(_) => bail!("{}", timed_out()),
    };
    let (send, mut recv) = match timeout_at(deadline, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed)) => {
            return Ok(None)
        }
        Ok(Err(err)) => return Err(err.into()),
        Err(_) => {
            // No stream, so nowhere to write an error frame: the close reason carries it.
            connection.close(close_code::HANDSHAKE_TIMEOUT.into(), timed_out().as_bytes());
            bail!("{}", timed_out());
        }
    };
    let refusal = match timeout_at(deadline, read_message(&mut recv, handshake_limit(token))).await {
        Err(_) => timed_out(),
        Ok(Ok(None)) => return Ok(None),
        Ok(Ok(Some((link::DATA, body)))) if token.admits(&body) => {
            // Admitted: the full receive window (kept small until now) for the payloads to come.
            connection.set_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
            return Ok(Some(Session { connection, send, recv }));
        }
        Ok(Ok(Some((link::DATA, _)))) => {
            "unauthorized: this server requires a token (set OPENPI_QUIC_TOKEN for the robot's sidecar)".to_string()
        }
        Ok(Ok(Some((other, _)))) => format!("handshake: expected a Data frame, got type 0x{other:02x}"),
        Ok(Err(err)) if err.framing_broken() => format!("handshake refused: {err}"),
        Ok(Err(err)) => return Err(err).context("peer left during the handshake"),
    };
    refuse(connection, send, recv, &refusal).await;
    bail!("{refusal}");
}

/// Sends `text` as an error frame, lets it arrive (bounded by [`ERROR_DELIVERY`]), then closes.
async fn refuse(connection: quinn::Connection, mut send: quinn::SendStream, mut recv: quinn::RecvStream, text: &str) {
    // Unread data of a refused peer is discarded, and it is told to stop sending.
    let _ = recv.stop(VarInt::from_u32(close_code::REFUSED));
    let delivered = async {
        write_message(&mut send, link::ERROR, text.as_bytes()).await?;
        send.finish()?;
        // Resolves once the peer acknowledged every byte (or stopped the stream).
        let _ = send.stopped().await;
        anyhow::Ok(())
    };
    let _ = timeout(ERROR_DELIVERY, delivered).await;
    connection.close(close_code::REFUSED.into(), b"refused");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_limit_fits_a_long_token() {
        assert_eq!(handshake_limit(&TokenOptions::default()), HANDSHAKE_MAX_BYTES);
        let long = TokenOptions { auth_token: Some("x".repeat(10_000)) };
        assert_eq!(handshake_limit(&long), 10_001);
    }

    #[test]
    fn the_session_limit_hands_out_its_slots_and_takes_them_back() {
        let limit = SessionLimit::new(2);
        let first = limit.try_enter().unwrap();
        let _second = limit.try_enter().unwrap();
        assert!(limit.try_enter().is_none());
        drop(first);
        assert!(limit.try_enter().is_some());
    }
}
