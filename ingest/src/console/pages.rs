//! The console's page bodies, rendered from plain data. Semantic HTML:
//! headed sections, tables with captions and header scopes, labelled form
//! controls, a `role="status"` summary that screen readers announce when it
//! changes. No value of an entity appears here unless [`super::lookup`] put
//! it in [`super::lookup::Found::values`].

use super::html::{csrf_field, esc, num, secs};
use super::lookup::{Found, Visible};
use crate::cluster::Snapshot;
use crate::dead_letter_tools::{Letter, Outcome, Redrive, Summary, format_utc_ms};
use crate::rebuild::BuildProgress;
use std::fmt::Write as _;

/// One partition row of the overview.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionRow {
    /// Generation consumed.
    pub generation: u64,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset to fold.
    pub position: Option<i64>,
    /// Last fetch-reported end (only for this instance's partitions).
    pub end: Option<i64>,
    /// Reached its end once.
    pub caught_up: Option<bool>,
    /// Why it cannot progress.
    pub stalled: Option<String>,
    /// Consumed by this instance.
    pub here: bool,
}

/// Everything the overview shows.
#[derive(Debug)]
pub struct Overview<'a> {
    /// The deployment.
    pub snapshot: &'a Snapshot,
    /// Per partition.
    pub partitions: Vec<PartitionRow>,
    /// The dead-letter topic.
    pub dead: &'a Summary,
    /// Its name.
    pub dead_letter_topic: &'a str,
    /// Entity -> freshness bound, seconds.
    pub bounds: Vec<(String, u64)>,
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The overview's body.
pub fn overview(o: &Overview<'_>) -> String {
    let mut h = String::new();
    let stalled = o.partitions.iter().filter(|p| p.stalled.is_some()).count();
    let view = o.snapshot.view.as_ref();
    let summary = match view {
        None => format!(
            "<span class=\"bad\">Redis state unknown</span>: {}",
            esc(o.snapshot.error.as_deref().unwrap_or("not read yet"))
        ),
        Some(v) => format!(
            "{} · live generation {} · {} stalled partition{} · {} dead letter{}{}",
            if v.ready {
                "<span class=\"ok\">Ready</span>"
            } else {
                "<span class=\"bad\">Not ready</span>"
            },
            v.live_gen,
            stalled,
            if stalled == 1 { "" } else { "s" },
            o.dead.total,
            if o.dead.total == 1 { "" } else { "s" },
            v.build
                .map(|(g, _)| format!(" · rebuilding generation {g}"))
                .unwrap_or_default()
        ),
    };
    let _ = writeln!(
        h,
        "<p id=\"summary\" class=\"summary\" role=\"status\" data-live>{summary}</p>"
    );

    // Cache.
    h.push_str("<section aria-labelledby=\"h-cache\" id=\"cache\" data-live>\n<h2 id=\"h-cache\">Cache</h2>\n");
    if let Some(v) = view {
        h.push_str("<dl class=\"facts\">");
        let mut fact = |k: &str, v: String| {
            let _ = write!(h, "<dt>{k}</dt><dd>{v}</dd>");
        };
        fact(
            "Epoch",
            v.epoch.as_deref().map_or_else(
                || "<span class=\"bad\">none: Redis holds no cache</span>".into(),
                |e| format!("<code>{}</code>", esc(e)),
            ),
        );
        fact("Live generation", v.live_gen.to_string());
        fact(
            "Ready",
            if v.ready {
                "<span class=\"ok\">yes</span>".into()
            } else {
                "<span class=\"bad\">no</span>: lookups answer 503 until every partition has caught up".into()
            },
        );
        fact(
            "Rebuild",
            v.build.map_or_else(
                || "none running".into(),
                |(g, at)| {
                    format!(
                        "building generation {g} since {} (<a href=\"/console/rebuild\">progress</a>)",
                        esc(&format_utc_ms(at))
                    )
                },
            ),
        );
        if let Some((g, at)) = v.retired {
            fact(
                "Retired generation",
                format!("{g}, removed from {}", esc(&format_utc_ms(at))),
            );
        }
        fact(
            "Fold rate",
            o.snapshot
                .fold_rate
                .map_or_else(|| "measuring…".into(), |r| format!("{:.0} records/s", r)),
        );
        fact("Records folded", num(v.folded()));
        h.push_str("</dl>\n");
        h.push_str("<table><caption>Freshness per entity: past its bound, lookups of the entity answer 503</caption>\n<thead><tr><th scope=\"col\">Entity</th><th scope=\"col\" class=\"n\">Bound</th><th scope=\"col\" class=\"n\">Last confirmed fresh</th><th scope=\"col\" class=\"n\">Bound used</th><th scope=\"col\">State</th></tr></thead><tbody>\n");
        let stale = v.staleness_secs();
        for (entity, bound) in &o.bounds {
            let used = stale.map(|s| s / (*bound as f64).max(1.0));
            let state = match used {
                None => "<span class=\"bad\">unknown: no instance has reported freshness</span>",
                Some(u) if u >= 1.0 => "<span class=\"bad\">past the bound: 503</span>",
                Some(u) if u > 0.5 => "<span class=\"warn\">near the bound</span>",
                Some(_) => "<span class=\"ok\">fresh</span>",
            };
            let _ = writeln!(
                h,
                "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{state}</td></tr>",
                esc(entity),
                secs(*bound as f64),
                stale.map_or_else(|| "unknown".into(), |s| format!("{} ago", secs(s))),
                used.map_or_else(|| "-".into(), |u| format!("{:.0}%", u * 100.0)),
            );
        }
        h.push_str("</tbody></table>\n");
    }
    h.push_str("</section>\n");

    // Instances.
    h.push_str("<section aria-labelledby=\"h-instances\" id=\"instances\" data-live>\n<h2 id=\"h-instances\">Ingest instances</h2>\n");
    match view {
        Some(v) if !v.instances.is_empty() => {
            h.push_str("<table><caption>Heartbeats in Redis: an instance is live while it beat within three intervals</caption>\n<thead><tr><th scope=\"col\">Instance</th><th scope=\"col\">Live</th><th scope=\"col\" class=\"n\">Last beat</th><th scope=\"col\" class=\"n\">Fresh as of</th><th scope=\"col\" class=\"n\">Interval</th></tr></thead><tbody>\n");
            for i in &v.instances {
                let ago = |ms: i64| format!("{} ago", secs((v.at_ms - ms).max(0) as f64 / 1000.0));
                let _ = writeln!(
                    h,
                    "<tr><th scope=\"row\"><code>{}</code></th><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    esc(&i.id),
                    if i.live {
                        "<span class=\"ok\">yes</span>"
                    } else {
                        "<span class=\"bad\">no</span>"
                    },
                    ago(i.beat.alive_ms),
                    i.beat.fresh_ms.map_or_else(|| "unknown".into(), ago),
                    secs(i.beat.interval_ms as f64 / 1000.0),
                );
            }
            h.push_str("</tbody></table>\n");
        }
        _ => h.push_str("<p>No instance has beaten in this cache's life yet.</p>\n"),
    }
    h.push_str("</section>\n");

    // Partitions.
    h.push_str("<section aria-labelledby=\"h-partitions\" id=\"partitions\" data-live>\n<h2 id=\"h-partitions\">Partitions</h2>\n");
    if o.partitions.is_empty() {
        h.push_str("<p>No partition is assigned yet.</p>\n");
    } else {
        h.push_str("<table><caption>Position (next offset to fold, from Redis), end (as this instance's fetches report it) and lag, per partition and generation</caption>\n<thead><tr><th scope=\"col\">Partition</th><th scope=\"col\" class=\"n\">Generation</th><th scope=\"col\" class=\"n\">Position</th><th scope=\"col\" class=\"n\">End</th><th scope=\"col\" class=\"n\">Lag</th><th scope=\"col\">Caught up</th><th scope=\"col\">State</th></tr></thead><tbody>\n");
        for p in &o.partitions {
            let lag = p.end.zip(p.position).map(|(e, pos)| (e - pos).max(0));
            let state = match (&p.stalled, p.here) {
                (Some(why), _) => format!("<span class=\"bad\">stalled: {}</span>", esc(why)),
                (None, true) => "<span class=\"ok\">folding</span>".into(),
                (None, false) => "on another instance".into(),
            };
            let _ = writeln!(
                h,
                "<tr><th scope=\"row\">{}/{}</th><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{state}</td></tr>",
                esc(&p.topic),
                p.partition,
                p.generation,
                p.position.map_or_else(|| "-".into(), num),
                p.end.map_or_else(|| "-".into(), num),
                lag.map_or_else(|| "-".into(), num),
                p.caught_up.map_or("-", yes_no),
            );
        }
        h.push_str("</tbody></table>\n");
    }
    h.push_str("</section>\n");

    // Dead letters.
    let _ = write!(
        h,
        "<section aria-labelledby=\"h-dead\" id=\"dead\" data-live>\n<h2 id=\"h-dead\">Dead letters</h2>\n{}",
        dead_letter_counts(o.dead, o.dead_letter_topic)
    );
    h.push_str("<p><a href=\"/console/dead-letters\">Latest dead letters and re-drive</a></p>\n</section>\n");

    h.push_str(&events(o.snapshot));
    h
}

