//! Conditional requests, RFC 9110 §13.1–13.2, evaluated in the §13.2.2 order
//! for GET and HEAD on an entity that exists. (For a missing entity the
//! preconditions are ignored and the answer is 404, §13.2.1.)
//!
//! Header parsing and ETag comparison come from the `headers` crate:
//! `If-Match` uses the strong comparison, `If-None-Match` the weak one, so
//! `W/"x"` matches `"x"`. A header that does not parse is treated as absent,
//! but its presence still disables the date-based fallback it overrides.

use axum::http::HeaderMap;
use axum::http::header::{IF_MATCH, IF_NONE_MATCH};
use headers::{ETag, HeaderMapExt, IfMatch, IfModifiedSince, IfNoneMatch, IfUnmodifiedSince};
use std::time::SystemTime;

/// What the preconditions say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send the representation (200).
    Proceed,
    /// The client's copy is current (304).
    NotModified,
    /// A precondition failed (412).
    PreconditionFailed,
}

/// Evaluates the preconditions of a GET or HEAD against the current
/// representation's validators.
pub fn evaluate(headers: &HeaderMap, etag: &ETag, last_modified: SystemTime) -> Outcome {
    // Step 1 and 2: If-Match, else If-Unmodified-Since.
    if headers.contains_key(IF_MATCH) {
        if let Some(im) = typed::<IfMatch>(headers)
            && !im.precondition_passes(etag)
        {
            return Outcome::PreconditionFailed;
        }
    } else if let Some(ius) = typed::<IfUnmodifiedSince>(headers)
        && !ius.precondition_passes(last_modified)
    {
        return Outcome::PreconditionFailed;
    }
    // Step 3 and 4: If-None-Match, else If-Modified-Since.
    if headers.contains_key(IF_NONE_MATCH) {
        if let Some(inm) = typed::<IfNoneMatch>(headers)
            && !inm.precondition_passes(etag)
        {
            return Outcome::NotModified;
        }
    } else if let Some(ims) = typed::<IfModifiedSince>(headers)
        && !ims.is_modified(last_modified)
    {
        return Outcome::NotModified;
    }
    Outcome::Proceed
}

fn typed<H: headers::Header>(headers: &HeaderMap) -> Option<H> {
    headers.typed_try_get::<H>().ok().flatten()
}
