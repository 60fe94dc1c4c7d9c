//! Callers and what they may read.
//!
//! A request carries `Authorization: Bearer <token>`; the token's SHA-256
//! is looked up among `[[auth.tokens]]` (only hashes are configured). The
//! token's grants name, per entity, the view it reads; an entity it has no
//! grant for answers 403. Without a token, a request gets the views of
//! `auth.anonymous`, else 401. With no tokens configured at all (open
//! mode), everyone reads every entity's `full` view.
//!
//! Views are field projections declared per entity. A view's ETag is
//! derived from the stored full-state ETag and the view's definition, so two
//! views of one entity never share a validator, and the validator changes
//! whenever the stored state does (see [`View::etag`]).

use crate::error::ApiError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use foldcache_common::config::{Config, FULL_VIEW};
use foldcache_common::secret::{bearer_token, parse_token_hash, token_hash};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;

/// A field projection of one entity.
#[derive(Debug)]
pub struct View {
    /// Its name (`full` for every field).
    pub name: String,
    /// The fields it exposes; `None`: every field.
    fields: Option<BTreeSet<String>>,
    /// SHA-256 of the view's definition, mixed into its ETags.
    salt: [u8; 32],
}

impl View {
    /// The view `name` of `entity` showing `fields` (`None`: every field).
    pub fn new(entity: &str, name: &str, fields: Option<BTreeSet<String>>) -> Self {
        let mut h = Sha256::new();
        h.update(b"foldcache-view\0");
        h.update(entity.as_bytes());
        h.update(b"\0");
        h.update(name.as_bytes());
        for f in fields.iter().flatten() {
            h.update(b"\0");
            h.update(f.as_bytes());
        }
        Self {
            name: name.to_owned(),
            fields,
            salt: h.finalize().into(),
        }
    }

    /// Whether the view shows `field`.
    pub fn shows(&self, field: &str) -> bool {
        self.fields.as_ref().is_none_or(|f| f.contains(field))
    }

    /// Whether this is the full view (the stored body as it is).
    pub fn is_full(&self) -> bool {
        self.fields.is_none()
    }

    /// The view's strong validator, given the stored full state's. Equal
    /// stored ETags mean equal states, hence byte-equal projections; the
    /// view's own definition is mixed in, so no two views (nor a view after
    /// its definition changed) share a validator.
    pub fn etag(&self, stored: &str) -> String {
        if self.is_full() {
            return stored.to_owned();
        }
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(stored.as_bytes());
        URL_SAFE_NO_PAD.encode(h.finalize())
    }
}

/// Who is asking, and what they may read.
#[derive(Debug)]
pub struct Caller {
    /// The token's configured name, or `anonymous`.
    pub name: String,
    /// Whether a token authenticated the request.
    pub authenticated: bool,
    /// Entity -> view.
    grants: HashMap<String, Arc<View>>,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Caller {
    /// The view of `entity` this caller reads: 403 for a token without a
    /// grant, 401 for an anonymous caller (a token may grant it).
    pub fn view(&self, entity: &str) -> Result<&Arc<View>, ApiError> {
        self.grants.get(entity).ok_or(if self.authenticated {
            ApiError::Forbidden
        } else {
            ApiError::Unauthorized { invalid: false }
        })
    }

    /// Whether the caller's requests are counted against a rate limit.
    pub fn rate_limited(&self) -> bool {
        self.limiter.is_some()
    }
}

/// The request's caller, as an extractor (reads `Authorization` in place,
/// charges the rate limit; rejects with 401/429).
#[derive(Debug)]
pub struct Authenticated(pub Arc<Caller>);

impl axum::extract::FromRequestParts<crate::AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        app: &crate::AppState,
    ) -> Result<Self, ApiError> {
        app.auth.authenticate(&parts.headers).map(Self)
    }
}

/// The configured callers.
#[derive(Debug)]
pub struct Auth {
    by_hash: HashMap<[u8; 32], Arc<Caller>>,
    anonymous: Arc<Caller>,
    /// Token holders' responses may be stored by shared caches (keyed on
    /// `Authorization`).
    pub shared_cache: bool,
    /// Whether any token is configured (else open mode).
    pub enabled: bool,
}