fn dead_letter_counts(dead: &Summary, topic: &str) -> String {
    let mut h = String::new();
    if !dead.complete {
        let _ = writeln!(h, "<p>Reading <code>{}</code>…</p>", esc(topic));
    }
    if dead.total == 0 {
        let _ = writeln!(h, "<p>No dead letter on <code>{}</code>.</p>", esc(topic));
        return h;
    }
    let _ = write!(
        h,
        "<table><caption>Dead letters per reason on <code>{}</code> ({} in all)</caption>\n<thead><tr><th scope=\"col\">Reason</th><th scope=\"col\" class=\"n\">Count</th><th scope=\"col\">Latest</th></tr></thead><tbody>\n",
        esc(topic),
        dead.total
    );
    for (reason, r) in &dead.reasons {
        let latest = r.latest.front().map_or_else(String::new, |l| {
            format!(
                "{} from {}",
                l.timestamp_ms.map_or_else(|| "-".into(), format_utc_ms),
                esc(&l.origin())
            )
        });
        let _ = writeln!(
            h,
            "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(reason),
            r.count,
            latest
        );
    }
    h.push_str("</tbody></table>\n");
    h
}

fn events(snapshot: &Snapshot) -> String {
    let mut h = String::from(
        "<section aria-labelledby=\"h-events\" id=\"events\" data-live>\n<h2 id=\"h-events\">Recent events</h2>\n",
    );
    if snapshot.events.is_empty() {
        h.push_str("<p>Nothing changed since this instance started.</p>\n");
    } else {
        h.push_str("<ol class=\"events\" reversed>\n");
        for (at, what) in &snapshot.events {
            let _ = writeln!(
                h,
                "<li><time>{}</time>: {}</li>",
                esc(&format_utc_ms(*at)),
                esc(what)
            );
        }
        h.push_str("</ol>\n");
    }
    h.push_str("</section>\n");
    h
}

