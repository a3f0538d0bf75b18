//! Raw paths to bounded route templates that cannot carry identifiers.
//!
//! 1. User patterns (`--route /users/{id}/orders`) win: `{name}` matches
//!    one segment, a final `{*name}` the rest of the path.
//! 2. `;params` are dropped. A segment is then kept verbatim only if it
//!    reads like a word from a route table (see [`is_route_word`]): short,
//!    lower-case letters with `-` or `_`, or a version like `v2`. Anything
//!    else becomes a placeholder: `{id}` (digits), `{uuid}`, `{hex}` (16+
//!    hex digits) or `{var}` (emails, keys, tokens, JWTs, `host:port`,
//!    percent-encoded or mixed-case text, long or random-looking words).
//!    A file name, a name and a known lower-case extension
//!    ([`FILE_EXTENSIONS`]: `index.html`, `favicon.ico`, `app.js`), is
//!    kept whole when the name is a route word; otherwise the name alone
//!    becomes its placeholder and the extension stays: `app.3f9a2b1c.js`
//!    is `{var}.js`, `12345.png` is `{id}.png`.
//! 3. The backstop: a parent with more than `max_children` distinct child
//!    segments collapses new ones into `{var}`, and a service has at most
//!    `max_routes` routes; later ones are reported as [`OVERFLOW_ROUTE`]
//!    and counted.
//!
//! The raw path is only read here; nothing keeps it. Paths already
//! templated are remembered by a keyed 64-bit hash (never the path), so a
//! repeated path costs one hash and one lookup.

use std::{
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use rustc_hash::{FxHashMap, FxHashSet};

pub const OVERFLOW_ROUTE: &str = "{overflow}";
/// Longest segment kept verbatim.
const MAX_WORD: usize = 32;
/// Longest letter run between separators in a kept segment.
const MAX_RUN: usize = 20;
/// Segments kept per route; deeper paths end in `/{rest}`.
const MAX_DEPTH: usize = 16;
/// Extensions that make a segment a file name (`name.ext`), sorted for
/// binary search: static assets, documents and script pages.
#[rustfmt::skip]
pub const FILE_EXTENSIONS: &[&str] = &[
    "asp", "aspx", "atom", "avif", "bmp", "css", "csv", "eot", "gif", "gz", "htm", "html", "ico",
    "jpeg", "jpg", "js", "json", "jsp", "map", "md", "mjs", "mp3", "mp4", "ogg", "otf", "pdf",
    "php", "png", "rss", "svg", "ttf", "txt", "wasm", "wav", "webm", "webmanifest", "webp",
    "woff", "woff2", "xml", "yaml", "yml", "zip",
];
/// Templated paths remembered (all services); the memo starts over when
/// it is full, so a flood of distinct paths costs what it did without it.
const MEMO_MAX: usize = 4096;

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub max_routes: usize,
    pub max_children: usize,
    pub patterns: Vec<Pattern>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            max_routes: 1000,
            max_children: 100,
            patterns: Vec::new(),
        }
    }
}

