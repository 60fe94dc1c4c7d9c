//! `Cache-Control` values per entity, built once from config.

use foldcache_common::config::{CacheControlConfig, Visibility};
use http::HeaderValue;

/// Renders an entity's `Cache-Control` for 200 and 304 responses.
pub fn cache_control(c: &CacheControlConfig) -> HeaderValue {
    let mut parts: Vec<String> = Vec::new();
    match c.visibility {
        Visibility::NoStore => return HeaderValue::from_static("no-store"),
        Visibility::Private => parts.push("private".into()),
        Visibility::Public => parts.push("public".into()),
    }
    parts.push(format!("max-age={}", c.max_age_secs));
    // An optional directive set to 0 is left out (TOML has no null).
    let set = |v: Option<u64>| v.filter(|s| *s > 0);
    if c.visibility == Visibility::Public
        && let Some(s) = set(c.s_maxage_secs)
    {
        parts.push(format!("s-maxage={s}"));
    }
    if let Some(s) = set(c.stale_while_revalidate_secs) {
        parts.push(format!("stale-while-revalidate={s}"));
    }
    if let Some(s) = set(c.stale_if_error_secs) {
        parts.push(format!("stale-if-error={s}"));
    }
    // Directives are ASCII built from numbers and fixed words.
    HeaderValue::from_str(&parts.join(", ")).unwrap_or(HeaderValue::from_static("no-store"))
}

/// The same directives for a token holder's response: `private` (a
/// `no-store` entity stays `no-store`).
pub fn private(c: &CacheControlConfig) -> CacheControlConfig {
    let mut c = c.clone();
    if c.visibility == Visibility::Public {
        c.visibility = Visibility::Private;
    }
    c
}

/// `Cache-Control` of a 404 for an entity configured with `c`: the
/// entity's audience (`public`, `private` or `no-store`, as [`private`] has
/// already applied for a token holder) with the negative-cache lifetime
/// `max_age`, and no stale directives (a 404 is not worth serving stale).
pub fn not_found(c: &CacheControlConfig, max_age: u64) -> HeaderValue {
    cache_control(&CacheControlConfig {
        visibility: c.visibility,
        max_age_secs: max_age,
        s_maxage_secs: None,
        stale_while_revalidate_secs: None,
        stale_if_error_secs: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Visibility) -> CacheControlConfig {
        CacheControlConfig {
            visibility: v,
            max_age_secs: 60,
            s_maxage_secs: Some(5),
            stale_while_revalidate_secs: Some(30),
            stale_if_error_secs: Some(86400),
        }
    }

    #[test]
    fn public_private_and_no_store() {
        assert_eq!(
            cache_control(&cfg(Visibility::Public)),
            "public, max-age=60, s-maxage=5, stale-while-revalidate=30, stale-if-error=86400"
        );
        // s-maxage is meaningless for private responses.
        assert_eq!(
            cache_control(&cfg(Visibility::Private)),
            "private, max-age=60, stale-while-revalidate=30, stale-if-error=86400"
        );
        assert_eq!(cache_control(&cfg(Visibility::NoStore)), "no-store");
    }

    #[test]
    fn a_404_keeps_the_audience_and_only_its_own_lifetime() {
        let public = cfg(Visibility::Public);
        assert_eq!(not_found(&public, 5), "public, max-age=5");
        assert_eq!(not_found(&private(&public), 5), "private, max-age=5");
        assert_eq!(not_found(&cfg(Visibility::NoStore), 5), "no-store");
    }
}
