//! The operator's web console, on ingest's admin port (`/console`), with
//! the same admin tokens as `POST /admin/rebuild`:
//!
//! - **overview**: epoch, live generation, readiness, freshness per entity
//!   against its bound, instances and heartbeats, per-partition position /
//!   end / lag and stalls, fold rate, dead letters per reason, recent events;
//! - **rebuild**: start one (after a confirmation), progress (done / target,
//!   rate, ETA, per partition), the swap and the clean-up;
//! - **dead letters**: the latest per reason (never a value: size and
//!   SHA-256), and a re-drive (dry run first, then a confirmation);
//! - **lookup**: an entity by id as query-api would serve it, values only
//!   within the signed-in token's own grant.
//!
//! Pages are rendered on the server and complete without JavaScript (they
//! reload every few seconds); a small embedded script updates their live
//! parts every two seconds instead. Every asset is in the binary.
//!
//! Sign-in: a form posts the token once; the console keeps a random session
//! id in an `HttpOnly`, `SameSite=Strict` cookie (the token is never stored,
//! only the caller's configured name and grants), and every form carries a
//! per-session CSRF token. A request with `Authorization: Bearer` works too
//! (scripts, tests). Sign-in, sign-out, rebuilds, re-drives and lookups are
//! written to the `audit` log target, refusals included.

mod html;
mod lookup;
mod pages;

use crate::admin::{AdminState, Caller, problem};
use crate::dead_letter_tools::{self as tools, Redriver, Selection};
use crate::progress::lock;
use crate::rebuild::RequestOutcome;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use foldcache_common::id::{EntityId, EntityName};
use foldcache_common::runtime::now_ms;
use html::{Nav, Page};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The session cookie.
const COOKIE: &str = "fc_console";
/// How long a session lasts.
const SESSION_MS: i64 = 12 * 3600 * 1000;
/// Letters a console redrive may select at once.
const MAX_SELECTED: usize = 1000;

/// Signed-in console sessions, by random id. Kept in memory: a restart of
/// ingest signs everybody out.
#[derive(Debug, Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, Session>>>);

#[derive(Debug, Clone)]
struct Session {
    caller: Caller,
    csrf: String,
    expires_ms: i64,
}

/// Who a request comes from.
#[derive(Debug)]
struct Auth {
    caller: Caller,
    /// The session's CSRF token (`None`: a bearer token, no session).
    csrf: Option<String>,
}

/// Why a request is not served.
enum Denied {
    /// Not signed in.
    SignIn,
    /// Refused (401 unknown token, 403 no admin scope).
    Refused(StatusCode, String),
}

fn random_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

impl Sessions {
    fn start(&self, caller: Caller) -> (String, String) {
        let (id, csrf) = (random_id(), random_id());
        let now = now_ms();
        let mut map = lock(&self.0);
        map.retain(|_, s| s.expires_ms > now);
        map.insert(
            id.clone(),
            Session {
                caller,
                csrf: csrf.clone(),
                expires_ms: now + SESSION_MS,
            },
        );
        (id, csrf)
    }