/// A user-supplied route pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: Arc<str>,
    segments: Vec<PatternSegment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternSegment {
    Literal(String),
    Any,
    Rest,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("route pattern must start with '/': {text:?}"));
        }
        let parts: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = if part.starts_with("{*") && part.ends_with('}') {
                if i + 1 != parts.len() {
                    return Err(format!("{{*..}} must be the last segment: {text:?}"));
                }
                PatternSegment::Rest
            } else if part.starts_with('{') && part.ends_with('}') {
                PatternSegment::Any
            } else {
                PatternSegment::Literal((*part).to_owned())
            };
            segments.push(seg);
        }
        Ok(Self {
            text: text.into(),
            segments,
        })
    }

    fn matches(&self, segments: &[&str]) -> bool {
        let mut it = segments.iter();
        for seg in &self.segments {
            match seg {
                PatternSegment::Rest => return true,
                PatternSegment::Any => {
                    if it.next().is_none() {
                        return false;
                    }
                }
                PatternSegment::Literal(lit) => {
                    if it.next() != Some(&lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        it.next().is_none()
    }
}

/// The route a request was filed under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub template: Arc<str>,
    pub overflow: bool,
}

#[derive(Default)]
struct ServiceRoutes {
    routes: FxHashSet<Arc<str>>,
    /// Distinct child segments seen under each parent template.
    children: FxHashMap<String, FxHashSet<String>>,
}

pub struct Routes {
    config: RouteConfig,
    services: FxHashMap<Arc<str>, ServiceRoutes>,
    overflow: Arc<str>,
    /// (service, path) hashed with a per-process random key (SipHash), so
    /// nobody can craft a path that lands on another path's route, to the
    /// admitted template. Cleared whenever a route is forgotten.
    memo: FxHashMap<u64, Arc<str>>,
    keys: RandomState,
}

impl Routes {
    pub fn new(config: RouteConfig) -> Self {
        Self {
            config,
            services: FxHashMap::default(),
            overflow: OVERFLOW_ROUTE.into(),
            memo: FxHashMap::default(),
            keys: RandomState::new(),
        }
    }

    /// Frees `template` of `service` (no traffic for a while): it no longer
    /// counts against --max-routes.
    pub fn forget(&mut self, service: &str, template: &str) {
        if let Some(state) = self.services.get_mut(service) {
            state.routes.remove(template);
        }
        self.memo.clear();
    }

    /// Frees everything known about `service`.
    pub fn forget_service(&mut self, service: &str) {
        self.services.remove(service);
        self.memo.clear();
    }

    /// Number of routes known for `service`.
    pub fn count(&self, service: &str) -> usize {
        self.services.get(service).map_or(0, |s| s.routes.len())
    }

    pub fn template(&mut self, service: &Arc<str>, path: &str) -> Route {
        let key = self.keys.hash_one((&**service, path));
        if let Some(template) = self.memo.get(&key) {
            return Route {
                template: template.clone(),
                overflow: false,
            };
        }
        let route = self.template_new(service, path);
        if !route.overflow {
            if self.memo.len() >= MEMO_MAX {
                self.memo.clear();
            }
            self.memo.insert(key, route.template.clone());
        }
        route
    }

    fn template_new(&mut self, service: &Arc<str>, path: &str) -> Route {
        // `;params` (jsessionid and friends) are dropped from every segment.
        let segments: Vec<&str> = path
            .split('/')
            .map(|s| s.split_once(';').map_or(s, |(seg, _)| seg))
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(p) = self.config.patterns.iter().find(|p| p.matches(&segments)) {
            let template = p.text.clone();
            return self.admit(service, template);
        }
        let max_children = self.config.max_children;
        // Parents tracked per service, so a flood of distinct paths cannot
        // grow the children maps without bound.
        let max_parents = self.config.max_routes.saturating_mul(4).max(16);
        let state = self.services.entry(service.clone()).or_default();
        let mut template = String::with_capacity(path.len().min(256));
        for (depth, raw) in segments.iter().enumerate() {
            if depth == MAX_DEPTH {
                template.push_str("/{rest}");
                break;
            }
            let mut seg = classify(raw);
            // The parent's key is cloned only when it is new.
            let parent_known = state.children.contains_key(&template);
            if parent_known || state.children.len() < max_parents {
                let children = match state.children.get_mut(&template) {
                    Some(children) => children,
                    None => state.children.entry(template.clone()).or_default(),
                };
                if !children.contains(seg.as_ref()) {
                    if children.len() < max_children {
                        children.insert(seg.to_string());
                    } else {
                        seg = "{var}".into();
                    }
                }
            } else {
                seg = "{var}".into();
            }
            template.push('/');
            template.push_str(&seg);
        }
        if template.is_empty() {
            template.push('/');
        }
        let template: Arc<str> = match state.routes.get(template.as_str()) {
            Some(known) => known.clone(),
            None => template.into(),
        };
        self.admit(service, template)
    }

    fn admit(&mut self, service: &Arc<str>, template: Arc<str>) -> Route {
        let max = self.config.max_routes;
        let state = self.services.entry(service.clone()).or_default();
        if state.routes.contains(&template) {
            return Route {
                template,
                overflow: false,
            };
        }
        if state.routes.len() < max {
            state.routes.insert(template.clone());
            return Route {
                template,
                overflow: false,
            };
        }
        Route {
            template: self.overflow.clone(),
            overflow: true,
        }
    }
}

/// The template form of one raw segment (its `;params` already dropped).
fn classify(seg: &str) -> std::borrow::Cow<'_, str> {
    if is_route_word(seg) {
        return seg.into();
    }
    match file_name(seg) {
        Some((name, _)) if is_route_word(name) => seg.into(),
        Some((name, ext)) => format!("{}.{ext}", placeholder(name)).into(),
        None => placeholder(seg).into(),
    }
}

/// The placeholder of a segment (or file name) that is not a route word.
fn placeholder(seg: &str) -> &'static str {
    if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
        "{id}"
    } else if is_uuid(seg) {
        "{uuid}"
    } else if seg.len() >= 16 && seg.bytes().all(|b| b.is_ascii_hexdigit()) {
        "{hex}"
    } else {
        "{var}"
    }
}

