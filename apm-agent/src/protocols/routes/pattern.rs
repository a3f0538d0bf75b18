//! User-supplied route patterns (`--route /users/{id}/orders`).

use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub(super) text: Arc<str>,
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

    pub(super) fn matches(&self, segments: &[&str]) -> bool {
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
