//! The webhook's form of a verified delivery: a first pass over the body that counts
//! what the delivery will hold ([`measure`], so its memory is reserved before anything
//! is parsed into memory), a second that builds the [`Compact`] form allocating exactly
//! that ([`compact`]: one 44-byte [`ItemRef`] per item, the candidates, including the
//! tokens found inside items), and the answer written from it in pieces
//! ([`FeedbackChunks`]).
//!
//! The one parser of an alert array: the webhook, the Token Revocation API and replay
//! use it; `super::oracle` is only the tests' second opinion.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use super::{candidate, each_item, CandidateItem, FeedbackRef, Hex, Inside, NewReport, ParseError};
use crate::domain::format::Formats;
use crate::domain::outcome::Outcome;
use crate::domain::redact::redact_tokens;
use crate::domain::token::TokenHash;

/// What a verified delivery will cost in memory once parsed, counted by a first pass
/// over the body that allocates nothing per item ([`measure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sizes {
    pub items: usize,
    pub candidates: usize,
    /// Upper bound of the heap bytes of the candidates' stored strings (`type`, `url`,
    /// `source` after redaction) and of the `type`s that had to be unescaped.
    pub text_bytes: usize,
}

/// Redaction (`cio_tp_` → `cio_tp_[redacted]`) and NUL → U+FFFD at most triple a
/// string; 16 bytes for the allocator's bookkeeping.
fn stored_bound(s: Option<&str>) -> usize {
    s.map_or(0, |s| s.len() * 3 + 16)
}

/// Heap bytes of a found candidate's `found_in` (`items[4294967295].location`).
const FOUND_IN_BYTES: usize = 48;

/// Heap bytes of one token found inside an item beyond the candidate itself: its three
/// strings cut to [`super::FOUND_TEXT_MAX`] and its `found_in`.
pub const FOUND_INSIDE_TEXT: usize = 3 * (super::FOUND_TEXT_MAX + 16) + FOUND_IN_BYTES;

/// First pass over a verified body: validates its shape and counts what [`compact`]
/// will allocate, so the caller can reserve memory before any of it is allocated.
pub fn measure(body: &[u8], formats: Formats) -> Result<Sizes, ParseError> {
    let mut sizes = Sizes::default();
    each_item(body, |item| {
        sizes.items += 1;
        if matches!(item.token_type, Some(Cow::Owned(_))) {
            sizes.text_bytes += stored_bound(item.token_type.as_deref());
        }
        let own = formats.recognise(&item.token).is_some();
        let stored = stored_bound(item.token_type.as_deref())
            + stored_bound(item.place())
            + stored_bound(item.source.as_deref());
        if own {
            sizes.candidates += 1;
            sizes.text_bytes += stored;
        }
        let mut first = true;
        item.tokens_inside(own, formats, |_, _| {
            if std::mem::take(&mut first) {
                // The item's strings made storable once before they are cut (freed then,
                // counted as held).
                sizes.text_bytes += stored;
            }
            sizes.candidates += 1;
            sizes.text_bytes += FOUND_INSIDE_TEXT;
        });
    })?;
    Ok(sizes)
}

/// Where an item's `type` is: nowhere, or a copy (serde does not borrow into an
/// `Option<Cow<str>>`, so every `type` is one, as [`measure`] counts).
#[derive(Debug, Clone, Copy)]
enum TypeRef {
    None,
    Owned(u32),
}

/// Per item, only what the answer needs: 44 bytes (the `type` is a copy counted by
/// [`measure`]).
#[derive(Debug, Clone, Copy)]
pub struct ItemRef {
    hash: TokenHash,
    token_type: TypeRef,
    outcome: Outcome,
}

/// A verified delivery in compact form: the body (the `type`s are read from it),
/// one [`ItemRef`] per item, and the candidates ready for the store.
#[derive(Debug)]
pub struct Compact {
    body: bytes::Bytes,
    items: Vec<ItemRef>,
    owned_types: Vec<Box<str>>,
    /// Index in `items` of each candidate, in order.
    positions: Vec<u32>,
    /// The items' own tokens, then those found inside items (see the module docs).
    pub candidates: Vec<CandidateItem>,
    pub not_ours: u32,
    /// How many of `candidates` were found inside items (the last ones).
    pub found_inside: u32,
}

/// The heap bytes [`compact`] allocates for a body of these [`Sizes`] (beyond the
/// body), and a bound of the store's own per-candidate work.
pub fn compact_bytes(sizes: &Sizes) -> usize {
    /// What the store allocates per candidate while recording it (bind values,
    /// returned rows, outcomes): an estimate from the store's row and bind sizes, not
    /// yet a measurement (the tiny-item worst case has no candidates).
    const STORE_PER_CANDIDATE: usize = 512;
    sizes.items * std::mem::size_of::<ItemRef>()
        + sizes.candidates
            * (std::mem::size_of::<CandidateItem>()
                + std::mem::size_of::<u32>()
                + STORE_PER_CANDIDATE)
        + sizes.text_bytes
}