/// `seg` as a file name: a non-empty name and an extension of
/// [`FILE_EXTENSIONS`], split at the last dot.
pub fn file_name(seg: &str) -> Option<(&str, &str)> {
    let (name, ext) = seg.rsplit_once('.')?;
    (!name.is_empty() && FILE_EXTENSIONS.binary_search(&ext).is_ok()).then_some((name, ext))
}

/// A segment that reads like a word of a route table: at most MAX_WORD
/// bytes of lower-case letters joined by `-` or `_` (no digits mixed in,
/// no `@ : ; = . ~ %`, no upper case), each letter run at most MAX_RUN
/// long and pronounceable (a vowel, no five consonants in a row); or a
/// version (`v1`, `v22`). Random lower-case tokens mostly fail the run
/// rules; the per-parent cap catches the rest.
pub fn is_route_word(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() || b.len() > MAX_WORD {
        return false;
    }
    if b.len() <= 4 && b[0] == b'v' && b.len() > 1 && b[1..].iter().all(u8::is_ascii_digit) {
        return true;
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c == b'-' || c == b'_')
    {
        return false;
    }
    seg.split(['-', '_'])
        .all(|run| run.is_empty() || (run.len() <= MAX_RUN && pronounceable(run.as_bytes())))
}

fn pronounceable(run: &[u8]) -> bool {
    let vowel = |c: &u8| matches!(c, b'a' | b'e' | b'i' | b'o' | b'u' | b'y');
    if run.len() > 3 && !run.iter().any(vowel) {
        return false;
    }
    let mut consonants = 0;
    for c in run {
        consonants = if vowel(c) { 0 } else { consonants + 1 };
        if consonants >= 5 {
            return false;
        }
    }
    true
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> (Routes, Arc<str>) {
        (Routes::new(RouteConfig::default()), "svc".into())
    }

    fn t(r: &mut Routes, svc: &Arc<str>, path: &str) -> String {
        r.template(svc, path).template.to_string()
    }

    #[test]
    fn ids_uuids_and_hex_become_placeholders() {
        let (mut r, s) = routes();
        assert_eq!(
            t(&mut r, &s, "/users/42/orders/7"),
            "/users/{id}/orders/{id}"
        );
        assert_eq!(
            t(&mut r, &s, "/o/550e8400-e29b-41d4-a716-446655440000"),
            "/o/{uuid}"
        );
        assert_eq!(t(&mut r, &s, "/blob/deadbeefcafebabe0123"), "/blob/{hex}");
        assert_eq!(t(&mut r, &s, "/v1/status"), "/v1/status");
        assert_eq!(t(&mut r, &s, "/"), "/");
        assert_eq!(t(&mut r, &s, ""), "/");
        assert_eq!(
            t(&mut r, &s, &format!("/x/{}", "z".repeat(100))),
            "/x/{var}"
        );
    }

    #[test]
    fn identifiers_never_become_route_words() {
        let (mut r, s) = routes();
        for (path, want) in [
            ("/users/alice@example.com/orders", "/users/{var}/orders"),
            ("/reset/sk_live_4eC39HqLyjWDarjtT1zdp7dc", "/reset/{var}"),
            ("/cart;jsessionid=0123ABCDEF/items", "/cart/items"),
            ("/login;JSESSIONID=abc", "/login"),
            (
                "/t/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
                "/t/{var}",
            ),
            ("/proxy/db.internal:5432/q", "/proxy/{var}/q"),
            ("/files/report.pdf", "/files/report.pdf"),
            ("/files/alice@example.com.pdf", "/files/{var}.pdf"),
            ("/files/.pdf", "/files/{var}"),
            ("/files/report.PDF", "/files/{var}"),
            ("/files/report.exe", "/files/{var}"),
            ("/u/%61lice", "/u/{var}"),
            ("/u/Alice", "/u/{var}"),
            ("/u/user42", "/u/{var}"),
            ("/k/xqzvbnmtrkwpl", "/k/{var}"),
            ("/k/qhkzrtvxwmpl-abcdefghijklmnopqrstu", "/k/{var}"),
            ("/~bob/home", "/{var}/home"),
            ("/a=b/c", "/{var}/c"),
            ("/api/v2/user-profiles/me", "/api/v2/user-profiles/me"),
            ("/health_check/ready", "/health_check/ready"),
        ] {
            assert_eq!(t(&mut r, &s, path), want, "{path}");
        }
    }

    #[test]
    fn static_file_names_stay_when_their_name_is_a_route_word() {
        let (mut r, s) = routes();
        for (path, want) in [
            ("/small.txt", "/small.txt"),
            ("/favicon.ico", "/favicon.ico"),
            ("/index.html", "/index.html"),
            ("/static/app.js", "/static/app.js"),
            ("/fonts/inter-bold.woff2", "/fonts/inter-bold.woff2"),
            ("/api/v2.json", "/api/v2.json"),
            ("/robots.txt;jsessionid=1", "/robots.txt"),
            // The name part still goes through the privacy rules.
            ("/assets/app.3f9a2b1c.js", "/assets/{var}.js"),
            ("/assets/app-3f9a2b1c.css", "/assets/{var}.css"),
            ("/u/12345.png", "/u/{id}.png"),
            ("/b/deadbeefcafebabe0123.map", "/b/{hex}.map"),
            (
                "/d/550e8400-e29b-41d4-a716-446655440000.json",
                "/d/{uuid}.json",
            ),
            ("/k/xqzvbnmtrkwpl.txt", "/k/{var}.txt"),
            ("/u/Alice.jpg", "/u/{var}.jpg"),
            ("/t/sk_live_4eC39HqLyjWDarjtT1zdp7dc.json", "/t/{var}.json"),
            // Not a known extension: a dotted segment stays a placeholder.
            ("/proxy/example.com", "/proxy/{var}"),
            ("/.env", "/{var}"),
        ] {
            assert_eq!(t(&mut r, &s, path), want, "{path}");
        }
        assert!(FILE_EXTENSIONS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(file_name("a.b.js"), Some(("a.b", "js")));
        assert_eq!(file_name("js"), None);
    }

    #[test]
    fn route_words_are_what_a_route_table_holds() {
        for w in [
            "users",
            "v1",
            "v22",
            "order-items",
            "by_id",
            "rss",
            "x",
            "strength",
        ] {
            assert!(is_route_word(w), "{w}");
        }
        for w in [
            "", "v1234", "Users", "a.b", "a:b", "a@b", "a%20", "a~", "a=b", "x1", "bcdfgh",
        ] {
            assert!(!is_route_word(w), "{w}");
        }
    }

    #[test]
    fn hostile_paths_stay_bounded() {
        let (mut r, s) = routes();
        let deep = "/a".repeat(1000);
        let route = t(&mut r, &s, &deep);
        assert!(route.ends_with("/{rest}"), "{route}");
        assert!(route.len() < 100);
        assert_eq!(t(&mut r, &s, "//a///b"), "/a/b");
    }

    #[test]
    fn many_children_collapse_under_their_parent() {
        let (mut r, s) = routes();
        let word = |i: u8| {
            format!(
                "name-{}{}",
                (b'a' + i / 26) as char,
                (b'a' + i % 26) as char
            )
        };
        for i in 0..100 {
            assert_eq!(
                t(&mut r, &s, &format!("/p/{}", word(i))),
                format!("/p/{}", word(i))
            );
        }
        assert_eq!(t(&mut r, &s, "/p/another"), "/p/{var}");
        // Known children stay as they were.
        assert_eq!(
            t(&mut r, &s, &format!("/p/{}", word(3))),
            format!("/p/{}", word(3))
        );
    }

    #[test]
    fn the_route_cap_sends_the_rest_to_overflow() {
        let mut r = Routes::new(RouteConfig {
            max_routes: 10,
            ..Default::default()
        });
        let s: Arc<str> = "svc".into();
        let mut overflow = 0;
        for a in 0..5 {
            for b in 0..5 {
                let (a, b) = ((b'a' + a) as char, (b'a' + b) as char);
                let route = r.template(&s, &format!("/a{a}/b{b}"));
                if route.overflow {
                    assert_eq!(&*route.template, OVERFLOW_ROUTE);
                    overflow += 1;
                }
            }
        }
        assert_eq!(r.count("svc"), 10);
        assert_eq!(overflow, 15);
        // Another service has its own budget.
        assert!(!r.template(&"other".into(), "/a0/b0").overflow);
    }

    #[test]
    fn remembered_paths_follow_forgotten_routes() {
        let mut r = Routes::new(RouteConfig {
            max_routes: 1,
            ..Default::default()
        });
        let s: Arc<str> = "svc".into();
        for _ in 0..3 {
            assert_eq!(t(&mut r, &s, "/orders/42"), "/orders/{id}");
            assert!(r.template(&s, "/carts").overflow);
        }
        // A forgotten route frees its place, and the remembered path
        // is templated again rather than answered from memory.
        r.forget("svc", "/orders/{id}");
        assert_eq!(t(&mut r, &s, "/carts"), "/carts");
        assert!(r.template(&s, "/orders/42").overflow);
        r.forget_service("svc");
        assert_eq!(t(&mut r, &s, "/orders/43"), "/orders/{id}");
        // The memory is bounded: distinct paths beyond it start it over.
        for i in 0..MEMO_MAX + 10 {
            r.template(&s, &format!("/orders/{i}"));
        }
        assert!(r.memo.len() <= MEMO_MAX);
    }

    #[test]
    fn user_patterns_take_precedence() {
        let mut r = Routes::new(RouteConfig {
            patterns: vec![
                Pattern::parse("/users/{name}/profile").expect("pattern"),
                Pattern::parse("/static/{*path}").expect("pattern"),
            ],
            ..Default::default()
        });
        let s: Arc<str> = "svc".into();
        assert_eq!(
            t(&mut r, &s, "/users/alice/profile"),
            "/users/{name}/profile"
        );
        assert_eq!(t(&mut r, &s, "/static/css/site.css"), "/static/{*path}");
        assert_eq!(t(&mut r, &s, "/users/alice"), "/users/alice");
        assert!(Pattern::parse("users").is_err());
        assert!(Pattern::parse("/{*a}/b").is_err());
    }
}
