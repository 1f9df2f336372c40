//! Memory of the alert endpoint, bounded before and after the signature.
//!
//! - Before: [`read_body`] keeps a body's first [`FREE_BODY_BYTES`] at no cost (the
//!   connection cap bounds those) and takes every byte of buffer beyond them from the
//!   shared `--unverified-body-budget` as the bytes arrive, waiting when it is spent
//!   (the wait counts against `--body-timeout`). A Content-Length that lies costs
//!   nothing until bytes come.
//! - After: [`verified_estimate`] is what a verified delivery will hold (body, one
//!   48-byte entry per item, candidates and what the store does with them, one answer
//!   chunk); it is reserved from `--verified-memory-budget` before anything is parsed
//!   into memory, and released when the answer has been sent ([`FeedbackBody`] holds
//!   it). A delivery that does not fit gets 503 `overloaded`: retryable, nothing
//!   recorded.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;
use crate::domain::alert::{self, FeedbackChunks, Sizes};
use crate::domain::scan;

/// Bytes of each body received before any budget is taken.
pub const FREE_BODY_BYTES: usize = 64 << 10;

/// Size of one piece of a streamed answer.
pub const FEEDBACK_CHUNK: usize = 64 << 10;

/// Fixed cost of one verified delivery beyond its body and items (parse state, the
/// answer's chunk, the report's strings, spans and logs).
/// And what decoding a string for tokens holds at once (`scan::DECODE_SCRATCH`).
const DELIVERY_OVERHEAD: usize = 2 * FEEDBACK_CHUNK + (16 << 10) + scan::DECODE_SCRATCH;

/// A shared byte budget.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Semaphore>);

/// Bytes held from a [`Budget`]; given back on drop.
#[derive(Debug)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl Budget {
    pub fn new(bytes: usize) -> Self {
        Budget(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Bytes not held by anyone now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }

    fn none() -> Held {
        Held(None)
    }

    /// Waits until `bytes` more are free and adds them to `held`.
    async fn grow(&self, held: &mut Held, bytes: usize) {
        let Ok(bytes) = u32::try_from(bytes) else {
            return std::future::pending().await; // more than the budget can ever have
        };
        let permit = Arc::clone(&self.0)
            .acquire_many_owned(bytes)
            .await
            .expect("never closed");
        held.merge(permit);
    }

    /// `bytes` now, or `None` when they are not free.
    pub fn try_take(&self, bytes: usize) -> Option<Held> {
        let bytes = u32::try_from(bytes).ok()?;
        Arc::clone(&self.0)
            .try_acquire_many_owned(bytes)
            .ok()
            .map(|p| Held(Some(p)))
    }
}

impl Held {
    fn merge(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(held) => held.merge(permit),
            None => self.0 = Some(permit),
        }
    }

    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |p| p.num_permits())
    }
}

/// Reads at most `limit` bytes, taking buffer space beyond [`FREE_BODY_BYTES`] from
/// `budget` before it is allocated (doubling, so at most twice what has arrived). The
/// caller bounds the whole with `--body-timeout`. Returns the body, its buffer's
/// capacity and the budget it holds.
pub async fn read_body(
    body: Body,
    limit: usize,
    budget: &Budget,
) -> Result<(Bytes, usize, Held), ApiError> {
    let mut body = body;
    let mut buf: Vec<u8> = Vec::new();
    let mut held = Budget::none();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::BodyRead)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let needed = buf.len() + data.len();
        if needed > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        if needed > buf.capacity() {
            let capacity = needed
                .max(buf.capacity() * 2)
                .max(FREE_BODY_BYTES.min(limit))
                .min(limit);
            let charged = buf.capacity().saturating_sub(FREE_BODY_BYTES);
            let charge = capacity.saturating_sub(FREE_BODY_BYTES) - charged;
            if charge > 0 {
                budget.grow(&mut held, charge).await;
            }
            buf.reserve_exact(capacity - buf.len());
        }
        buf.extend_from_slice(&data);
    }
    let capacity = buf.capacity();
    Ok((Bytes::from(buf), capacity, held))
}

/// Memory a verified delivery of `body_capacity` bytes of buffer and these sizes holds
/// until its answer is sent.
pub fn verified_estimate(body_capacity: usize, sizes: &Sizes) -> usize {
    body_capacity + alert::compact_bytes(sizes) + DELIVERY_OVERHEAD
}

/// The largest [`verified_estimate`] of a body of at most `max_body` bytes: every
/// item as small as an item can be (`{"token":""}` and a comma: 13 bytes), every item a
/// candidate (`{"token":"cio_tp_…"}`: 58 bytes), or one item whose string holds a token
/// every 43 bytes (each found inside it, see [`alert::FOUND_INSIDE_TEXT`]), whichever
/// costs most.
pub fn verified_estimate_max(max_body: usize) -> usize {
    let tiny = Sizes {
        items: max_body / 13 + 1,
        candidates: 0,
        text_bytes: 0,
    };
    let candidates = Sizes {
        items: max_body / 58 + 1,
        candidates: max_body / 58 + 1,
        text_bytes: 0,
    };
    let inside = Sizes {
        items: 1,
        candidates: max_body / 43 + 1,
        text_bytes: (max_body / 43 + 1) * alert::FOUND_INSIDE_TEXT + 3 * max_body + 16,
    };
    verified_estimate(max_body, &tiny)
        .max(verified_estimate(max_body, &candidates))
        .max(verified_estimate(max_body, &inside))
}

/// A 200 answer streamed in [`FEEDBACK_CHUNK`] pieces; holds the delivery's verified
/// budget until the last piece is taken or the client goes away.
pub struct FeedbackBody {
    first: Option<Vec<u8>>,
    chunks: FeedbackChunks,
    _held: Held,
}

impl FeedbackBody {
    /// `first` is the piece already taken from `chunks`.
    pub fn new(first: Vec<u8>, chunks: FeedbackChunks, held: Held) -> Self {
        FeedbackBody {
            first: Some(first),
            chunks,
            _held: held,
        }
    }
}

impl http_body::Body for FeedbackBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let next = this.first.take().or_else(|| this.chunks.next_chunk());
        Poll::Ready(next.map(|chunk| Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.chunks.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Formats;

    /// Tokens written one after another in one item's `token` (a gitleaks match sent to
    /// the Revocation API, say): a candidate every 43 bytes, each found inside the item,
    /// still within what the start check holds (found by the review: 1.33 times over).
    #[test]
    fn tokens_found_inside_one_item_fit_the_start_check() {
        let max_body = 1 << 20;
        let mut token = String::new();
        while token.len() + 43 + 600 < max_body {
            token.push_str(crate::domain::Token::generate().expose_secret());
        }
        let body = serde_json::json!([{ "token": token, "url": "u".repeat(500) }]).to_string();
        assert!(body.len() <= max_body);
        let sizes = alert::measure(body.as_bytes(), Formats::DEFAULT).unwrap();
        assert!(sizes.candidates > 24_000, "{sizes:?}");
        let needed = verified_estimate(body.len(), &sizes);
        let checked = verified_estimate_max(max_body);
        assert!(
            needed <= checked,
            "{sizes:?}: needs {needed}, start check {checked}"
        );
    }
}
