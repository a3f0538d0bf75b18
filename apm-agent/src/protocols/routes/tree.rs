//! One service's routes, and the tree of what each position of its paths
//! has held: where a position that takes many distinct words becomes
//! `{var}`, and the routes its words made are retired.

use std::{borrow::Cow, sync::Arc};

use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    MAX_DEPTH, RouteConfig,
    segments::{Segment, VAR},
};

#[derive(Default)]
pub(super) struct ServiceRoutes {
    pub routes: FxHashSet<Arc<str>>,
    /// The position of a path's first segment.
    root: Node,
    /// Nodes below the root.
    nodes: usize,
}

/// A position of the service's paths: the segment after one parent
/// template, and the template forms it has taken.
#[derive(Default)]
struct Node {
    /// By template segment (`orders`, `{id}`, `app.js`, `{var}.js`), the
    /// position after it.
    children: FxHashMap<Box<str>, Node>,
    /// Children that are words (not versions, not at the root), at most
    /// `max_words`.
    words: usize,
    /// Children that are versions, file names or root words, at most
    /// `max_children`.
    kept: usize,
    /// One word more than `max_words` came: every word here is `{var}`.
    collapsed: bool,
    /// Routes whose template ends here or leaves the tree here.
    routes: Vec<Arc<str>>,
}

impl Node {
    /// The template form of `seg` here, counted if it is new; `None` when
    /// it is one word too many, so the position must collapse.
    fn place<'a>(
        &mut self,
        seg: &Segment<'a>,
        root: bool,
        grow: bool,
        config: &RouteConfig,
    ) -> Option<Cow<'a, str>> {
        let text = match *seg {
            Segment::Word(s) | Segment::Version(s) | Segment::File(s, _) => s,
            Segment::Placeholder(_) => return Some(seg.fallback()),
        };
        let word = matches!(seg, Segment::Word(_)) && !root;
        if word && self.collapsed {
            return Some(VAR.into());
        }
        if self.children.contains_key(text) {
            return Some(text.into());
        }
        let (count, max) = if word {
            (&mut self.words, config.max_words)
        } else {
            (&mut self.kept, config.max_children)
        };
        if word && *count >= max {
            return None;
        }
        if !grow || *count >= max {
            return Some(seg.fallback());
        }
        *count += 1;
        Some(text.into())
    }

    /// The position after `key`, made if it is new and `grow`.
    fn child(&mut self, key: &str, grow: bool) -> Option<(&mut Node, bool)> {
        let new = !self.children.contains_key(key);
        if new {
            if !grow {
                return None;
            }
            self.children.insert(key.into(), Node::default());
        }
        self.children.get_mut(key).map(|n| (n, new))
    }

    /// Makes every word here `{var}` from now on: the word children go,
    /// with everything beneath them, and their routes leave `routes` (a
    /// pattern's stays). Returns the number of nodes removed.
    fn collapse(&mut self, routes: &mut FxHashSet<Arc<str>>, config: &RouteConfig) -> usize {
        self.collapsed = true;
        self.words = 0;
        let mut folded = Vec::new();
        self.children.retain(|key, child| {
            let word = matches!(Segment::of(key), Segment::Word(_));
            if word {
                folded.push(std::mem::take(child));
            }
            !word
        });
        let mut removed = 0;
        while let Some(node) = folded.pop() {
            removed += 1;
            for route in &node.routes {
                if !config.patterns.iter().any(|p| p.text == *route) {
                    routes.remove(route);
                }
            }
            folded.extend(node.children.into_values());
        }
        removed
    }
}

impl ServiceRoutes {
    /// The template of a path's `segments` (user patterns already tried),
    /// learning what each position holds, and how many positions it
    /// collapsed.
    pub fn template(&mut self, segments: &[&str], config: &RouteConfig) -> (String, u32) {
        // Nodes per service, so a flood of distinct paths cannot grow the
        // tree without bound.
        let max_nodes = config.max_routes.saturating_mul(4).max(16);
        let Self {
            routes,
            root,
            nodes,
        } = self;
        let mut collapsed = 0;
        let mut template = String::with_capacity(64);
        // None once the path leaves the tree (no room for a new node):
        // from there on, only placeholders.
        let mut node = Some(root);
        for (depth, raw) in segments.iter().enumerate() {
            if depth == MAX_DEPTH {
                template.push_str("/{rest}");
                break;
            }
            let seg = Segment::of(raw);
            let grow = *nodes < max_nodes;
            let text = match node.as_deref_mut() {
                None => seg.fallback(),
                Some(n) => match n.place(&seg, depth == 0, grow, config) {
                    Some(text) => text,
                    None => {
                        *nodes = nodes.saturating_sub(n.collapse(routes, config));
                        collapsed += 1;
                        VAR.into()
                    }
                },
            };
            template.push('/');
            template.push_str(&text);
            let grow = *nodes < max_nodes;
            node = node.and_then(|n| n.child(&text, grow)).map(|(n, new)| {
                *nodes += usize::from(new);
                n
            });
        }
        if template.is_empty() {
            template.push('/');
        }
        (template, collapsed)
    }

    /// Adds a route, known where its template leaves the tree so that a
    /// collapse above it retires it.
    pub fn insert(&mut self, template: Arc<str>) {
        self.walk(&template, |node, last| {
            if last {
                node.routes.push(template.clone());
            }
        });
        self.routes.insert(template);
    }

    /// Removes a route.
    pub fn remove(&mut self, template: &str) {
        self.routes.remove(template);
        // On every node of its path: it was registered where the tree
        // ended then, and the tree may have grown since.
        self.walk(template, |node, _| {
            node.routes.retain(|r| **r != *template);
        });
    }

    /// Follows `template` down the tree as far as it goes, running `f` on
    /// each node and whether it is the last.
    fn walk(&mut self, template: &str, mut f: impl FnMut(&mut Node, bool)) {
        let mut node = &mut self.root;
        let mut pieces = template.split('/').filter(|p| !p.is_empty());
        loop {
            let Some(piece) = pieces.next().filter(|p| node.children.contains_key(*p)) else {
                f(node, true);
                return;
            };
            f(node, false);
            match node.children.get_mut(piece) {
                Some(next) => node = next,
                None => return,
            }
        }
    }
}

#[cfg(test)]
impl ServiceRoutes {
    /// Panics unless the tree agrees with itself and with `routes`: each
    /// templated route registered once, the node count right, and no
    /// position below the root over `max_words` words.
    pub fn check(&self, config: &RouteConfig) {
        fn visit(
            node: &Node,
            depth: usize,
            config: &RouteConfig,
            seen: &mut Vec<Arc<str>>,
        ) -> usize {
            let words = node
                .children
                .keys()
                .filter(|k| depth > 0 && matches!(Segment::of(k), Segment::Word(_)))
                .count();
            assert_eq!(words, node.words, "words counted");
            assert!(words <= config.max_words);
            assert!(!node.collapsed || words == 0);
            seen.extend(node.routes.iter().cloned());
            let below: usize = node
                .children
                .values()
                .map(|c| visit(c, depth + 1, config, seen))
                .sum();
            node.children.len() + below
        }
        let mut seen = Vec::new();
        assert_eq!(visit(&self.root, 0, config, &mut seen), self.nodes);
        seen.sort();
        let mut want: Vec<Arc<str>> = self
            .routes
            .iter()
            .filter(|r| !config.patterns.iter().any(|p| p.text == **r))
            .cloned()
            .collect();
        want.sort();
        assert_eq!(seen, want);
    }
}
