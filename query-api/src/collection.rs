//! `GET /v1/{entity}`: the collection, paged in a stable order, optionally
//! filtered by one secondary index; with `?id=A&id=B`, the batch lookup.
//!
//! - Order: ids by their bytes (`E000001` < `E000002`). A page holds the
//!   `limit` ids after the cursor's; ids created meanwhile appear on a later
//!   page if they sort after the cursor, ids deleted meanwhile are skipped:
//!   a pass sees every id that existed throughout it exactly once.
//! - `next` (in the body and as `Link: <...>; rel="next"`) is the next
//!   page's URL, or `null` on the last page. The cursor is opaque and tied
//!   to the generation: after a rebuild's swap it answers 410 (restart the
//!   pass).
//! - Each page is read atomically (one script: the ids, then each hash) and
//!   has a strong ETag, the SHA-256 of its body; 304 on revalidation;
//!   `Cache-Control` and `Vary` as the entity's single lookups, cache tags
//!   `entity entity/id...` for every id of the page.
//! - A filter `?{index}={value}` walks the index's ids instead, in the same
//!   order; the caller's view must show the indexed field (else the filter
//!   does not exist for it: 400), so nobody learns values of fields they may
//!   not read.

use crate::auth::{Authenticated, Caller, View};
use crate::conditional::Validators;
use crate::cursor::{Cursor, CursorError};
use crate::error::ApiError;
use crate::routes::{entity_policy, get_batch, representation, truncate, unavailable};
use crate::store::{PageSource, decode_hash};
use crate::{AppState, EntityPolicy};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use foldcache_common::id::EntityName;
use foldcache_common::state::etag_of;
use http::{HeaderValue, header};

/// `GET|HEAD /v1/{entity}`: a collection page, a filtered page, or (with
/// `id` parameters) the batch lookup.
pub async fn get_collection(
    State(app): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(entity): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (name, policy) = entity_policy(&app, &entity)?;
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    if params.iter().any(|(k, _)| k == "id") {
        return get_batch(&app, &caller, name, policy, &params).await;
    }
    let view = caller.view(name.as_str())?;
    let req = PageRequest::parse(&app, policy, view, &params)?;
    page(&app, &caller, &name, policy, view, req).await
}

/// A parsed page request.
#[derive(Debug)]
struct PageRequest {
    limit: usize,
    /// Whether the request named its limit (kept in `next`).
    explicit_limit: bool,
    cursor: Option<String>,
    filter: Option<(String, String)>,
}

impl PageRequest {
    fn parse(
        app: &AppState,
        policy: &EntityPolicy,
        view: &View,
        params: &[(String, String)],
    ) -> Result<Self, ApiError> {
        let mut req = PageRequest {
            limit: app.pages.default_limit,
            explicit_limit: false,
            cursor: None,
            filter: None,
        };
        for (k, v) in params {
            match k.as_str() {
                "limit" if !req.explicit_limit => {
                    req.limit = parse_limit(v, app.pages.max_limit)?;
                    req.explicit_limit = true;
                }
                "cursor" if req.cursor.is_none() => req.cursor = Some(v.clone()),
                "limit" | "cursor" => {
                    return Err(ApiError::BadRequest(format!("{k} is given twice")));
                }
                other => {
                    // An index the caller's view can see, or no such filter.
                    let known = policy
                        .indexes
                        .iter()
                        .any(|i| i.name == other && view.shows(i.path.top()));
                    if !known {
                        return Err(ApiError::BadRequest(format!(
                            "unknown query parameter {:?}: a collection takes limit, cursor \
                             and one filter by an index of this entity type",
                            truncate(other)
                        )));
                    }
                    if req.filter.is_some() {
                        return Err(ApiError::BadRequest(
                            "one filter per request; intersect on the client".into(),
                        ));
                    }
                    req.filter = Some((other.to_owned(), v.clone()));
                }
            }
        }
        Ok(req)
    }
}

