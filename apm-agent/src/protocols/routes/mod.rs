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
//! 3. Positions: in `/users/alice/orders`, `alice` is at the position
//!    after the parent template `/users`. A position below the root keeps
//!    at most `max_words` (10) distinct words verbatim; the next distinct
//!    word collapses it while the service is known: every word there is
//!    `{var}` from then on, and the routes its words made (`/users/alice/orders`
//!    and all beneath it) leave the table at once, so the route count
//!    drops back. Their series are not merged (a counter moved to another
//!    series would be counted twice by rate()): they get no more requests
//!    and expire like any idle route. Versions, file names, and words at
//!    the root never collapse a position: at most `max_children` (100)
//!    distinct ones are kept per position, later ones become `{var}`
//!    (`{var}.js`).
//! 4. The backstop: a service has at most `max_routes` routes; later ones
//!    are reported as [`OVERFLOW_ROUTE`] and counted.
//!
//! The raw path is only read here; nothing keeps it. Paths already
//! templated are remembered by a keyed 64-bit hash (never the path), so a
//! repeated path costs one hash and one lookup.

use std::{
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use rustc_hash::FxHashMap;

mod pattern;
mod segments;
mod tree;

use self::tree::ServiceRoutes;
pub use self::{
    pattern::Pattern,
    segments::{FILE_EXTENSIONS, file_name, is_route_word, is_version},
};

pub const OVERFLOW_ROUTE: &str = "{overflow}";
/// Distinct words a position below the root keeps verbatim, by default
/// (`--max-route-words`).
pub const DEFAULT_MAX_WORDS: usize = 10;
/// Segments kept per route; deeper paths end in `/{rest}`.
const MAX_DEPTH: usize = 16;
/// Templated paths remembered (all services); the memo starts over when
/// it is full, so a flood of distinct paths costs what it did without it.
const MEMO_MAX: usize = 4096;

#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// Routes per service; later ones are [`OVERFLOW_ROUTE`].
    pub max_routes: usize,
    /// Distinct words a position below the root keeps verbatim; one more
    /// collapses it to `{var}`.
    pub max_words: usize,
    /// Distinct versions, file names, and root words, per position.
    pub max_children: usize,
    pub patterns: Vec<Pattern>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            max_routes: 1000,
            max_words: DEFAULT_MAX_WORDS,
            max_children: 100,
            patterns: Vec::new(),
        }
    }
}

/// The route a request was filed under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub template: Arc<str>,
    pub overflow: bool,
}

pub struct Routes {
    config: RouteConfig,
    services: FxHashMap<Arc<str>, ServiceRoutes>,
    overflow: Arc<str>,
    /// (service, path) hashed with a per-process random key (SipHash), so
    /// nobody can craft a path that lands on another path's route, to the
    /// admitted template. Cleared whenever a route is forgotten or a
    /// position collapses.
    memo: FxHashMap<u64, Arc<str>>,
    keys: RandomState,
    /// Positions collapsed since [`Routes::take_collapses`] last ran.
    collapses: u64,
}

impl Routes {
    pub fn new(config: RouteConfig) -> Self {
        Self {
            config,
            services: FxHashMap::default(),
            overflow: OVERFLOW_ROUTE.into(),
            memo: FxHashMap::default(),
            keys: RandomState::new(),
            collapses: 0,
        }
    }

    /// Frees `template` of `service` (no traffic for a while): it no longer
    /// counts against --max-routes.
    pub fn forget(&mut self, service: &str, template: &str) {
        if let Some(state) = self.services.get_mut(service) {
            state.remove(template);
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

    /// The routes of `service`, in no order.
    pub fn templates<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a str> {
        self.services
            .get(service)
            .into_iter()
            .flat_map(|s| s.routes.iter().map(|r| &**r))
    }

    /// Positions collapsed to `{var}` since the last call.
    pub fn take_collapses(&mut self) -> u64 {
        std::mem::take(&mut self.collapses)
    }

    pub fn template(&mut self, service: &Arc<str>, path: &str) -> Route {
        self.template_counted(service, path).0
    }

    /// [`Self::template`], with the service's route counts before and
    /// after when the path was not remembered (a remembered path is a
    /// known route of a known service: nothing changed).
    pub fn template_counted(
        &mut self,
        service: &Arc<str>,
        path: &str,
    ) -> (Route, Option<(usize, usize)>) {
        let key = self.keys.hash_one((&**service, path));
        if let Some(template) = self.memo.get(&key) {
            let route = Route {
                template: template.clone(),
                overflow: false,
            };
            return (route, None);
        }
        let before = self.count(service);
        let route = self.template_new(service, path);
        if !route.overflow {
            if self.memo.len() >= MEMO_MAX {
                self.memo.clear();
            }
            self.memo.insert(key, route.template.clone());
        }
        let after = self.count(service);
        (route, Some((before, after)))
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
            return self.admit(service, template, false);
        }
        let state = self.services.entry(service.clone()).or_default();
        let (template, collapsed) = state.template(&segments, &self.config);
        if collapsed > 0 {
            // Paths remembered under the retired routes file under `{var}`.
            self.memo.clear();
            self.collapses += u64::from(collapsed);
        }
        let template: Arc<str> = match state.routes.get(template.as_str()) {
            Some(known) => known.clone(),
            None => template.into(),
        };
        self.admit(service, template, true)
    }

    /// Files a request under `template` if it is known or there is room
    /// for it; a templated route (not a pattern's) is placed in the tree
    /// so that a collapse above it retires it.
    fn admit(&mut self, service: &Arc<str>, template: Arc<str>, templated: bool) -> Route {
        let max = self.config.max_routes;
        let state = self.services.entry(service.clone()).or_default();
        if state.routes.contains(&template) {
            return Route {
                template,
                overflow: false,
            };
        }
        if state.routes.len() < max {
            if templated {
                state.insert(template.clone());
            } else {
                state.routes.insert(template.clone());
            }
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

#[cfg(test)]
mod tests;