/// The rebuild page's body.
pub fn rebuild(
    p: Option<&BuildProgress>,
    snapshot: &Snapshot,
    notice: Option<&str>,
    csrf: Option<&str>,
) -> String {
    let mut h = String::new();
    if let Some(n) = notice {
        let _ = writeln!(h, "<p class=\"notice\" role=\"status\">{}</p>", esc(n));
    }
    h.push_str("<section aria-labelledby=\"h-progress\" id=\"progress\" data-live>\n<h2 id=\"h-progress\">Progress</h2>\n");
    match p {
        None => h.push_str("<p class=\"error\">Redis did not answer.</p>\n"),
        Some(p) => match p.generation {
            None => {
                let _ = writeln!(
                    h,
                    "<p id=\"rebuild-state\">No rebuild is running. Readers use generation {}.</p>",
                    p.live_generation
                );
            }
            Some(g) => {
                let pct = if p.target > 0 {
                    (p.done as f64 / p.target as f64 * 100.0).min(100.0)
                } else {
                    0.0
                };
                let _ = write!(
                    h,
                    "<p id=\"rebuild-state\">Building generation {g} beside live generation {}{}. Readers switch when it has caught up.</p>\n\
                     <label for=\"rebuild-bar\">Offsets folded: {} of {} ({pct:.0}%)</label>\n\
                     <progress id=\"rebuild-bar\" max=\"{}\" value=\"{}\">{pct:.0}%</progress>\n<dl class=\"facts\">",
                    p.live_generation,
                    p.started_ms
                        .map(|s| format!(", requested {}", esc(&format_utc_ms(s))))
                        .unwrap_or_default(),
                    num(p.done),
                    num(p.target),
                    p.target.max(p.done).max(1),
                    p.done.max(0),
                );
                let _ = writeln!(
                    h,
                    "<dt>Rate</dt><dd>{}</dd><dt>Time left</dt><dd>{}</dd></dl>",
                    p.events_per_sec
                        .map_or_else(|| "measuring…".into(), |r| format!("{r:.0} offsets/s")),
                    p.eta_secs.map_or_else(|| "unknown".into(), secs),
                );
                let mut parts: Vec<_> = p.partitions.iter().collect();
                parts.sort();
                h.push_str("<table><caption>Per partition: offsets folded into the new generation against the end it first saw</caption>\n<thead><tr><th scope=\"col\">Partition</th><th scope=\"col\" class=\"n\">Done</th><th scope=\"col\" class=\"n\">Target</th></tr></thead><tbody>\n");
                for (tp, (done, target)) in parts {
                    let _ = writeln!(
                        h,
                        "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                        esc(tp),
                        num(*done),
                        target.map_or_else(|| "-".into(), num)
                    );
                }
                h.push_str("</tbody></table>\n");
            }
        },
    }
    if let Some((g, at)) = snapshot.view.as_ref().and_then(|v| v.retired) {
        let _ = writeln!(
            h,
            "<p>Retired generation {g}: kept for readers still switching, removed from {}.</p>",
            esc(&format_utc_ms(at))
        );
    }
    h.push_str("</section>\n");
    let running = p.is_some_and(|p| p.generation.is_some());
    if !running {
        let _ = write!(
            h,
            "<section aria-labelledby=\"h-start\">\n<h2 id=\"h-start\">Start a rebuild</h2>\n\
             <p>A rebuild replays every topic from offset zero into a new generation beside the live one; readers keep reading the live generation (no 503) and switch atomically once the new one has caught up. The old generation is removed after <code>ingest.rebuild_retire_grace_ms</code>.</p>\n\
             <form method=\"post\" action=\"/console/rebuild\">{}<button type=\"submit\" id=\"start-rebuild\">Start a rebuild…</button></form>\n</section>\n",
            csrf.map(csrf_field).unwrap_or_default()
        );
    }
    h.push_str(&events(snapshot));
    h
}

