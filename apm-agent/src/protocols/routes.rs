//! Raw paths to bounded route templates.
//!
//! 1. User patterns (`--route /users/{id}/orders`) win: `{name}` matches
//!    one segment, a final `{*name}` the rest of the path.
//! 2. Otherwise each segment is kept, unless it is numeric (`{id}`), a UUID
//!    (`{uuid}`), long hex (`{hex}`) or longer than 64 bytes (`{long}`).
//! 3. A parent with more than `max_children` distinct child segments
//!    collapses new ones into `{var}`.
//! 4. A service has at most `max_routes` routes; later ones are reported
//!    as [`OVERFLOW_ROUTE`] and counted.
//!
//! The raw path is only read here; nothing keeps it.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

pub const OVERFLOW_ROUTE: &str = "{overflow}";
const MAX_SEGMENT: usize = 64;
/// Segments kept per route; deeper paths end in `/{rest}`.
const MAX_DEPTH: usize = 16;

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
}

impl Routes {
    pub fn new(config: RouteConfig) -> Self {
        Self {
            config,
            services: FxHashMap::default(),
            overflow: OVERFLOW_ROUTE.into(),
        }
    }

    /// Number of routes known for `service`.
    pub fn count(&self, service: &str) -> usize {
        self.services.get(service).map_or(0, |s| s.routes.len())
    }

    pub fn template(&mut self, service: &Arc<str>, path: &str) -> Route {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
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

/// The template form of one raw segment.
fn classify(seg: &str) -> std::borrow::Cow<'_, str> {
    if seg.len() > MAX_SEGMENT {
        "{long}".into()
    } else if seg.bytes().all(|b| b.is_ascii_digit()) {
        "{id}".into()
    } else if is_uuid(seg) {
        "{uuid}".into()
    } else if seg.len() >= 16 && seg.bytes().all(|b| b.is_ascii_hexdigit()) {
        "{hex}".into()
    } else {
        seg.into()
    }
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
            t(&mut r, &s, &format!("/x/{}", "a".repeat(100))),
            "/x/{long}"
        );
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
        for i in 0..100 {
            assert_eq!(t(&mut r, &s, &format!("/p/name{i}")), format!("/p/name{i}"));
        }
        assert_eq!(t(&mut r, &s, "/p/another"), "/p/{var}");
        // Known children stay as they were.
        assert_eq!(t(&mut r, &s, "/p/name3"), "/p/name3");
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