/// `limit`: a decimal from 1 to `max`.
pub(crate) fn parse_limit(v: &str, max: usize) -> Result<usize, ApiError> {
    match v.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be a whole number from 1 to {max}"
        ))),
    }
}

pub(crate) fn cursor_error(e: CursorError, resync: String, why: &'static str) -> ApiError {
    match e {
        CursorError::Malformed => ApiError::BadCursor,
        CursorError::Gone => ApiError::CursorGone { why, resync },
    }
}

async fn page(
    app: &AppState,
    caller: &Caller,
    name: &EntityName,
    policy: &EntityPolicy,
    view: &View,
    req: PageRequest,
) -> Result<Response, ApiError> {
    let state = app.store.view();
    if !state.serves(policy.max_staleness_ms) {
        return Err(ApiError::NotReady {
            retry_after: app.retry_after,
        });
    }
    let scope = state.scope();
    let after = req
        .cursor
        .as_deref()
        .map(|c| Cursor::page_after(c, &scope))
        .transpose()
        .map_err(|e| {
            cursor_error(
                e,
                format!("/v1/{name}"),
                "the cursor belongs to a generation that was rebuilt away or to a cache that was \
                 replaced",
            )
        })?;
    let source = match &req.filter {
        None => PageSource::All,
        Some((index, value)) => PageSource::Index {
            index: index.clone(),
            value: value.clone(),
            unique: policy.indexes.iter().any(|i| i.name == *index && i.unique),
        },
    };
    let page = app
        .store
        .page(scope.generation, name, &source, after.as_ref(), req.limit)
        .await
        .map_err(|e| unavailable(app, name, &e))?;
    // An empty page, or one that lost hashes, may have raced the removal
    // of a generation swapped away, or a flush: confirm before saying
    // "that was all" (as a single lookup does before a 404).
    if (page.items.is_empty() || page.missing > 0)
        && !app
            .store
            .still_serves(scope.generation, policy.max_staleness_ms)
            .await
            .map_err(|e| unavailable(app, name, &e))?
    {
        return Err(ApiError::NotReady {
            retry_after: app.retry_after,
        });
    }
    let next = page.more_after.as_ref().map(|last| {
        let cursor = Cursor::Page {
            scope: scope.clone(),
            after: last.clone(),
        }
        .encode();
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some((k, v)) = &req.filter {
            q.append_pair(k, v);
        }
        if req.explicit_limit {
            q.append_pair("limit", &req.limit.to_string());
        }
        q.append_pair("cursor", &cursor);
        format!("/v1/{name}?{}", q.finish())
    });
    let mut ids = Vec::with_capacity(page.items.len());
    let mut body = Vec::with_capacity(page.items.len() * 512 + 64);
    body.extend_from_slice(b"{\"items\":[");
    for (id, hash) in &page.items {
        let Some(e) = decode_hash(hash, view) else {
            continue;
        };
        if !ids.is_empty() {
            body.push(b',');
        }
        // Ids and ETags (base64url) need no JSON escaping.
        body.extend_from_slice(b"{\"etag\":\"\\\"");
        body.extend_from_slice(e.validators.etag.as_bytes());
        body.extend_from_slice(b"\\\"\",\"id\":\"");
        body.extend_from_slice(id.as_str().as_bytes());
        body.extend_from_slice(b"\",\"state\":");
        body.extend_from_slice(&e.body);
        body.push(b'}');
        ids.push(id.clone());
    }
    body.extend_from_slice(b"],\"next\":");
    match &next {
        Some(url) => {
            body.extend_from_slice(
                serde_json::to_string(url)
                    .unwrap_or_else(|_| "null".into())
                    .as_bytes(),
            );
        }
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    let etag = etag_of(&body);
    let tags = app.surrogate_keys(name, &ids);
    let mut res = representation(
        app,
        policy,
        caller,
        body.into(),
        Validators::new(etag, None),
        tags,
    );
    if let Some(url) = next
        && let Ok(link) = HeaderValue::try_from(format!("<{url}>; rel=\"next\""))
    {
        res.headers_mut().insert(header::LINK, link);
    }
    Ok(res)
}