    fn get(&self, id: &str) -> Option<Session> {
        let mut map = lock(&self.0);
        match map.get(id) {
            Some(s) if s.expires_ms > now_ms() => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    fn end(&self, id: &str) {
        lock(&self.0).remove(id);
    }
}

fn audit_refused(action: &str, status: StatusCode, why: &str) {
    tracing::warn!(target: "audit", action, outcome = "refused", status = status.as_u16(), reason = %why, "admin action refused");
}

fn authenticate(s: &AdminState, headers: &HeaderMap) -> Result<Auth, Denied> {
    if headers.contains_key(header::AUTHORIZATION) {
        return match s.admins.authorize(headers) {
            Ok(caller) => Ok(Auth { caller, csrf: None }),
            Err((status, why)) => {
                audit_refused("console", status, &why);
                Err(Denied::Refused(status, why))
            }
        };
    }
    let session = cookie(headers)
        .and_then(|id| s.sessions.get(&id))
        .ok_or(Denied::SignIn)?;
    Ok(Auth {
        caller: session.caller,
        csrf: Some(session.csrf),
    })
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// A console answer: no caching, no framing, no foreign scripts.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

fn html_page(status: StatusCode, page: &Page<'_>) -> Response {
    secure(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            page.render(),
        )
            .into_response(),
    )
}

fn see_other(location: &str) -> Response {
    secure(
        (
            StatusCode::SEE_OTHER,
            [(header::LOCATION, location.to_owned())],
        )
            .into_response(),
    )
}

/// An error: an HTML page for browsers, problem+json for everyone else.
fn error(headers: &HeaderMap, status: StatusCode, detail: &str, who: Option<&Auth>) -> Response {
    if !wants_html(headers) {
        return secure(problem(status, detail));
    }
    let title = status.canonical_reason().unwrap_or("Error");
    let body = format!(
        "<p class=\"error\" role=\"alert\">{}</p>\n<p><a href=\"/console\">Back to the console</a></p>",
        html::esc(detail)
    );
    html_page(
        status,
        &Page {
            title,
            nav: Nav::None,
            who: who.map(|a| (a.caller.name.as_str(), a.csrf.as_deref())),
            live: false,
            body,
        },
    )
}

fn denied(headers: &HeaderMap, uri: &Uri, d: Denied) -> Response {
    match d {
        Denied::SignIn if wants_html(headers) => {
            let next = uri.path_and_query().map_or("/console", |p| p.as_str());
            see_other(&format!("/console/login?next={}", percent_encode(next)))
        }
        Denied::SignIn => secure(problem(
            StatusCode::UNAUTHORIZED,
            "sign in at /console/login, or send Authorization: Bearer <admin token>",
        )),
        Denied::Refused(status, why) => error(headers, status, &why, None),
    }
}

fn page(auth: &Auth, title: &str, nav: Nav, live: bool, body: String) -> Response {
    html_page(
        StatusCode::OK,
        &Page {
            title,
            nav,
            who: Some((auth.caller.name.as_str(), auth.csrf.as_deref())),
            live,
            body,
        },
    )
}

/// The console's routes, merged into the admin router.
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/", get(|| async { see_other("/console") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/rebuild", get(rebuild_page).post(start_rebuild))
        .route("/console/dead-letters", get(dead_letters_page))
        .route("/console/dead-letters/redrive", post(redrive))
        .route("/console/lookup", get(lookup_page))
        .route(
            "/console/assets/console.css",
            get(|| async { asset("text/css", include_str!("assets/console.css")) }),
        )
        .route(
            "/console/assets/console.js",
            get(|| async { asset("text/javascript", include_str!("assets/console.js")) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

// --- forms ------------------------------------------------------------------

/// `application/x-www-form-urlencoded` pairs, repeated names kept.
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut it = p.splitn(2, |b| *b == b'=');
            let k = percent_decode(it.next().unwrap_or_default());
            let v = percent_decode(it.next().unwrap_or_default());
            (k, v)
        })
        .collect()
}

fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                match std::str::from_utf8(&s[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A POST from a session must carry the session's CSRF token.
fn check_csrf(auth: &Auth, pairs: &[(String, String)]) -> Result<(), (StatusCode, String)> {
    match &auth.csrf {
        None => Ok(()),
        Some(expected)
            if field(pairs, "csrf").is_some_and(|g| subtle_eq(g.as_bytes(), expected.as_bytes())) =>
        {
            Ok(())
        }
        Some(_) => Err((
            StatusCode::FORBIDDEN,
            "the form is stale or not from this console (CSRF token missing or wrong): reload the page and try again".into(),
        )),
    }
}

/// Compares in time independent of where the inputs differ.
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Only paths inside the console are followed after sign-in.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/console") && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/console",
    }
}

// --- sign-in ----------------------------------------------------------------

async fn login_page(Query(q): Query<HashMap<String, String>>) -> Response {
    let next = safe_next(q.get("next").map(String::as_str));
    html_page(
        StatusCode::OK,
        &Page {
            title: "Sign in",
            nav: Nav::None,
            who: None,
            live: false,
            body: pages::login(next, None),
        },
    )
}

async fn login(State(s): State<AdminState>, body: Bytes) -> Response {
    let pairs = form_pairs(&body);
    let next = safe_next(field(&pairs, "next")).to_owned();
    let token = field(&pairs, "token").unwrap_or_default();
    match s.admins.check(token) {
        Ok(caller) => {
            tracing::info!(target: "audit", action = "console_sign_in", who = %caller.name, outcome = "signed_in", "admin action");
            let (id, _) = s.sessions.start(caller);
            let mut r = see_other(&next);
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
                SESSION_MS / 1000
            )) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err((status, why)) => {
            audit_refused("console_sign_in", status, &why);
            html_page(
                status,
                &Page {
                    title: "Sign in",
                    nav: Nav::None,
                    who: None,
                    live: false,
                    body: pages::login(&next, Some(&format!("Not signed in: {why}."))),
                },
            )
        }
    }
}