/// The confirmation asked before a rebuild starts.
pub fn confirm_rebuild(live: u64, csrf: Option<&str>) -> String {
    format!(
        "<p>Start a rebuild now? Every topic is replayed from offset zero into a new generation beside live generation {live}. \
         Readers are not affected until the swap.</p>\n\
         <form method=\"post\" action=\"/console/rebuild\" class=\"inline\">{}<input type=\"hidden\" name=\"confirm\" value=\"yes\">\
         <button type=\"submit\" id=\"confirm-rebuild\" class=\"danger\">Yes, start the rebuild</button> <a href=\"/console/rebuild\">Cancel</a></form>\n",
        csrf.map(csrf_field).unwrap_or_default()
    )
}

fn letter_cells(l: &Letter) -> String {
    format!(
        "<td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"mono\" title=\"{}\">{}</td>",
        esc(&l.position()),
        l.timestamp_ms
            .map_or_else(|| "-".into(), |t| esc(&format_utc_ms(t))),
        esc(&l.origin()),
        l.key.as_deref().map_or_else(|| "(none)".into(), esc),
        esc(&l.error),
        l.value_digest
            .as_ref()
            .map_or_else(|| "null".into(), |d| format!("{} B", num(d.size as i64))),
        l.value_digest
            .as_ref()
            .map_or_else(String::new, |d| esc(&d.sha256)),
        l.value_digest
            .as_ref()
            .map_or_else(|| "-".into(), |d| esc(&d.sha256[..d.sha256.len().min(16)])),
    )
}

