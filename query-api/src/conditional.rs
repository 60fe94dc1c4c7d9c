//! Conditional requests, RFC 9110 §13.1–13.2, evaluated in the §13.2.2 order
//! for GET and HEAD on an entity that exists. (For a missing entity the
//! preconditions are ignored and the answer is 404, §13.2.1.)
//!
//! Header parsing and ETag comparison come from the `headers` crate:
//! `If-Match` uses the strong comparison, `If-None-Match` the weak one, so
//! `W/"x"` matches `"x"`. A header that does not parse is treated as absent,
//! but its presence still disables the date-based fallback it overrides.
//!
//! Compression and validators: an ETag never names two byte sequences. The
//! handler attaches [`Validators`] (the stored, identity ETag) to a 200; the
//! [`layer`] runs *outside* the compression layer, sees the final
//! `Content-Encoding`, and derives the representation's tag: `"<etag>"` for
//! identity, `"<etag>-gzip"`, `"<etag>-br"`, `"<etag>-zstd"` otherwise. Only
//! then are the preconditions evaluated, against that tag, and a match turns
//! the response into a 304 carrying the same tag, `Cache-Control`, `Vary`,
//! `Last-Modified` and `Date`.
//!
//! Dates: `Last-Modified` is never later than the response's own time (a
//! record stamped in the future is served as modified now), and a
//! representation without a date that only moves forward (a batch) has no
//! `Last-Modified`, so `If-Modified-Since` can never produce a 304 for
//! bytes that changed.

use crate::error::ApiError;
use axum::body::HttpBody as _;
use axum::extract::Request;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, ETAG, IF_MATCH, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_UNMODIFIED_SINCE, LAST_MODIFIED, VARY,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
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

/// Validators of a selected representation, attached by the handler to its
/// 200 response as an extension. Header forms are rendered once (cached
/// entities keep them).
#[derive(Debug, Clone)]
pub struct Validators {
    /// The stored strong validator, without quotes (identity encoding);
    /// shared, so that a cached entity's validators clone without copying.
    pub etag: std::sync::Arc<str>,
    /// `"<etag>"`, the identity representation's `ETag` header.
    pub etag_header: HeaderValue,
    /// `Last-Modified`; `None` for a representation without a modification
    /// date that can only move forward (a batch: deleting its newest member
    /// would move it back), whose date preconditions are then ignored
    /// (RFC 9110 §13.1.3, §13.1.4).
    pub last_modified: Option<SystemTime>,
    /// `Last-Modified` as an HTTP date.
    pub last_modified_header: Option<HeaderValue>,
}

impl Validators {
    /// From a stored validator (base64url, so always a valid header) and a
    /// time.
    pub fn new(etag: impl Into<std::sync::Arc<str>>, last_modified: Option<SystemTime>) -> Self {
        let etag = etag.into();
        let etag_header = HeaderValue::from_str(&format!("\"{etag}\""))
            .unwrap_or(HeaderValue::from_static("\"\""));
        let last_modified_header = last_modified.map(|t| {
            HeaderValue::from_str(&httpdate::fmt_http_date(t))
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
        });
        Self {
            etag,
            etag_header,
            last_modified,
            last_modified_header,
        }
    }

    /// The validators to send at `now`: a `Last-Modified` in the future (a
    /// producer's clock ahead of ours) becomes `now`, as RFC 9110 §8.8.2.1
    /// requires; an If-Modified-Since then never matches a date that has
    /// not happened yet.
    pub fn not_after(self, now: SystemTime) -> Self {
        match self.last_modified {
            Some(t) if t > now => Self::new(self.etag, Some(now)),
            _ => self,
        }
    }
}

