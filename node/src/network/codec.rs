//! The sync protocol's framing on a libp2p stream: a length prefix, then a
//! postcard body (see `docs/protocol.md`), read only once the connection's
//! budget of bytes in flight has room for it; and the traffic counters.

use super::*;

/// A request as read off the wire. A request that does not decode (or is
/// over the size limit) still reaches the event loop, as `Invalid`, so the
/// node learns who sent it and closes the connection: libp2p's
/// request-response reports a failed read to nobody.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireRequest {
    Valid(sync::Request),
    Invalid(String),
}

/// Frames sync messages: a 4-byte big-endian length, then the postcard body.
/// A length over [`MAX_MESSAGE_LEN`] is refused before anything is allocated.
/// Counts the bytes it frames in both directions, and bounds the bytes in
/// flight on each connection ([`MAX_INBOUND_BYTES_PER_CONNECTION`]).
///
/// libp2p's request-response clones the behaviour's codec once for each
/// connection, and that connection's codec once for each stream; the codec
/// has no other way to tell connections apart. So a clone of a codec with no
/// budget (the behaviour's own, or a new one) gets a fresh budget: the
/// connection's; a clone of a codec with one shares it: a stream's.
#[derive(Debug, Default)]
pub struct SyncCodec {
    pub(super) traffic: Traffic,
    /// The connection's budget of bytes in flight (`None` in the
    /// behaviour's own codec).
    pub(super) budget: Option<Arc<Semaphore>>,
    /// An inbound request's share of the budget, held by its stream's codec
    /// until the answer is written or the stream is dropped.
    pub(super) held: Option<OwnedSemaphorePermit>,
}

impl Clone for SyncCodec {
    fn clone(&self) -> Self {
        let budget = self
            .budget
            .clone()
            .unwrap_or_else(|| Arc::new(Semaphore::new(MAX_INBOUND_BYTES_PER_CONNECTION)));
        Self {
            traffic: self.traffic.clone(),
            budget: Some(budget),
            held: None,
        }
    }
}

impl SyncCodec {
    /// Waits until a message of `len` bytes fits in the connection's budget;
    /// the returned permit gives the bytes back when dropped.
    async fn reserve(&self, len: usize) -> std::io::Result<Option<OwnedSemaphorePermit>> {
        let Some(budget) = &self.budget else {
            return Ok(None);
        };
        // `len` is at most MAX_MESSAGE_LEN, checked by the caller.
        let permits = u32::try_from(len).map_err(|_| too_large(len))?;
        Arc::clone(budget)
            .acquire_many_owned(permits)
            .await
            .map(Some)
            .map_err(|_| std::io::Error::other("the connection's budget is closed"))
    }
}

/// Sync bytes sent and received (frames with their length prefixes), shared
/// by every connection of one event loop.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Traffic {
    /// (bytes sent, bytes received) so far.
    pub fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.sent.load(Relaxed), self.received.load(Relaxed))
    }

    fn count(counter: &std::sync::atomic::AtomicU64, body: usize) {
        counter.fetch_add(4 + body as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

fn too_large(len: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("message of {len} bytes is over the limit of {MAX_MESSAGE_LEN}"),
    )
}

/// Reads a frame's body once its length prefix `len` has been read, when
/// it fits in the connection's budget; returns it with its share of the
/// budget.
async fn read_body<T: AsyncRead + Unpin + Send>(
    codec: &SyncCodec,
    io: &mut T,
    len: [u8; 4],
) -> std::io::Result<(Vec<u8>, Option<OwnedSemaphorePermit>)> {
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(too_large(len));
    }
    let permit = codec.reserve(len).await?;
    // Zeroed memory comes from the system as untouched pages, which become
    // resident only as the bytes that arrive fill them; and there is no
    // reallocation (and no copy) as the body grows.
    let mut body = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match io.read(&mut body[filled..]).await? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("message announced {len} bytes, {filled} arrived"),
                ));
            }
            n => filled += n,
        }
    }
    Ok((body, permit))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n as usize <= MAX_MESSAGE_LEN)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "message over the size limit",
            )
        })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await?;
    io.close().await
}

fn invalid(e: sync::SyncError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = WireRequest;
    type Response = sync::Response;

    async fn read_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<WireRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut len = [0u8; 4];
        match tokio::time::timeout(REQUEST_START_TIMEOUT, io.read_exact(&mut len)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Ok(WireRequest::Invalid(format!(
                    "no request within {REQUEST_START_TIMEOUT:?} of opening the stream"
                )));
            }
        }
        match read_body(self, io, len).await {
            Ok((body, permit)) => {
                Traffic::count(&self.traffic.received, body.len());
                let request = sync::decode_request(&body);
                drop(body);
                // Held until the answer is written: the decoded request
                // lives on until the node has answered it.
                self.held = permit;
                Ok(match request {
                    Ok(request) => WireRequest::Valid(request),
                    Err(e) => WireRequest::Invalid(e.to_string()),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Ok(WireRequest::Invalid(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<sync::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        // The permit goes back once the response is decoded.
        let (body, _permit) = read_body(self, io, len).await?;
        Traffic::count(&self.traffic.received, body.len());
        sync::decode_response(&body).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: WireRequest,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match request {
            WireRequest::Valid(request) => {
                let body = sync::encode_request(&request);
                Traffic::count(&self.traffic.sent, body.len());
                write_frame(io, &body).await
            }
            WireRequest::Invalid(_) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an invalid request is never sent",
            )),
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: sync::Response,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let body = sync::encode_response(&response);
        drop(response);
        Traffic::count(&self.traffic.sent, body.len());
        let written = write_frame(io, &body).await;
        // The request is answered: its bytes are no longer in flight.
        self.held = None;
        written
    }
}
