//! The outbound side of one connection: a bounded queue ([`Outbox`]) that anyone may
//! push frames into, and the writer task ([`run_writer`]) that alone owns the
//! socket's write half and drains the queue.
//!
//! Why not the session actor's mailbox: fan-out from rooms would then cost an actor
//! hop per frame, and actix mailboxes fed by `do_send` are unbounded. Here a push is
//! one `try_send` on a bounded channel, so a slow reader is detected the moment its
//! queue is full, and the frame class decides what happens (see [`Class`]).

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use rendezvous_protocol::{close, ServerFrame};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::metrics as m;

/// How a frame may be treated when the client's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Typing indicators, presence, pings: dropped (and counted) under pressure.
    Droppable,
    /// Messages, acks, signals, match results: never dropped silently. If the queue
    /// is full the client is disconnected with 4008 and recovers with `history`.
    Essential,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// Queue full and the frame was droppable.
    Dropped,
    /// Queue full with an essential frame: the client is being disconnected.
    Disconnected,
    /// The connection is already closing.
    Closed,
}

/// State shared between every [`Outbox`] clone and the writer.
struct Shared {
    /// Close code requested (0 = none yet). Atomic so the first closer wins without
    /// a lock, whichever thread it runs on.
    close_code: AtomicU32,
    /// Wakes the writer when a close is requested; `notify_one` keeps a permit, so a
    /// close requested before the writer waits is not lost.
    wake: Notify,
    /// Bytes of the frames waiting in the queue, and the most it may hold (0: no
    /// byte limit). A frame count alone would let a client that stopped reading
    /// hold a thousand large frames; one frame larger than the limit still goes
    /// through an empty queue (a long `history`).
    queued_bytes: AtomicUsize,
    max_bytes: usize,
}

fn weight(msg: &Message) -> usize {
    match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// Cloneable handle to one client's outbound queue.
#[derive(Clone)]
pub struct Outbox {
    /// Bounded: its capacity is the slow-consumer threshold (`outbound_queue`).
    tx: mpsc::Sender<Message>,
    shared: Arc<Shared>,
}

/// The writer's end of the queue.
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("closing", &self.close_code()).finish()
    }
}

impl Outbox {
    /// A queue holding at most `capacity` frames and `max_bytes` bytes of them
    /// (0: no byte limit).
    pub fn new(capacity: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared {
            close_code: AtomicU32::new(0),
            wake: Notify::new(),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
        });
        (Outbox { tx, shared: shared.clone() }, OutboxReceiver { rx, shared })
    }

    /// Queue an already serialized frame. Fan-out serializes once and pushes clones
    /// of the same bytes to every member.
    pub fn push(&self, text: Utf8Bytes, class: Class) -> Delivery {
        self.push_message(Message::Text(text), class)
    }

    /// Serialize and queue one frame.
    pub fn push_frame(&self, frame: &ServerFrame, class: Class) -> Delivery {
        self.push(Utf8Bytes::from(frame.to_json()), class)
    }

    /// Queue a raw WebSocket message (pings).
    pub fn push_message(&self, msg: Message, class: Class) -> Delivery {
        if self.close_code() != 0 {
            return Delivery::Closed;
        }
        let n = weight(&msg);
        let before = self.shared.queued_bytes.fetch_add(n, Ordering::AcqRel);
        let over = self.shared.max_bytes > 0 && before > 0 && before + n > self.shared.max_bytes;
        let sent =
            if over { Err(mpsc::error::TrySendError::Full(msg)) } else { self.tx.try_send(msg) };
        if sent.is_err() {
            self.shared.queued_bytes.fetch_sub(n, Ordering::AcqRel);
        }
        match sent {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
            Err(mpsc::error::TrySendError::Full(_)) => match class {
                Class::Droppable => {
                    metrics::counter!(m::FRAMES_DROPPED_TOTAL).increment(1);
                    Delivery::Dropped
                }
                Class::Essential => {
                    metrics::counter!(m::SLOW_CONSUMER_DISCONNECTS_TOTAL).increment(1);
                    self.close(close::POLICY);
                    Delivery::Disconnected
                }
            },
        }
    }

    /// Ask the writer to close the connection with `code`. The first request wins;
    /// later ones are ignored. Frames already queued are still written first when
    /// the close is normal; a policy close skips them.
    pub fn close(&self, code: u16) {
        if self
            .shared
            .close_code
            .compare_exchange(0, u32::from(code), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.shared.wake.notify_one();
        }
    }

    /// The close code requested so far, 0 if none.
    pub fn close_code(&self) -> u16 {
        self.shared.close_code.load(Ordering::Acquire) as u16
    }

    /// Frames waiting to be written.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Bytes of the frames waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }
}

impl OutboxReceiver {
    async fn recv(&mut self) -> Option<Message> {
        let msg = self.rx.recv().await?;
        self.shared.queued_bytes.fetch_sub(weight(&msg), Ordering::AcqRel);
        Some(msg)
    }