/// Evaluates the preconditions of a GET or HEAD against the current
/// representation's validators. Dates compare at the second granularity of
/// HTTP dates; without a `last_modified`, date preconditions are ignored.
pub fn evaluate(headers: &HeaderMap, etag: &ETag, last_modified: Option<SystemTime>) -> Outcome {
    // Step 1 and 2: If-Match, else If-Unmodified-Since.
    if headers.contains_key(IF_MATCH) {
        if let Some(im) = typed::<IfMatch>(headers)
            && !im.precondition_passes(etag)
        {
            return Outcome::PreconditionFailed;
        }
    } else if let Some(ius) = typed::<IfUnmodifiedSince>(headers)
        && let Some(t) = last_modified
        && !ius.precondition_passes(t)
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
        && let Some(t) = last_modified
        && !ims.is_modified(t)
    {
        return Outcome::NotModified;
    }
    Outcome::Proceed
}

fn typed<H: headers::Header>(headers: &HeaderMap) -> Option<H> {
    headers.typed_try_get::<H>().ok().flatten()
}

/// The representation's entity tag: the stored validator, suffixed with the
/// content coding when the body is encoded.
pub fn representation_etag(stored: &str, content_encoding: Option<&HeaderValue>) -> Option<ETag> {
    let tag = match content_encoding.and_then(|v| v.to_str().ok()) {
        None | Some("identity") => format!("\"{stored}\""),
        Some(coding) => format!("\"{stored}-{coding}\""),
    };
    tag.parse().ok()
}

const CONDITIONAL_HEADERS: [HeaderName; 4] = [
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
];

/// A revalidation that a handler may answer itself, before any response is
/// built: exactly one `If-None-Match` line and no other precondition, and
/// no `Accept-Encoding` (the representation is the identity one whatever
/// the compression layer would do). It holds the header's value; the
/// handler answers 304 only if it is exactly the current identity tag,
/// which is what [`layer`] would decide for the same request. Any other
/// request goes through [`layer`].
#[derive(Debug)]
pub struct Revalidation(pub Option<HeaderValue>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Revalidation {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let h = &parts.headers;
        if h.contains_key(http::header::ACCEPT_ENCODING) {
            return Ok(Self(None));
        }
        Ok(Self::of(&Conditions::of(h)))
    }
}

impl Revalidation {
    /// The revalidation of a request without `Accept-Encoding` that has
    /// `conditions`.
    pub(crate) fn of(conditions: &Conditions) -> Self {
        Self(match conditions {
            Conditions::IfNoneMatch(v) => Some(v.clone()),
            Conditions::None | Conditions::Any(_) => None,
        })
    }

    /// Whether the client holds exactly `current` (the identity `ETag`).
    pub fn holds(&self, current: &Validators) -> bool {
        self.0.as_ref() == Some(&current.etag_header)
    }
}

/// A request's preconditions, kept while the handler runs.
pub(crate) enum Conditions {
    /// None at all (the common read).
    None,
    /// Exactly one `If-None-Match` line and no other precondition (the
    /// common revalidation): kept without building a header map.
    IfNoneMatch(HeaderValue),
    /// Anything else, evaluated in full.
    Any(HeaderMap),
}

impl Conditions {
    /// Whether preconditions other than one `If-None-Match` line are set.
    pub(crate) fn is_any(&self) -> bool {
        matches!(self, Self::Any(_))
    }

    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut inm = headers.get_all(IF_NONE_MATCH).iter();
        let others = CONDITIONAL_HEADERS[..]
            .iter()
            .filter(|n| **n != IF_NONE_MATCH)
            .any(|n| headers.contains_key(n));
        match (inm.next(), inm.next(), others) {
            (None, _, false) => Self::None,
            (Some(v), None, false) => Self::IfNoneMatch(v.clone()),
            _ => {
                let mut conditions = HeaderMap::new();
                for name in CONDITIONAL_HEADERS {
                    for v in headers.get_all(&name) {
                        conditions.append(name.clone(), v.clone());
                    }
                }
                Self::Any(conditions)
            }
        }
    }

    fn into_map(self) -> HeaderMap {
        match self {
            Self::None => HeaderMap::new(),
            Self::IfNoneMatch(v) => HeaderMap::from_iter([(IF_NONE_MATCH, v)]),
            Self::Any(conditions) => conditions,
        }
    }
}

