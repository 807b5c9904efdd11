//! A broker given as several endpoints (`IDEM_AMQP_URL` holding a list): the
//! nodes of one RabbitMQ cluster, tried in turn when a session is (re)built.
//!
//! The list is comma-separated, but only a comma followed by `amqp://` or
//! `amqps://` (any case) separates two endpoints: RFC 3986 allows a raw comma
//! in a password, and a split there would connect to half a URL and print the
//! other half. Whitespace and `;` before a scheme separate too, so a list
//! written one URL per line (a YAML block) is read as the list it is, not as
//! one URL whose path holds the others' passwords. Each connect starts at a random endpoint and walks the rest in order,
//! so replicas started together spread over the nodes instead of all landing on
//! the first, and one that loses its node moves on to the next without waiting
//! for the backoff (the backoff paces whole rounds).

use std::fmt::Display;
use std::future::Future;

use rand::Rng;

/// The endpoints of `list`, in the order written. Whitespace around each is
/// dropped; empty entries (`a,,b` is not one: only `,amqp` splits) are not
/// produced, so a lone URL comes back as itself.
pub fn split(list: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let separators = list.match_indices(|c: char| c == ',' || c == ';' || c.is_whitespace());
    for (at, separator) in separators {
        if at < start {
            continue;
        }
        let rest = list[at + separator.len()..].trim_start();
        if starts_with_scheme(rest) {
            out.push(list[start..at].trim());
            start = at + separator.len();
        }
    }
    out.push(list[start..].trim());
    out.retain(|endpoint| !endpoint.is_empty());
    out
}

/// Whether `text` starts with `amqp://` or `amqps://`, in any case (URL
/// schemes are case-insensitive).
pub fn starts_with_scheme(text: &str) -> bool {
    let lower = |n: usize| text.get(..n).map(str::to_ascii_lowercase);
    lower(7).as_deref() == Some("amqp://") || lower(8).as_deref() == Some("amqps://")
}

/// Whether `endpoint` holds a second URL (`://` after its own scheme's): a
/// list written with a separator [`split`] does not know, or another scheme.
pub fn holds_another(endpoint: &str) -> bool {
    endpoint
        .find("://")
        .is_some_and(|at| endpoint[at + 3..].contains("://"))
}

/// The endpoints of `list` starting at a random one, the others following in
/// the written order (wrapping around).
pub fn rotated(list: &str) -> Vec<&str> {
    let mut endpoints = split(list);
    if endpoints.len() > 1 {
        let first = rand::rng().random_range(0..endpoints.len());
        endpoints.rotate_left(first);
    }
    endpoints
}

/// Every endpoint of a list failed: each one's error, in the order tried.
#[derive(Debug)]
pub struct AllFailed<E> {
    /// `(endpoint as shown, its error)` for all but the last tried.
    pub others: Vec<(String, E)>,
    /// The last endpoint tried, and its error.
    pub last: (String, E),
}

impl<E> AllFailed<E> {
    /// How many endpoints were tried.
    pub fn tried(&self) -> usize {
        self.others.len() + 1
    }

    /// The last endpoint's error: the one a single-endpoint caller would
    /// have seen (print `self` first for the others).
    pub fn into_last(self) -> E {
        self.last.1
    }

    /// For a caller that tells "wait and retry" from "fix the settings": the
    /// first error if every endpoint's is `permanent`, else the last that is
    /// not. One node refusing (a certificate of its own, a login not yet
    /// replicated) while another is merely down is worth waiting for: only
    /// a refusal from every node is a setting to fix.
    pub fn into_verdict(self, permanent: impl Fn(&E) -> bool) -> E {
        let Self { others, last } = self;
        if !permanent(&last.1) {
            return last.1;
        }
        let mut others: Vec<E> = others.into_iter().map(|(_, error)| error).collect();
        if let Some(at) = others.iter().rposition(|error| !permanent(error)) {
            return others.swap_remove(at);
        }
        if others.is_empty() {
            last.1
        } else {
            others.swap_remove(0)
        }
    }
}

impl<E: Display> Display for AllFailed<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (shown, error) in &self.others {
            write!(f, "{shown}: {error:#}; ")?;
        }
        write!(f, "{}: {:#}", self.last.0, self.last.1)
    }
}

