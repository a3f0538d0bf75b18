//! Parsed /metrics text: samples of the Prometheus text format, looked up
//! by name and labels.

use std::collections::BTreeMap;

/// One sample of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parsed /metrics text.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_sample)
            .collect();
        Self {
            samples,
            text: text.to_owned(),
        }
    }

    /// (route, status) → requests of `service`, from the duration
    /// histogram's counts.
    pub fn route_counts(&self, service: &str) -> BTreeMap<(String, u16), u64> {
        self.matching(
            "http_server_request_duration_seconds_count",
            &[("service_name", service)],
        )
        .map(|s| {
            let route = s.labels["http_route"].clone();
            let status = s.labels["http_response_status_code"]
                .parse()
                .expect("status");
            ((route, status), s.value as u64)
        })
        .collect()
    }

    /// The sum of every series of `name` for `service`.
    pub fn sum(&self, name: &str, service: &str) -> f64 {
        self.matching(name, &[("service_name", service)])
            .map(|s| s.value)
            .sum()
    }

    /// The value of `name` whose labels include all of `labels`; panics
    /// when several series match (the caller's labels are not specific).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(found.len() <= 1, "{name}{labels:?} matches {found:?}");
        found.first().map(|s| s.value)
    }

    /// The values of `name`'s series with `labels`, by the values of its
    /// `keys` labels, joined with spaces ("GET 200").
    pub fn tally(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        keys: &[&str],
    ) -> BTreeMap<String, u64> {
        self.matching(name, labels)
            .map(|s| {
                let key: Vec<&str> = keys
                    .iter()
                    .map(|k| s.labels.get(*k).map_or("", String::as_str))
                    .collect();
                (key.join(" "), s.value as u64)
            })
            .collect()
    }

    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => {
                    let (_, escaped) = chars.next()?;
                    value.push(if escaped == 'n' { '\n' } else { escaped });
                }
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_escaped_labels() {
        let m = Metrics::parse("# HELP x y\nup 1\nreq_total{a=\"b\",c=\"d\\\"e\"} 42\n");
        assert_eq!(m.value("up", &[]), Some(1.0));
        assert_eq!(m.value("req_total", &[("c", "d\"e")]), Some(42.0));
        assert_eq!(m.value("req_total", &[("a", "z")]), None);
    }
}