/// Middleware (outside compression): final ETag, then preconditions.
pub async fn layer(req: Request, next: Next) -> Response {
    let conditions = Conditions::of(req.headers());
    finish(conditions, next.run(req).await)
}

/// The response to a request with `conditions`: a 200 that carries
/// [`Validators`] gets its final `ETag`, then the preconditions decide
/// between it, a 304 and a 412; any other response is left as it is.
pub(crate) fn finish(conditions: Conditions, mut res: Response) -> Response {
    let Some(v) = res.extensions_mut().remove::<Validators>() else {
        return res;
    };
    let identity = !res.headers().contains_key(CONTENT_ENCODING);
    if identity {
        res.headers_mut().insert(ETAG, v.etag_header.clone());
        match &conditions {
            Conditions::None => return res,
            // The common revalidation: exactly one If-None-Match carrying
            // exactly the current tag, nothing that outranks it. Same
            // outcome as the full evaluation, without parsing.
            Conditions::IfNoneMatch(inm) if *inm == v.etag_header => {
                return not_modified_from(res);
            }
            _ => {}
        }
    }
    let conditions = conditions.into_map();
    let Some(etag) = representation_etag(&v.etag, res.headers().get(CONTENT_ENCODING)) else {
        return res;
    };
    if !identity {
        res.headers_mut().typed_insert(etag.clone());
    }
    match evaluate(&conditions, &etag, v.last_modified) {
        Outcome::Proceed => res,
        Outcome::PreconditionFailed => ApiError::PreconditionFailed.into_response(),
        Outcome::NotModified => not_modified_from(res),
    }
}

/// The 304 of an identity representation that a handler answers itself
/// (see [`Revalidation`]): the headers [`layer`] would copy from its 200,
/// in the same order, and the 200's `Content-Length`.
pub fn not_modified_identity(
    validators: &Validators,
    cache_control: HeaderValue,
    vary: HeaderValue,
    content_length: usize,
) -> Response {
    let mut res = StatusCode::NOT_MODIFIED.into_response();
    let h = res.headers_mut();
    h.insert(ETAG, validators.etag_header.clone());
    h.insert(CACHE_CONTROL, cache_control);
    h.insert(VARY, vary);
    if let Some(date) = &validators.last_modified_header {
        h.insert(LAST_MODIFIED, date.clone());
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from(content_length));
    res
}

/// The 304 for a 200 that the preconditions turned down.
fn not_modified_from(res: Response) -> Response {
    let len = res.body().size_hint().exact();
    let mut nm = not_modified(res.headers());
    // RFC 9110 §8.6: a Content-Length on a 304 must be the 200's.
    // Without it, a HEAD 304 would go out as `Content-Length: 0`.
    if let Some(len) = len
        && !res.headers().contains_key(CONTENT_ENCODING)
    {
        nm.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    nm
}

/// A 304 with the 200's validators and caching headers (and the
/// `Preference-Applied` of a long-poll that timed out), and no body.
fn not_modified(from: &HeaderMap) -> Response {
    let mut res = StatusCode::NOT_MODIFIED.into_response();
    let h = res.headers_mut();
    for name in [
        ETAG,
        CACHE_CONTROL,
        VARY,
        LAST_MODIFIED,
        HeaderName::from_static("preference-applied"),
    ] {
        for v in from.get_all(&name) {
            h.append(name.clone(), v.clone());
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_one_byte_sequence_each() {
        let gz = HeaderValue::from_static("gzip");
        let tag = |enc| {
            let mut h = HeaderMap::new();
            h.typed_insert(representation_etag("abc", enc).unwrap());
            h[ETAG].to_str().unwrap().to_owned()
        };
        assert_eq!(tag(None), "\"abc\"");
        assert_eq!(tag(Some(&gz)), "\"abc-gzip\"");
    }
}