/// `connect` to each endpoint of `list` in [`rotated`] order until one
/// answers: its value and the endpoint it came from. `show` turns an endpoint
/// into what may be printed (without its password). An empty list is tried as
/// the empty string, so the caller's own error for a bad URL is the one seen.
pub async fn first_answering<'a, T, E, F, Fut>(
    list: &'a str,
    show: impl Fn(&str) -> String,
    mut connect: F,
) -> Result<(T, &'a str), AllFailed<E>>
where
    F: FnMut(&'a str) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let endpoints = rotated(list);
    let (last, rest) = endpoints
        .split_last()
        .map_or(("", &[][..]), |(last, rest)| (*last, rest));
    let mut others = Vec::new();
    for &endpoint in rest {
        match connect(endpoint).await {
            Ok(value) => return Ok(answered(value, endpoint, &others, &show)),
            Err(error) => {
                tracing::warn!(endpoint = %show(endpoint), error = %format!("{error:#}"), "broker endpoint did not answer; trying the next");
                others.push((show(endpoint), error));
            }
        }
    }
    match connect(last).await {
        Ok(value) => Ok(answered(value, last, &others, &show)),
        Err(error) => Err(AllFailed {
            others,
            last: (show(last), error),
        }),
    }
}

fn answered<'a, T, E>(
    value: T,
    endpoint: &'a str,
    failed: &[(String, E)],
    show: &impl Fn(&str) -> String,
) -> (T, &'a str) {
    if !failed.is_empty() {
        tracing::warn!(endpoint = %show(endpoint), failed = failed.len(), "broker endpoint answered after others failed");
    }
    (value, endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_comma_before_a_scheme_separates_endpoints() {
        assert_eq!(split("amqp://a:5672"), vec!["amqp://a:5672"]);
        assert_eq!(
            split("amqp://u:p@a:5672/%2f, amqps://u:p@b:5671/%2f,amqp://c"),
            vec![
                "amqp://u:p@a:5672/%2f",
                "amqps://u:p@b:5671/%2f",
                "amqp://c"
            ]
        );
        // A raw comma in a password stays in its URL.
        assert_eq!(
            split("amqp://u:p,w@a,amqp://u:p,amqp@b"),
            vec!["amqp://u:p,w@a", "amqp://u:p,amqp@b"]
        );
        assert_eq!(split(" amqp://a ,"), vec!["amqp://a ,"]);
        // One per line, `;`, spaces, any case of the scheme.
        assert_eq!(
            split("amqp://u:p@a\n  AMQPS://u:p@b;amqp://c amqp://d"),
            vec!["amqp://u:p@a", "AMQPS://u:p@b", "amqp://c", "amqp://d"]
        );
        assert!(holds_another("amqp://u:p@a/%2famqp://u:q@b"));
        assert!(!holds_another("amqp://u:p,w@a:5672/%2f"));
        assert!(split("").is_empty());
        assert!(split(" ").is_empty());
    }

    #[test]
    fn rotation_keeps_every_endpoint_once_in_cyclic_order() {
        let list = "amqp://a,amqp://b,amqp://c";
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let order = rotated(list);
            let at = ["amqp://a", "amqp://b", "amqp://c"]
                .iter()
                .position(|e| *e == order[0])
                .expect("a known endpoint");
            for (i, endpoint) in order.iter().enumerate() {
                assert_eq!(
                    *endpoint,
                    ["amqp://a", "amqp://b", "amqp://c"][(at + i) % 3]
                );
            }
            firsts.insert(order[0]);
        }
        assert_eq!(firsts.len(), 3, "each endpoint comes first sometimes");
    }

    #[tokio::test]
    async fn the_first_answering_endpoint_wins_and_failures_are_all_reported() {
        let list = "amqp://down1,amqp://up,amqp://down2";
        for _ in 0..20 {
            let (value, from) = first_answering(list, str::to_owned, |e| async move {
                if e.contains("up") {
                    Ok(e.len())
                } else {
                    Err(format!("{e} refused"))
                }
            })
            .await
            .expect("one is up");
            assert_eq!((value, from), (9, "amqp://up"));
        }
        let failed = first_answering("amqp://x,amqp://y", str::to_owned, |e| async move {
            Err::<(), _>(format!("{e} refused"))
        })
        .await
        .expect_err("none is up");
        assert_eq!(failed.tried(), 2);
        let shown = failed.to_string();
        assert!(shown.contains("amqp://x: amqp://x refused"), "{shown}");
        assert!(shown.contains("amqp://y: amqp://y refused"), "{shown}");
        let order: Vec<String> = failed.others.iter().map(|(_, e)| e.clone()).collect();
        let first = order[0].clone();
        assert_eq!(
            failed.into_verdict(|e| e.starts_with("amqp://y")),
            "amqp://x refused",
            "one node's permanent refusal beside another's outage: the outage ({first} first)"
        );
        let failed = first_answering("amqp://x,amqp://y", str::to_owned, |e| async move {
            Err::<(), _>(format!("{e} refused"))
        })
        .await
        .expect_err("none is up");
        let first = failed.others[0].1.clone();
        assert_eq!(
            failed.into_verdict(|_| true),
            first,
            "all permanent: the first"
        );
    }

    #[tokio::test]
    async fn an_empty_list_is_tried_as_given() {
        let failed = first_answering("", str::to_owned, |e| async move {
            Err::<(), _>(format!("bad url {e:?}"))
        })
        .await
        .expect_err("empty");
        assert_eq!(failed.into_last(), "bad url \"\"");
    }
}