const LETTER_HEAD: &str = "<th scope=\"col\">Position</th><th scope=\"col\">Dead-lettered</th><th scope=\"col\">Origin (topic/partition/offset)</th><th scope=\"col\">Key</th><th scope=\"col\">Error</th><th scope=\"col\" class=\"n\">Value size</th><th scope=\"col\">Value SHA-256</th>";

/// The dead-letters page's body.
pub fn dead_letters(dead: &Summary, topic: &str, csrf: Option<&str>) -> String {
    let mut h = String::new();
    h.push_str("<p>Values are never shown (they may hold HR data): each dead letter is described by its origin, key, error, and the size and SHA-256 of its value.</p>\n");
    let _ = write!(
        h,
        "<section aria-labelledby=\"h-counts\" id=\"counts\" data-live>\n<h2 id=\"h-counts\">Counts</h2>\n{}</section>\n",
        dead_letter_counts(dead, topic)
    );
    let _ = write!(
        h,
        "<form method=\"post\" action=\"/console/dead-letters/redrive\">{}\n\
         <section aria-labelledby=\"h-latest\">\n<h2 id=\"h-latest\">Latest per reason</h2>\n<div id=\"latest\" data-live>\n",
        csrf.map(csrf_field).unwrap_or_default()
    );
    for (reason, r) in &dead.reasons {
        let _ = write!(
            h,
            "<table><caption>{} (newest first, {} of {})</caption>\n<thead><tr><th scope=\"col\">Re-drive</th>{LETTER_HEAD}</tr></thead><tbody>\n",
            esc(reason),
            r.latest.len(),
            r.count
        );
        for l in &r.latest {
            let id = format!("dl-{}-{}", l.partition, l.offset);
            let select = if l.envelope {
                "envelope: cannot be re-driven".to_owned()
            } else {
                format!(
                    "<input type=\"checkbox\" name=\"letter\" value=\"{}\" id=\"{id}\"><label for=\"{id}\" class=\"hint\">select {}</label>",
                    esc(&l.position()),
                    esc(&l.position())
                )
            };
            let _ = writeln!(h, "<tr><td>{select}</td>{}</tr>", letter_cells(l));
        }
        h.push_str("</tbody></table>\n");
    }
    if dead.reasons.is_empty() {
        h.push_str("<p>Nothing to re-drive.</p>\n");
    }
    h.push_str("</div>\n</section>\n");
    // Always offered: the list above updates itself (a dead letter read
    // after this page was served appears without a reload).
    h.push_str(
        "<section aria-labelledby=\"h-redrive\">\n<h2 id=\"h-redrive\">Re-drive the selected dead letters</h2>\n\
         <p>After the upstream fix (or a config change such as a larger <code>ingest.max_value_bytes</code>), each selected record is produced again to its origin topic and partition. \
         Records that would still fail, envelopes, and records the cache has already superseded are refused. You see what would happen before anything is produced.</p>\n\
         <div class=\"inline\"><div><label for=\"to\">Topic (empty: each letter's origin)</label><input type=\"text\" id=\"to\" name=\"to\" autocomplete=\"off\"></div>\
         <button type=\"submit\" id=\"check-redrive\">Check the selected…</button></div>\n</section>\n",
    );
    h.push_str("</form>\n");
    h
}