    fn try_recv(&mut self) -> Option<Message> {
        let msg = self.rx.try_recv().ok()?;
        self.shared.queued_bytes.fetch_sub(weight(&msg), Ordering::AcqRel);
        Some(msg)
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::NORMAL => "bye",
        close::TOO_LARGE => "frame too large",
        close::RESTARTING => "server restarting",
        close::TRY_AGAIN_LATER => "server full",
        close::UNAUTHORIZED => "unauthorized",
        close::POLICY => "policy violation",
        close::REPLACED => "replaced by a newer connection",
        _ => "closing",
    }
}

/// Most frames written before one flush: batches syscalls under load without
/// delaying a lone frame.
const BATCH: usize = 64;

/// Drain `rx` into `sink` until a close is requested, the socket fails, or one
/// write blocks longer than `write_timeout` (a client that stopped reading). Then
/// call `closing(code)` at once, so the session ends (and its rooms see the user
/// offline) without waiting on a socket that may never drain, send a close frame
/// (bounded wait) and return the close code used. Frames written are counted on
/// `frames_out`.
pub async fn run_writer<S>(
    mut sink: S,
    mut rx: OutboxReceiver,
    write_timeout: Duration,
    frames_out: metrics::Counter,
    closing: impl FnOnce(u16),
) -> u16
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let shared = rx.shared.clone();
    // One waiter on the close signal for the writer's whole life: a fresh
    // `notified()` per frame would lock the `Notify` to enqueue and dequeue itself
    // every time.
    let closed = shared.wake.notified();
    tokio::pin!(closed);
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut closed => break,
            msg = rx.recv() => match msg {
                Some(msg) => msg,
                None => break,
            },
        };
        let batch = async {
            sink.feed(first).await?;
            let mut n = 1u64;
            while (n as usize) < BATCH {
                match rx.try_recv() {
                    Some(msg) => {
                        sink.feed(msg).await?;
                        n += 1;
                    }
                    None => break,
                }
            }
            sink.flush().await?;
            Ok::<u64, WsError>(n)
        };
        // Most batches go out in one poll (the kernel buffer has room); only one
        // that has to wait gets a timer, so the common case never touches the
        // timer wheel.
        let mut batch = std::pin::pin!(batch);
        let once = std::future::poll_fn(|cx| Poll::Ready(batch.as_mut().poll(cx))).await;
        let outcome = match once {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => tokio::select! {
                biased;
                _ = &mut closed => break,
                r = tokio::time::timeout(write_timeout, batch) => r,
            },
        };
        match outcome {
            Ok(Ok(n)) => frames_out.increment(n),
            Ok(Err(_)) => {
                // The peer is gone; nothing more can be written.
                let _ = shared.close_code.compare_exchange(
                    0,
                    1006,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                closing(1006);
                return 1006;
            }
            Err(_) => {
                metrics::counter!(m::SLOW_CONSUMER_DISCONNECTS_TOTAL).increment(1);
                let _ = shared.close_code.compare_exchange(
                    0,
                    u32::from(close::POLICY),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                break;
            }
        }
    }
    let code = match shared.close_code.load(Ordering::Acquire) as u16 {
        0 => close::NORMAL,
        c => c,
    };
    closing(code);
    // A normal close or a restart lets what is queued go out first (bounded).
    if code == close::NORMAL || code == close::RESTARTING {
        let _ = tokio::time::timeout(write_timeout.min(Duration::from_secs(2)), async {
            while let Some(msg) = rx.try_recv() {
                sink.feed(msg).await?;
            }
            sink.flush().await
        })
        .await;
    }
    let frame = CloseFrame { code: CloseCode::from(code), reason: close_reason(code).into() };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        sink.send(Message::Close(Some(frame))).await?;
        sink.close().await
    })
    .await;
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Utf8Bytes {
        Utf8Bytes::from("x".repeat(n))
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_as_well_as_frames() {
        let (out, mut rx) = Outbox::new(100, 1_000);
        assert_eq!(out.push(text(600), Class::Essential), Delivery::Queued);
        assert_eq!(out.queued_bytes(), 600);
        // Over the byte limit: a droppable frame is dropped, an essential one ends
        // the session, however few frames are queued.
        assert_eq!(out.push(text(600), Class::Droppable), Delivery::Dropped);
        assert_eq!(out.close_code(), 0);
        assert_eq!(out.push(text(600), Class::Essential), Delivery::Disconnected);
        assert_eq!(out.close_code(), close::POLICY);
        assert_eq!(rx.try_recv().map(|m| weight(&m)), Some(600));
        assert_eq!(out.queued_bytes(), 0);
    }

    #[test]
    fn one_frame_larger_than_the_limit_passes_an_empty_queue() {
        let (out, mut rx) = Outbox::new(100, 1_000);
        assert_eq!(out.push(text(5_000), Class::Essential), Delivery::Queued);
        assert_eq!(out.push(text(10), Class::Droppable), Delivery::Dropped);
        assert!(rx.try_recv().is_some());
        assert_eq!(out.push(text(10), Class::Essential), Delivery::Queued);
        let (unbounded, _rx) = Outbox::new(100, 0);
        for _ in 0..50 {
            assert_eq!(unbounded.push(text(5_000), Class::Essential), Delivery::Queued);
        }
    }
}
