//! `Prefer: wait=N` (RFC 7240 §4.3): how long a client is willing to wait
//! for an answer. query-api honours it on conditional single-entity reads
//! (answer as soon as the entity changes, else 304) and on change pages
//! (answer as soon as a change arrives, else the empty page), capped at
//! `http.max_wait_secs`, and says so with `Preference-Applied: wait=N`.

use http::HeaderMap;
use std::time::Duration;

/// The `wait` preference of a request, in seconds, if any (the first valid
/// one; a malformed preference is ignored, as RFC 7240 requires).
pub fn wait_secs(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            // A preference is `token [= value] *( ";" parameter )`.
            let first = pref.split(';').next()?.trim();
            let (name, value) = first.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            value.trim().trim_matches('"').parse::<u64>().ok()
        })
        .next()
}

/// The wait to apply: the preference capped at `max_secs`.
pub fn applied(headers: &HeaderMap, max_secs: u64) -> Option<Duration> {
    wait_secs(headers).map(|s| Duration::from_secs(s.min(max_secs)))
}

/// The `Preference-Applied` value for a wait of `d`.
pub fn preference_applied(d: Duration) -> http::HeaderValue {
    // Digits only: always a valid header value.
    http::HeaderValue::try_from(format!("wait={}", d.as_secs()))
        .unwrap_or(http::HeaderValue::from_static("wait"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(values: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in values {
            m.append("prefer", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn parses_wait_among_other_preferences() {
        assert_eq!(wait_secs(&h(&["wait=10"])), Some(10));
        assert_eq!(wait_secs(&h(&["respond-async, Wait = 5"])), Some(5));
        assert_eq!(wait_secs(&h(&["handling=lenient", "wait=\"7\""])), Some(7));
        assert_eq!(wait_secs(&h(&["wait=soon"])), None);
        assert_eq!(wait_secs(&h(&["return=minimal"])), None);
        assert_eq!(wait_secs(&h(&[])), None);
        assert_eq!(
            applied(&h(&["wait=600"]), 60),
            Some(Duration::from_secs(60))
        );
        assert_eq!(preference_applied(Duration::from_secs(3)), "wait=3");
    }
}