async fn logout(
    State(s): State<AdminState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let auth = match authenticate(&s, &headers) {
        Ok(a) => a,
        Err(d) => return denied(&headers, &uri, d),
    };
    if let Err((status, why)) = check_csrf(&auth, &form_pairs(&body)) {
        return error(&headers, status, &why, Some(&auth));
    }
    if let Some(id) = cookie(&headers) {
        s.sessions.end(&id);
    }
    tracing::info!(target: "audit", action = "console_sign_out", who = %auth.caller.name, outcome = "signed_out", "admin action");
    let mut r = see_other("/console/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "fc_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

// --- pages ------------------------------------------------------------------

async fn overview(State(s): State<AdminState>, headers: HeaderMap, uri: Uri) -> Response {
    let auth = match authenticate(&s, &headers) {
        Ok(a) => a,
        Err(d) => return denied(&headers, &uri, d),
    };
    let snapshot = lock(&s.cluster).clone();
    let dead = lock(&s.dead_letters).clone();
    let mut rows: Vec<pages::PartitionRow> = Vec::new();
    for (generation, statuses) in lock(&s.statuses).iter() {
        for ((topic, partition), st) in lock(statuses).iter() {
            rows.push(pages::PartitionRow {
                generation: *generation,
                topic: topic.clone(),
                partition: *partition,
                position: Some(st.position),
                end: st.end,
                caught_up: Some(st.caught_up),
                stalled: st.stalled.clone(),
                here: true,
            });
        }
    }
    // Partitions other instances fold: their position from Redis.
    if let Some(v) = &snapshot.view {
        for (field, offset) in &v.offsets {
            let Some((topic, p)) = field.rsplit_once('/') else {
                continue;
            };
            let Ok(partition) = p.parse::<i32>() else {
                continue;
            };
            let mine = rows.iter_mut().find(|r| {
                r.generation == v.live_gen && r.topic == topic && r.partition == partition
            });
            match mine {
                Some(r) => r.position = Some(r.position.unwrap_or(0).max(*offset)),
                None => rows.push(pages::PartitionRow {
                    generation: v.live_gen,
                    topic: topic.to_owned(),
                    partition,
                    position: Some(*offset),
                    end: None,
                    caught_up: None,
                    stalled: None,
                    here: false,
                }),
            }
        }
    }
    rows.sort();
    let body = pages::overview(&pages::Overview {
        snapshot: &snapshot,
        partitions: rows,
        dead: &dead,
        dead_letter_topic: &s.config.kafka.dead_letter_topic,
        bounds: s
            .config
            .entities
            .iter()
            .map(|(n, e)| (n.clone(), e.freshness_secs))
            .collect(),
    });
    page(&auth, "Overview", Nav::Overview, true, body)
}

async fn rebuild_page(
    State(s): State<AdminState>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let auth = match authenticate(&s, &headers) {
        Ok(a) => a,
        Err(d) => return denied(&headers, &uri, d),
    };
    let progress = async {
        let mut con = s.redis.get_multiplexed_async_connection().await?;
        s.rebuilds.progress(&mut con).await
    }
    .await
    .ok();
    let snapshot = lock(&s.cluster).clone();
    let notice = match (q.get("outcome").map(String::as_str), q.get("generation")) {
        (Some("started"), Some(g)) if g.parse::<u64>().is_ok() => Some(format!(
            "Rebuild of generation {g} started. This page follows it to the swap."
        )),
        (Some("already_running"), Some(g)) if g.parse::<u64>().is_ok() => Some(format!(
            "A rebuild of generation {g} is already running: only one runs at a time."
        )),
        (Some("not_ready"), _) => Some(
            "The cache is not ready: ingest is already replaying every topic from offset zero."
                .into(),
        ),
        _ => None,
    };
    let body = pages::rebuild(
        progress.as_ref(),
        &snapshot,
        notice.as_deref(),
        auth.csrf.as_deref(),
    );
    page(&auth, "Rebuild", Nav::Rebuild, true, body)
}

async fn start_rebuild(
    State(s): State<AdminState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let auth = match authenticate(&s, &headers) {
        Ok(a) => a,
        Err(d) => return denied(&headers, &uri, d),
    };
    let pairs = form_pairs(&body);
    if let Err((status, why)) = check_csrf(&auth, &pairs) {
        audit_refused("rebuild", status, &why);
        return error(&headers, status, &why, Some(&auth));
    }
    let live = lock(&s.cluster).view.as_ref().map_or(0, |v| v.live_gen);
    if field(&pairs, "confirm") != Some("yes") {
        return page(
            &auth,
            "Start a rebuild?",
            Nav::Rebuild,
            false,
            pages::confirm_rebuild(live, auth.csrf.as_deref()),
        );
    }
    let who = &auth.caller.name;
    let outcome = async {
        let mut con = s.redis.get_multiplexed_async_connection().await?;
        s.rebuilds.request(&mut con, now_ms()).await
    }
    .await;
    match outcome {
        Ok(o) => {
            let (label, generation) = match o {
                RequestOutcome::Started { generation } => ("started", generation),
                RequestOutcome::AlreadyRunning { generation, .. } => {
                    ("already_running", generation)
                }
                RequestOutcome::NotReady => ("not_ready", 0),
                RequestOutcome::NoCache => ("no_cache", 0),
            };
            tracing::info!(target: "audit", action = "rebuild", %who, via = "console", outcome = label, "admin action");
            if label == "no_cache" {
                return error(
                    &headers,
                    StatusCode::CONFLICT,
                    "this Redis holds no foldcache cache",
                    Some(&auth),
                );
            }
            see_other(&format!(
                "/console/rebuild?outcome={label}&generation={generation}"
            ))
        }
        Err(e) => {
            tracing::error!(target: "audit", action = "rebuild", %who, via = "console", outcome = "error", error = %e, "admin action failed");
            error(
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis did not answer",
                Some(&auth),
            )
        }
    }
}

async fn dead_letters_page(State(s): State<AdminState>, headers: HeaderMap, uri: Uri) -> Response {
    let auth = match authenticate(&s, &headers) {
        Ok(a) => a,
        Err(d) => return denied(&headers, &uri, d),
    };
    let dead = lock(&s.dead_letters).clone();
    let body = pages::dead_letters(
        &dead,
        &s.config.kafka.dead_letter_topic,
        auth.csrf.as_deref(),
    );
    page(&auth, "Dead letters", Nav::DeadLetters, true, body)
}

async fn redrive(
    State(s): State<AdminState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let auth = match authenticate(&s, &headers) {
        Ok(a) => a,
        Err(d) => return denied(&headers, &uri, d),
    };
    let pairs = form_pairs(&body);
    if let Err((status, why)) = check_csrf(&auth, &pairs) {
        audit_refused("redrive", status, &why);
        return error(&headers, status, &why, Some(&auth));
    }
    let mut positions = Vec::new();
    for (k, v) in &pairs {
        if k == "letter" {
            match tools::parse_position(v) {
                Ok(p) => positions.push(p),
                Err(why) => {
                    return error(&headers, StatusCode::BAD_REQUEST, &why, Some(&auth));
                }
            }
        }
    }
    if positions.is_empty() {
        return error(
            &headers,
            StatusCode::BAD_REQUEST,
            "select at least one dead letter to re-drive",
            Some(&auth),
        );
    }
    if positions.len() > MAX_SELECTED {
        return error(
            &headers,
            StatusCode::BAD_REQUEST,
            &format!("at most {MAX_SELECTED} dead letters at once"),
            Some(&auth),
        );
    }
    let to = field(&pairs, "to")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    if let Some(t) = &to
        && (t == &s.config.kafka.dead_letter_topic
            || t.len() > 249
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    {
        return error(
            &headers,
            StatusCode::BAD_REQUEST,
            "the topic must be a legal Kafka topic name and not the dead-letter topic",
            Some(&auth),
        );
    }
    let dry_run = field(&pairs, "confirm") != Some("yes");
    let _one_at_a_time = s.redrive_lock.lock().await;
    let selection = Selection {
        positions,
        ..Selection::default()
    };
    let results = async {
        let raws = tools::select(&s.config, &selection).await?;
        let mut redriver = Redriver::new(&s.config, &s.redis).await?;
        redriver.redrive(&raws, to.as_deref(), dry_run).await
    }
    .await;
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(target: "audit", action = "redrive", who = %auth.caller.name, via = "console", outcome = "error", error = %e, "admin action failed");
            return error(
                &headers,
                StatusCode::SERVICE_UNAVAILABLE,
                "the dead-letter topic could not be read, or Redis or the broker did not answer",
                Some(&auth),
            );
        }
    };
    crate::dead_letter_cli::audit(&format!("console:{}", auth.caller.name), &results, dry_run);
    let title = if dry_run {
        "Re-drive: check"
    } else {
        "Re-drive: done"
    };
    page(
        &auth,
        title,
        Nav::DeadLetters,
        false,
        pages::redrive_results(&results, dry_run, to.as_deref(), auth.csrf.as_deref()),
    )
}

async fn lookup_page(
    State(s): State<AdminState>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let auth = match authenticate(&s, &headers) {
        Ok(a) => a,
        Err(d) => return denied(&headers, &uri, d),
    };
    let entities: Vec<String> = s.config.entities.keys().cloned().collect();
    let (Some(entity), Some(id)) = (q.get("entity"), q.get("id")) else {
        return page(
            &auth,
            "Lookup",
            Nav::Lookup,
            false,
            pages::lookup(&entities, None, None, None),
        );
    };
    let asked = Some((entity.as_str(), id.as_str()));
    let bad = |why: String| {
        let mut r = page(
            &auth,
            "Lookup",
            Nav::Lookup,
            false,
            pages::lookup(&entities, asked, None, Some(&why)),
        );
        if wants_html(&headers) {
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        } else {
            secure(problem(StatusCode::BAD_REQUEST, &why))
        }
    };
    let name = match EntityName::parse(entity) {
        Ok(n) if s.config.entity(&n).is_some() => n,
        _ => return bad(format!("{entity:?} is not a configured entity")),
    };
    let id = match EntityId::parse(id) {
        Ok(i) => i,
        Err(e) => return bad(format!("not a valid id: {e}")),
    };
    let found = async {
        let mut con = s.redis.get_multiplexed_async_connection().await?;
        lookup::lookup(&mut con, &s.config, &auth.caller, &name, &id).await
    }
    .await;
    match found {
        Ok(f) => {
            tracing::info!(target: "audit", action = "lookup", who = %auth.caller.name,
                entity = %name, id = %id, status = f.status,
                values_shown = !matches!(f.visible, lookup::Visible::Hidden(_)), "admin action");
            page(
                &auth,
                "Lookup",
                Nav::Lookup,
                false,
                pages::lookup(&entities, asked, Some(&f), None),
            )
        }
        Err(_) => error(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            "Redis did not answer",
            Some(&auth),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_repeated_fields_and_escapes() {
        let p = form_pairs(b"letter=0%3A5&letter=0%3A6&to=&token=a+b%2Fc%&x");
        assert_eq!(
            p,
            [
                ("letter".into(), "0:5".into()),
                ("letter".into(), "0:6".into()),
                ("to".into(), String::new()),
                ("token".into(), "a b/c%".into()),
                ("x".into(), String::new()),
            ]
        );
    }

    #[test]
    fn only_console_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/console/rebuild")), "/console/rebuild");
        assert_eq!(safe_next(Some("https://evil.example/")), "/console");
        assert_eq!(safe_next(Some("//evil.example/console")), "/console");
        assert_eq!(safe_next(None), "/console");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; fc_console=xyz; b=2"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("xyz"));
    }
}