impl Auth {
    /// From validated config.
    pub fn new(config: &Config) -> Self {
        let views: HashMap<(&str, &str), Arc<View>> = config
            .entities
            .iter()
            .flat_map(|(entity, e)| {
                let full = (
                    (entity.as_str(), FULL_VIEW),
                    Arc::new(View::new(entity, FULL_VIEW, None)),
                );
                std::iter::once(full).chain(e.views.iter().map(move |(name, fields)| {
                    (
                        (entity.as_str(), name.as_str()),
                        Arc::new(View::new(
                            entity,
                            name,
                            (!fields.iter().any(|f| f == "*"))
                                .then(|| fields.iter().cloned().collect()),
                        )),
                    )
                }))
            })
            .collect();
        let grants = |g: &mut dyn Iterator<Item = (&String, &String)>| {
            g.filter_map(|(entity, view)| {
                views
                    .get(&(entity.as_str(), view.as_str()))
                    .map(|v| (entity.clone(), v.clone()))
            })
            .collect::<HashMap<_, _>>()
        };
        let enabled = !config.auth.tokens.is_empty();
        let anonymous = Arc::new(Caller {
            name: "anonymous".into(),
            authenticated: false,
            grants: if enabled {
                grants(&mut config.auth.anonymous.iter())
            } else {
                let full = FULL_VIEW.to_owned();
                grants(&mut config.entities.keys().map(|e| (e, &full)))
            },
            limiter: None,
        });
        let by_hash = config
            .auth
            .tokens
            .iter()
            .filter_map(|t| {
                let hash = parse_token_hash(&t.sha256)?;
                let rate = t.rate_per_sec.unwrap_or(config.auth.rate_per_sec);
                let limiter = NonZeroU32::new(rate).map(|r| {
                    let burst = NonZeroU32::new(t.burst.unwrap_or(config.auth.burst)).unwrap_or(r);
                    DefaultDirectRateLimiter::direct(Quota::per_second(r).allow_burst(burst))
                });
                Some((
                    hash,
                    Arc::new(Caller {
                        name: t.name.clone(),
                        authenticated: true,
                        grants: grants(&mut t.grants.iter()),
                        limiter,
                    }),
                ))
            })
            .collect();
        Self {
            by_hash,
            anonymous,
            shared_cache: config.auth.shared_cache_keys_on_authorization,
            enabled,
        }
    }

    /// Identifies the caller of a request and charges its rate limit.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Caller>, ApiError> {
        let caller = self.identify(headers)?;
        if let Some(limiter) = &caller.limiter
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!("foldcache_http_rate_limited_total", "caller" => caller.name.clone())
                .increment(1);
            return Err(ApiError::TooManyRequests {
                retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            });
        }
        Ok(caller.clone())
    }

    /// The caller of a request (401 for a malformed or unknown token),
    /// without charging its rate limit.
    pub fn identify(&self, headers: &HeaderMap) -> Result<&Arc<Caller>, ApiError> {
        // Open mode ignores tokens: there is nothing to check them against.
        let Some(value) = headers
            .get(http::header::AUTHORIZATION)
            .filter(|_| self.enabled)
        else {
            return Ok(&self.anonymous);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(bearer_token)
            .ok_or(ApiError::Unauthorized { invalid: true })?;
        self.by_hash
            .get(&token_hash(token))
            .ok_or(ApiError::Unauthorized { invalid: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_have_distinct_etags_and_full_keeps_the_stored_one() {
        let full = View::new("employees", FULL_VIEW, None);
        let dir = View::new(
            "employees",
            "directory",
            Some(["id".to_owned(), "name".to_owned()].into()),
        );
        let other = View::new("employees", "directory", Some(["id".to_owned()].into()));
        assert_eq!(full.etag("abc"), "abc");
        assert_ne!(dir.etag("abc"), "abc");
        assert_ne!(dir.etag("abc"), other.etag("abc"));
        assert_ne!(dir.etag("abc"), dir.etag("abd"));
        assert_eq!(dir.etag("abc"), dir.etag("abc"));
    }
}
