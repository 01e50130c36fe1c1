//! A WebSocket client for protocol v1 (feature `client`), the one the integration
//! tests and the load tester share: connect with the settings every client uses,
//! send [`ClientFrame`]s or raw JSON, read typed [`ServerFrame`]s with a deadline,
//! wait for one frame kind, and read how the server ended the connection.
//!
//! Errors are values ([`RecvError`]); the tests turn them into panics, the load
//! tester into counted failures.

use std::fmt;

use futures_util::{SinkExt, Stream, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{ClientFrame, ServerFrame};

/// A client's socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bytes one read of a client socket takes at most. tungstenite zeroes this much
/// of its input buffer before every read, so its 128 KiB default made the load
/// tester spend about half its CPU in `memset` (perf); frames here are small.
pub const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The WebSocket settings every client connection uses.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)
}

/// Open a WebSocket to `request` (a `ws://` URL, query included, or a request with
/// extra headers) with [`ws_config`] and Nagle off: clients write many small frames
/// back to back, and a delayed ACK on loopback would add up to 40 ms to some. A
/// refused upgrade is `tungstenite::Error::Http` with the server's response.
pub async fn connect(request: impl IntoClientRequest + Unpin) -> Result<Ws, tungstenite::Error> {
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true).await?;
    Ok(ws)
}

/// Send one text frame (JSON, or anything else a test wants the server to see).
pub async fn send_text(ws: &mut Ws, text: impl Into<String>) -> Result<(), tungstenite::Error> {
    ws.send(Message::Text(text.into().into())).await
}

/// Send one client frame as JSON.
pub async fn send(ws: &mut Ws, frame: &ClientFrame) -> Result<(), tungstenite::Error> {
    let text = serde_json::to_string(frame).map_err(|e| {
        tungstenite::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })?;
    send_text(ws, text).await
}

/// Why no (wanted) frame was read.
#[derive(Debug)]
pub enum RecvError {
    /// The deadline passed first.
    Timeout,
    /// The server closed the connection (its close frame, if it sent one).
    Closed(Option<CloseFrame>),
    /// The stream ended without a close frame.
    Ended,
    /// The socket failed.
    Socket(tungstenite::Error),
    /// A text frame that is not a [`ServerFrame`].
    Unreadable { text: String, error: serde_json::Error },
    /// [`until`] met an `error` frame it was not waiting for.
    ErrorFrame(ServerFrame),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Timeout => write!(f, "timed out"),
            RecvError::Closed(frame) => write!(f, "closed: {frame:?}"),
            RecvError::Ended => write!(f, "stream ended"),
            RecvError::Socket(e) => write!(f, "socket error {e}"),
            RecvError::Unreadable { text, error } => write!(f, "bad frame {text}: {error}"),
            RecvError::ErrorFrame(frame) => write!(f, "server answered {}", frame.to_json()),
        }
    }
}

impl std::error::Error for RecvError {}

/// The next text frame before `deadline` from a socket (or its read half). Pings
/// (answered by tungstenite), pongs and binary frames are skipped.
pub async fn recv_text<S>(ws: &mut S, deadline: Instant) -> Result<String, RecvError>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        match next.map_err(|_| RecvError::Timeout)? {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(c))) => return Err(RecvError::Closed(c)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(RecvError::Socket(e)),
            None => return Err(RecvError::Ended),
        }
    }
}

/// [`recv_text`] parsed as a server frame.
pub async fn recv<S>(ws: &mut S, deadline: Instant) -> Result<ServerFrame, RecvError>
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let text = recv_text(ws, deadline).await?;
    serde_json::from_str(&text).map_err(|error| RecvError::Unreadable { text, error })
}

/// Read frames until one of the kinds in `kinds` (`"match_found"`, …) arrives before
/// `deadline`; others are skipped, except an `error` frame, which is
/// [`RecvError::ErrorFrame`] unless `"error"` is in `kinds`.
pub async fn until(
    ws: &mut Ws,
    kinds: &[&str],
    deadline: Instant,
) -> Result<ServerFrame, RecvError> {
    loop {
        let frame = recv(ws, deadline).await?;
        if kinds.contains(&frame.kind()) {
            return Ok(frame);
        }
        if frame.kind() == "error" {
            return Err(RecvError::ErrorFrame(frame));
        }
    }
}

/// How the server ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code (1005 when it carried none); see [`crate::close`].
    Closed(u16),
    /// The connection ended (or failed) without a close frame.
    Dropped,
}

/// Skip frames until the connection ends, before `deadline` (None if it is still
/// open then).
pub async fn closed(ws: &mut Ws, deadline: Instant) -> Option<Ended> {
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.ok()? {
            Some(Ok(Message::Close(Some(f)))) => return Some(Ended::Closed(u16::from(f.code))),
            Some(Ok(Message::Close(None))) => return Some(Ended::Closed(1005)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Some(Ended::Dropped),
        }
    }
}

/// Start the closing handshake with `code` and `reason`.
pub async fn close(ws: &mut Ws, code: u16, reason: &str) -> Result<(), tungstenite::Error> {
    ws.close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.to_owned().into() }))
        .await
}
