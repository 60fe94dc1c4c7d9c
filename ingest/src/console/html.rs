//! HTML by hand: escaping, the page layout every console page shares, and
//! small helpers. Every text that did not come from this file goes through
//! [`esc`].

use std::fmt::Write as _;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The console's pages, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// `/console`.
    Overview,
    /// `/console/rebuild`.
    Rebuild,
    /// `/console/dead-letters`.
    DeadLetters,
    /// `/console/lookup`.
    Lookup,
    /// Not a navigation target (login, confirmations).
    None,
}

/// A page to render.
#[derive(Debug)]
pub struct Page<'a> {
    /// `<title>` and `<h1>`.
    pub title: &'a str,
    /// Which navigation entry is current.
    pub nav: Nav,
    /// Who is signed in, and the CSRF token of their session (`None`: signed
    /// in with a bearer token, no session to end).
    pub who: Option<(&'a str, Option<&'a str>)>,
    /// Whether parts of the page update by themselves (polling script;
    /// without JavaScript the page reloads every few seconds).
    pub live: bool,
    /// The content of `<main>` after the heading.
    pub body: String,
}

impl Page<'_> {
    /// The whole document.
    pub fn render(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{} · foldcache console</title>\n\
             <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\n",
            esc(self.title)
        );
        if self.live {
            h.push_str(
                "<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>\n\
                 <script src=\"/console/assets/console.js\" defer></script>\n",
            );
        }
        h.push_str("</head>\n<body>\n<a class=\"skip\" href=\"#main\">Skip to content</a>\n<header>\n<p class=\"brand\">foldcache console</p>\n");
        if self.nav != Nav::None || self.who.is_some() {
            h.push_str("<nav aria-label=\"Console\"><ul>");
            for (nav, href, label) in [
                (Nav::Overview, "/console", "Overview"),
                (Nav::Rebuild, "/console/rebuild", "Rebuild"),
                (Nav::DeadLetters, "/console/dead-letters", "Dead letters"),
                (Nav::Lookup, "/console/lookup", "Lookup"),
            ] {
                let current = if nav == self.nav {
                    " aria-current=\"page\""
                } else {
                    ""
                };
                let _ = write!(h, "<li><a href=\"{href}\"{current}>{label}</a></li>");
            }
            h.push_str("</ul></nav>\n");
        }
        if let Some((name, csrf)) = self.who {
            let _ = write!(
                h,
                "<div class=\"who\">Signed in as <strong>{}</strong>",
                esc(name)
            );
            if let Some(csrf) = csrf {
                let _ = write!(
                    h,
                    " <form method=\"post\" action=\"/console/logout\">{}<button type=\"submit\">Sign out</button></form>",
                    csrf_field(csrf)
                );
            }
            h.push_str("</div>\n");
        }
        let _ = write!(
            h,
            "</header>\n<main id=\"main\">\n<h1>{}</h1>\n{}\n</main>\n",
            esc(self.title),
            self.body
        );
        if self.live {
            let _ = writeln!(
                h,
                "<footer><p id=\"updated\" data-live>Updated {}. <span class=\"hint\">This page updates by itself.</span></p></footer>",
                esc(&crate::dead_letter_tools::format_utc_ms(
                    foldcache_common::runtime::now_ms()
                ))
            );
        }
        h.push_str("</body>\n</html>\n");
        h
    }
}

/// The hidden CSRF field of a form.
pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A duration in seconds, for people: `850 ms`, `12.3 s`, `4 min 5 s`.
pub fn secs(s: f64) -> String {
    if !s.is_finite() {
        return "unknown".into();
    }
    if s < 1.0 {
        format!("{} ms", (s * 1000.0).round())
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{} min {} s", (s / 60.0).floor(), (s % 60.0).round())
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// A number with thin separators: `1 234 567`.
pub fn num(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(num(1_234_567), "1\u{202f}234\u{202f}567");
        assert_eq!(num(12), "12");
        assert_eq!(secs(0.25), "250 ms");
        assert_eq!(secs(12.34), "12.3 s");
        assert_eq!(secs(245.0), "4 min 5 s");
        assert_eq!(secs(f64::INFINITY), "unknown");
    }
}
