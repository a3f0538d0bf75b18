//! One service's routes and what each position of its paths has held:
//! where a position that takes many distinct words becomes `{var}`, and
//! the routes its words made are retired.

use std::{borrow::Cow, sync::Arc};

use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    MAX_DEPTH, RouteConfig,
    segments::{Segment, VAR},
};

#[derive(Default)]
pub(super) struct ServiceRoutes {
    pub routes: FxHashSet<Arc<str>>,
    /// What the segment after each parent template (`""` is the root) has
    /// held.
    positions: FxHashMap<String, Position>,
}

/// The segments seen at one position of a service's paths.
#[derive(Default)]
struct Position {
    /// Distinct words (not versions, not at the root), at most
    /// `max_words`; emptied when the position collapses.
    words: FxHashSet<Box<str>>,
    /// Distinct versions, file names and root words, at most
    /// `max_children`.
    kept: FxHashSet<Box<str>>,
    /// More than `max_words` distinct words came: every word is `{var}`.
    collapsed: bool,
}

/// What becomes of a segment at its position.
enum Fate<'a> {
    Keep(&'a str),
    Fallback,
    /// The word is one too many: the position collapses.
    Collapse,
}

impl Position {
    fn fate<'a>(&mut self, seg: &Segment<'a>, root: bool, config: &RouteConfig) -> Fate<'a> {
        let (set, max, text) = match *seg {
            Segment::Word(w) if !root => {
                if self.collapsed {
                    return Fate::Fallback;
                }
                (&mut self.words, config.max_words, w)
            }
            Segment::Word(s) | Segment::Version(s) | Segment::File(s, _) => {
                (&mut self.kept, config.max_children, s)
            }
            Segment::Placeholder(_) => return Fate::Fallback,
        };
        if set.contains(text) {
            Fate::Keep(text)
        } else if set.len() < max {
            set.insert(text.into());
            Fate::Keep(text)
        } else if matches!(seg, Segment::Word(_)) && !root {
            Fate::Collapse
        } else {
            Fate::Fallback
        }
    }
}

impl ServiceRoutes {
    /// The template of a path's `segments` (user patterns already tried),
    /// learning what each position holds, and how many positions it
    /// collapsed.
    pub fn template(&mut self, segments: &[&str], config: &RouteConfig) -> (String, u32) {
        // Parents tracked per service, so a flood of distinct paths cannot
        // grow the position map without bound.
        let max_parents = config.max_routes.saturating_mul(4).max(16);
        let mut collapsed = 0;
        let mut template = String::with_capacity(64);
        for (depth, raw) in segments.iter().enumerate() {
            if depth == MAX_DEPTH {
                template.push_str("/{rest}");
                break;
            }
            let seg = Segment::of(raw);
            let text: Cow<'_, str> = if let Segment::Placeholder(p) = seg {
                p
            } else if !self.positions.contains_key(&template) && self.positions.len() >= max_parents
            {
                seg.fallback()
            } else {
                // The parent's key is cloned only when it is new.
                let position = match self.positions.get_mut(&template) {
                    Some(position) => position,
                    None => self.positions.entry(template.clone()).or_default(),
                };
                match position.fate(&seg, depth == 0, config) {
                    Fate::Keep(text) => text.into(),
                    Fate::Fallback => seg.fallback(),
                    Fate::Collapse => {
                        position.collapsed = true;
                        let words = std::mem::take(&mut position.words);
                        self.retire(&template, &words, config);
                        collapsed += 1;
                        VAR.into()
                    }
                }
            };
            template.push('/');
            template.push_str(&text);
        }
        if template.is_empty() {
            template.push('/');
        }
        (template, collapsed)
    }

    /// Removes every route and position under `parent`/`word` for the
    /// `words` of a collapsed position (a pattern's route stays): they no
    /// longer count against --max-routes, and those paths now file under
    /// `parent/{var}`.
    fn retire(&mut self, parent: &str, words: &FxHashSet<Box<str>>, config: &RouteConfig) {
        let under = |template: &str| {
            template
                .strip_prefix(parent)
                .and_then(|rest| rest.strip_prefix('/'))
                .map(|rest| rest.split_once('/').map_or(rest, |(first, _)| first))
                .is_some_and(|first| words.contains(first))
        };
        let pattern = |template: &str| config.patterns.iter().any(|p| *p.text == *template);
        self.routes.retain(|r| !under(r) || pattern(r));
        self.positions.retain(|key, _| !under(key));
    }
}