/// A redrive's dry run (with a confirmation form) or its result.
pub fn redrive_results(
    results: &[Redrive],
    dry_run: bool,
    to: Option<&str>,
    csrf: Option<&str>,
) -> String {
    let mut h = String::new();
    let ok: Vec<&Redrive> = results
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Refused { .. }))
        .collect();
    let _ = writeln!(
        h,
        "<p role=\"status\" class=\"summary\">{}: {} of {} selected dead letter{} {}.</p>",
        if dry_run { "Dry run" } else { "Done" },
        ok.len(),
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        if dry_run {
            "can be re-driven"
        } else {
            "re-driven"
        }
    );
    h.push_str("<table><caption>Outcome per dead letter</caption>\n<thead><tr><th scope=\"col\">Outcome</th>");
    h.push_str(LETTER_HEAD);
    h.push_str("</tr></thead><tbody>\n");
    for r in results {
        let outcome = match &r.outcome {
            Outcome::Redriven {
                topic,
                partition,
                offset,
            } => format!(
                "<span class=\"ok\">re-driven to {}/{partition}/{offset}</span>",
                esc(topic)
            ),
            Outcome::WouldRedrive { topic, partition } => format!(
                "<span class=\"ok\">would go to {}{}</span>",
                esc(topic),
                partition.map(|p| format!("/{p}")).unwrap_or_default()
            ),
            Outcome::Refused { why } => format!("<span class=\"bad\">refused: {}</span>", esc(why)),
        };
        let _ = writeln!(h, "<tr><td>{outcome}</td>{}</tr>", letter_cells(&r.letter));
    }
    h.push_str("</tbody></table>\n");
    if dry_run && !ok.is_empty() {
        let _ = write!(
            h,
            "<form method=\"post\" action=\"/console/dead-letters/redrive\" class=\"inline\">{}<input type=\"hidden\" name=\"confirm\" value=\"yes\">",
            csrf.map(csrf_field).unwrap_or_default()
        );
        if let Some(t) = to {
            let _ = write!(
                h,
                "<input type=\"hidden\" name=\"to\" value=\"{}\">",
                esc(t)
            );
        }
        for r in &ok {
            let _ = write!(
                h,
                "<input type=\"hidden\" name=\"letter\" value=\"{}\">",
                esc(&r.letter.position())
            );
        }
        let _ = writeln!(
            h,
            "<button type=\"submit\" id=\"confirm-redrive\" class=\"danger\">Re-drive {} dead letter{}</button> <a href=\"/console/dead-letters\">Cancel</a></form>",
            ok.len(),
            if ok.len() == 1 { "" } else { "s" }
        );
    } else {
        h.push_str("<p><a href=\"/console/dead-letters\">Back to the dead letters</a></p>\n");
    }
    h
}