/// Second pass: hashes and classifies every item into a [`Compact`], allocating
/// exactly what [`measure`] counted. `body` must be the bytes `sizes` was measured on.
pub fn compact(body: bytes::Bytes, sizes: &Sizes, formats: Formats) -> Result<Compact, ParseError> {
    let mut items = Vec::with_capacity(sizes.items);
    let mut owned_types = Vec::new();
    let mut positions = Vec::with_capacity(sizes.candidates);
    let mut candidates = Vec::with_capacity(sizes.candidates);
    let mut inside = Inside::default();
    each_item(&body, |item| {
        let hash = TokenHash::of(&item.token);
        let token_type = match &item.token_type {
            None => TypeRef::None,
            Some(t) => {
                // Echoed in the answer: a token in it never is (as when stored).
                owned_types.push(Box::<str>::from(redact_tokens(t)));
                TypeRef::Owned(owned_types.len() as u32 - 1)
            }
        };
        let own = formats.recognise(&item.token);
        if let Some(format) = own {
            positions.push(items.len() as u32);
            candidates.push(candidate(&item, items.len(), format.key(&item.token)));
        }
        inside.collect(&item, items.len(), own.is_some(), formats);
        items.push(ItemRef {
            hash,
            token_type,
            outcome: Outcome::NotOurs,
        });
    })?;
    let not_ours = (items.len() - candidates.len()) as u32;
    let found_inside = inside.append_to(&mut candidates, items.len());
    Ok(Compact {
        found_inside,
        body,
        items,
        owned_types,
        positions,
        candidates,
        not_ours,
    })
}

impl Compact {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The report to record (the candidates move into it), or `None` when no item is a
    /// candidate.
    pub fn take_report(
        &mut self,
        scanner: &str,
        key_id: &str,
        received_at: DateTime<Utc>,
        body_sha256: impl FnOnce(&[u8]) -> [u8; 32],
    ) -> Option<NewReport> {
        if self.candidates.is_empty() {
            return None;
        }
        Some(NewReport {
            scanner: scanner.to_owned(),
            key_id: key_id.to_owned(),
            received_at,
            body_sha256: body_sha256(&self.body),
            item_count: self.items.len() as u32 + self.found_inside,
            not_ours: self.not_ours,
            candidates: std::mem::take(&mut self.candidates),
        })
    }

    /// Sets the candidates' outcomes (in candidate order) and frees what the answer
    /// no longer needs.
    pub fn set_outcomes(&mut self, candidate_outcomes: &[Outcome]) {
        for (&at, &outcome) in self.positions.iter().zip(candidate_outcomes) {
            self.items[at as usize].outcome = outcome;
        }
        self.positions = Vec::new();
        self.candidates = Vec::new();
    }

    /// Every item, input order: the SHA-256 of its whole token (the answer's
    /// `token_hash`) and, when its own token is a candidate, that candidate's key
    /// ([`CandidateItem::hash`], the hash its format stores). The keys are read from the
    /// candidates: call this before [`Compact::take_report`] or [`Compact::set_outcomes`]
    /// frees them.
    pub fn keys(&self) -> impl Iterator<Item = (TokenHash, Option<TokenHash>)> + '_ {
        assert!(
            self.candidates.len() >= self.positions.len(),
            "keys read after the candidates were taken"
        );
        let mut own = self.positions.iter().zip(&self.candidates).peekable();
        self.items.iter().enumerate().map(move |(at, item)| {
            let key = own.next_if(|(&p, _)| p as usize == at).map(|(_, c)| c.hash);
            (item.hash, key)
        })
    }

    /// Every item's outcome, input order: `NotOurs` for an item that is no candidate,
    /// and for a candidate until [`Compact::set_outcomes`].
    pub fn outcomes(&self) -> impl Iterator<Item = Outcome> + '_ {
        self.items.iter().map(|item| item.outcome)
    }

    fn token_type(&self, t: TypeRef) -> &str {
        match t {
            TypeRef::None => "",
            TypeRef::Owned(i) => &self.owned_types[i as usize],
        }
    }

    /// The answer in pieces of about `chunk` bytes: [`FeedbackChunks::next_chunk`]
    /// writes the next entries, so the whole answer is never in memory.
    pub fn feedback(self, chunk: usize) -> FeedbackChunks {
        FeedbackChunks {
            delivery: self,
            next: 0,
            chunk,
            opened: false,
            done: false,
        }
    }
}

/// The 200 answer of a [`Compact`] delivery, written on demand (the same bytes as the
/// test oracle's `feedback_json`).
#[derive(Debug)]
pub struct FeedbackChunks {
    delivery: Compact,
    next: usize,
    chunk: usize,
    opened: bool,
    done: bool,
}

impl FeedbackChunks {
    /// The next piece of the answer, or `None` after the closing `]`.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let items = &self.delivery.items;
        let mut out = Vec::with_capacity(self.chunk + 256);
        if !self.opened {
            out.push(b'[');
            self.opened = true;
        }
        while self.next < items.len() && out.len() < self.chunk {
            let item = items[self.next];
            if self.next > 0 {
                out.push(b',');
            }
            let entry = FeedbackRef {
                token_hash: Hex(&item.hash),
                token_type: self.delivery.token_type(item.token_type),
                label: item.outcome.into(),
            };
            serde_json::to_writer(&mut out, &entry).expect("serialising to memory cannot fail");
            self.next += 1;
        }
        if self.next == items.len() {
            out.push(b']');
            self.done = true;
        }
        Some(out)
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}
