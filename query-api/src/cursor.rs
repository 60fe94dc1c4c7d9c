//! Opaque cursors of collection pages and change feeds.
//!
//! A cursor names a position *in one generation of one cache life*: it
//! carries a tag of the cache epoch (a new one after Redis lost its data)
//! and the generation (a new one after every rebuild). A cursor whose epoch
//! or generation is not the live one answers **410 Gone**: the client must
//! start over from the collection (its copy may miss changes that the new
//! generation's log does not repeat).
//!
//! The text is base64url of `{kind}|{epoch tag}|{generation}|{position}`.
//! Clients must treat it as opaque; the format may change between versions
//! (an old cursor then answers 400 or 410, never a wrong page).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use foldcache_common::id::EntityId;
use sha2::{Digest, Sha256};
use std::fmt;

/// Which cache life and generation a cursor belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// A short tag of the cache epoch.
    pub epoch_tag: String,
    /// The generation.
    pub generation: u64,
}

/// The short tag of a cache epoch: 8 base64url characters of its SHA-256.
pub fn epoch_tag(epoch: &str) -> String {
    let digest = Sha256::digest(epoch.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..6])
}

/// A position in a change log: a stream entry id `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamPos {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamPos {
    /// Parses `ms-seq` (as Redis writes stream ids).
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A decoded cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// A collection page: the items after `after`.
    Page {
        /// Life and generation.
        scope: Scope,
        /// The last id of the previous page.
        after: EntityId,
    },
    /// A change feed: the changes after `after`.
    Changes {
        /// Life and generation.
        scope: Scope,
        /// The last change already seen.
        after: StreamPos,
    },
}

/// Why a cursor is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorError {
    /// Not a cursor this API issued (or of the other kind): 400.
    Malformed,
    /// Issued for another cache life or generation: 410.
    Gone,
}

impl Cursor {
    /// The cursor as sent to clients.
    pub fn encode(&self) -> String {
        let text = match self {
            Cursor::Page { scope, after } => {
                format!("p|{}|{}|{after}", scope.epoch_tag, scope.generation)
            }
            Cursor::Changes { scope, after } => {
                format!("c|{}|{}|{after}", scope.epoch_tag, scope.generation)
            }
        };
        URL_SAFE_NO_PAD.encode(text)
    }

    fn decode(s: &str) -> Result<Self, CursorError> {
        if s.len() > 512 {
            return Err(CursorError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| CursorError::Malformed)?;
        let text = String::from_utf8(bytes).map_err(|_| CursorError::Malformed)?;
        let mut parts = text.splitn(4, '|');
        let (kind, tag, generation, pos) = (
            parts.next().ok_or(CursorError::Malformed)?,
            parts.next().ok_or(CursorError::Malformed)?,
            parts.next().ok_or(CursorError::Malformed)?,
            parts.next().ok_or(CursorError::Malformed)?,
        );
        let scope = Scope {
            epoch_tag: tag.to_owned(),
            generation: generation.parse().map_err(|_| CursorError::Malformed)?,
        };
        match kind {
            "p" => Ok(Cursor::Page {
                scope,
                after: EntityId::parse(pos).map_err(|_| CursorError::Malformed)?,
            }),
            "c" => Ok(Cursor::Changes {
                scope,
                after: StreamPos::parse(pos).ok_or(CursorError::Malformed)?,
            }),
            _ => Err(CursorError::Malformed),
        }
    }

    /// A collection cursor of the live `scope`: its last id.
    pub fn page_after(s: &str, live: &Scope) -> Result<EntityId, CursorError> {
        match Self::decode(s)? {
            Cursor::Page { scope, after } if scope == *live => Ok(after),
            Cursor::Page { .. } => Err(CursorError::Gone),
            Cursor::Changes { .. } => Err(CursorError::Malformed),
        }
    }

    /// A change cursor of the live `scope`: its position.
    pub fn changes_after(s: &str, live: &Scope) -> Result<StreamPos, CursorError> {
        match Self::decode(s)? {
            Cursor::Changes { scope, after } if scope == *live => Ok(after),
            Cursor::Changes { .. } => Err(CursorError::Gone),
            Cursor::Page { .. } => Err(CursorError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_scopes() {
        let live = Scope {
            epoch_tag: epoch_tag("e1"),
            generation: 3,
        };
        let id = EntityId::parse("E000042").unwrap();
        let page = Cursor::Page {
            scope: live.clone(),
            after: id.clone(),
        }
        .encode();
        assert_eq!(Cursor::page_after(&page, &live), Ok(id));
        let pos = StreamPos { ms: 17, seq: 2 };
        let ch = Cursor::Changes {
            scope: live.clone(),
            after: pos,
        }
        .encode();
        assert_eq!(Cursor::changes_after(&ch, &live), Ok(pos));
        // The other kind, garbage: 400.
        assert_eq!(Cursor::page_after(&ch, &live), Err(CursorError::Malformed));
        assert_eq!(
            Cursor::changes_after("not a cursor!", &live),
            Err(CursorError::Malformed)
        );
        // Another generation or another cache life: 410.
        let rebuilt = Scope {
            generation: 4,
            ..live.clone()
        };
        assert_eq!(Cursor::changes_after(&ch, &rebuilt), Err(CursorError::Gone));
        let flushed = Scope {
            epoch_tag: epoch_tag("e2"),
            ..live
        };
        assert_eq!(Cursor::page_after(&page, &flushed), Err(CursorError::Gone));
        assert!(StreamPos { ms: 1, seq: 9 } < StreamPos { ms: 2, seq: 0 });
    }
}