/// The lookup page's body: the form, and the entity if one was asked for.
pub fn lookup(
    entities: &[String],
    asked: Option<(&str, &str)>,
    found: Option<&Found>,
    error: Option<&str>,
) -> String {
    let mut h = String::new();
    h.push_str("<form method=\"get\" action=\"/console/lookup\" class=\"inline\" role=\"search\">\n<div><label for=\"entity\">Entity</label><select id=\"entity\" name=\"entity\">");
    for e in entities {
        let selected = if asked.is_some_and(|(a, _)| a == e) {
            " selected"
        } else {
            ""
        };
        let _ = write!(h, "<option{selected}>{}</option>", esc(e));
    }
    let _ = write!(
        h,
        "</select></div>\n<div><label for=\"id\">Id</label><input type=\"text\" id=\"id\" name=\"id\" value=\"{}\" required autocomplete=\"off\" spellcheck=\"false\"></div>\n<button type=\"submit\">Look up</button>\n</form>\n",
        esc(asked.map_or("", |(_, id)| id))
    );
    if let Some(e) = error {
        let _ = writeln!(h, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    let Some(f) = found else { return h };
    let (entity, id) = asked.unwrap_or_default();
    let class = match f.status {
        200 => "ok",
        404 => "warn",
        _ => "bad",
    };
    let _ = write!(
        h,
        "<section aria-labelledby=\"h-found\" id=\"found\">\n<h2 id=\"h-found\">{} {}</h2>\n<p class=\"summary\" role=\"status\">query-api would answer <span class=\"{class}\">{}</span>: {}.</p>\n<dl class=\"facts\">",
        esc(entity),
        esc(id),
        f.status,
        esc(&f.why)
    );
    let mut fact = |k: &str, v: String| {
        let _ = write!(h, "<dt>{k}</dt><dd>{v}</dd>");
    };
    fact("Redis key", format!("<code>{}</code>", esc(&f.key)));
    fact("Generation", f.generation.to_string());
    fact(
        "ETag (full view)",
        f.etag
            .as_deref()
            .map_or_else(|| "-".into(), |e| format!("<code>\"{}\"</code>", esc(e))),
    );
    fact(
        "Last-Modified (record time)",
        f.modified_ms
            .map_or_else(|| "-".into(), |m| esc(&format_utc_ms(m))),
    );
    fact(
        "Source (<code>_fc:src</code>: topic/partition/offset)",
        f.source
            .as_deref()
            .map_or_else(|| "-".into(), |s| format!("<code>{}</code>", esc(s))),
    );
    fact(
        "TTL",
        match (f.exists, f.ttl_ms) {
            (false, _) => "-".into(),
            (true, None) => "none".into(),
            (true, Some(ms)) => secs(ms as f64 / 1000.0),
        },
    );
    fact("Fields", f.field_names.len().to_string());
    h.push_str("</dl>\n");
    if f.exists {
        match &f.visible {
            Visible::Hidden(why) => {
                let _ = write!(
                    h,
                    "<p class=\"notice\">{}</p>\n<p>Field names: {}</p>\n",
                    esc(why),
                    f.field_names
                        .iter()
                        .map(|n| format!("<code>{}</code>", esc(n)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Visible::All(view) | Visible::View(view, _) => {
                let _ = write!(
                    h,
                    "<table><caption>Values of the view <code>{}</code> (your token's grant), as stored (canonical JSON)</caption>\n<thead><tr><th scope=\"col\">Field</th><th scope=\"col\">Value</th></tr></thead><tbody>\n",
                    esc(view)
                );
                for (k, v) in &f.values {
                    let _ = writeln!(
                        h,
                        "<tr><th scope=\"row\"><code>{}</code></th><td class=\"mono\">{}</td></tr>",
                        esc(k),
                        esc(v)
                    );
                }
                h.push_str("</tbody></table>\n");
            }
        }
    }
    h.push_str("</section>\n");
    h
}

/// The sign-in form.
pub fn login(next: &str, error: Option<&str>) -> String {
    let mut h = String::new();
    if let Some(e) = error {
        let _ = writeln!(h, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    let _ = write!(
        h,
        "<p>Sign in with an admin token (an <code>[[auth.tokens]]</code> entry with <code>admin = true</code>, or <code>ingest.admin_token</code>).</p>\n\
         <form method=\"post\" action=\"/console/login\">\n<input type=\"hidden\" name=\"next\" value=\"{}\">\n\
         <div><label for=\"token\">Admin token</label><input type=\"password\" id=\"token\" name=\"token\" required autocomplete=\"current-password\"></div>\n\
         <p><button type=\"submit\" id=\"sign-in\">Sign in</button></p>\n</form>\n",
        esc(next)
    );
    h
}
