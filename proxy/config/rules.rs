//! The syntax of a route's least-privilege settings: `allow` rules (`METHOD /path/glob`) and
//! `rate` (`N/s`), parsed into plain data. Validation reports their problems with key and line;
//! `policy` compiles the runtime matcher from [`AllowRule`].

use http::Method;

/// One segment of a rule's path glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: any number of segments, none included.
    Any,
}

/// One `allow` rule: `METHOD /path/glob`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// `None` for `*`.
    pub method: Option<Method>,
    /// The glob's segments, after its leading `/`.
    pub segments: Vec<Segment>,
}

/// Why a rule is refused, or warned about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleProblem {
    Invalid(String),
    /// Valid, but no request can match it.
    NeverMatches(String),
}

impl AllowRule {
    /// Parses `METHOD /path/glob`: a known method in upper case or `*`, then a path glob whose
    /// `*` (one segment) and `**` (any number) stand for whole segments.
    pub fn parse(text: &str) -> Result<AllowRule, RuleProblem> {
        let (method, glob) = text.split_once(' ').ok_or_else(|| {
            RuleProblem::Invalid(format!("{text:?}: expected \"METHOD /path/glob\", e.g. \"GET /repos/**\""))
        })?;
        let method = match method {
            "*" => None,
            m if m.bytes().all(|b| b.is_ascii_uppercase()) && !m.is_empty() => {
                let parsed = Method::from_bytes(m.as_bytes())
                    .map_err(|_| RuleProblem::Invalid(format!("{m:?} is not an HTTP method")))?;
                const KNOWN: &[&str] =
                    &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"];
                if !KNOWN.contains(&m) {
                    return Err(RuleProblem::Invalid(format!(
                        "unknown method {m:?} (one of {} or *)",
                        KNOWN.join(", ")
                    )));
                }
                Some(parsed)
            }
            m => return Err(RuleProblem::Invalid(format!("{m:?} is not an HTTP method (upper case, or *)"))),
        };
        let glob = glob.trim();
        if !glob.starts_with('/') {
            return Err(RuleProblem::Invalid(format!("{glob:?}: the path glob starts with `/`")));
        }
        if glob.contains(['?', '#', ' ']) {
            return Err(RuleProblem::Invalid(format!("{glob:?}: no query, fragment or space in a path glob")));
        }
        let mut segments = Vec::new();
        for s in glob[1..].split('/') {
            segments.push(match s {
                "**" => Segment::Any,
                "*" => Segment::One,
                s if s.contains('*') => {
                    return Err(RuleProblem::Invalid(format!("{glob:?}: `*` and `**` stand for whole segments only")))
                }
                s => Segment::Literal(s.to_owned()),
            });
        }
        let rule = AllowRule { method, segments };
        for s in &rule.segments {
            if let Segment::Literal(l) = s {
                if l == "." || l == ".." {
                    return Err(RuleProblem::NeverMatches(format!(
                        "{glob:?}: paths are matched with dot segments resolved"
                    )));
                }
                if l.to_ascii_lowercase().contains("%2f") {
                    return Err(RuleProblem::NeverMatches(format!(
                        "{glob:?}: an encoded slash inside a segment never matches a separator"
                    )));
                }
            }
        }
        Ok(rule)
    }
}

/// `rate = "N/s"` (or `/m`, `/h`): requests per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (n, unit) = text.split_once('/').ok_or_else(|| format!("{text:?}: expected \"N/s\", \"N/m\" or \"N/h\""))?;
    let n: f64 = n.trim().parse().map_err(|_| format!("{text:?}: {n:?} is not a number"))?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        u => return Err(format!("{text:?}: unknown unit {u:?} (s, m or h)")),
    };
    if !(n > 0.0 && n.is_finite()) {
        return Err(format!("{text:?}: the rate must be above zero"));
    }
    Ok(n / per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rules_are_refused_and_dead_ones_flagged() {
        assert!(matches!(AllowRule::parse("FETCH /x"), Err(RuleProblem::Invalid(_))));
        assert!(matches!(AllowRule::parse("get /x"), Err(RuleProblem::Invalid(_))));
        assert!(matches!(AllowRule::parse("GET x"), Err(RuleProblem::Invalid(_))));
        assert!(matches!(AllowRule::parse("GET /a*b"), Err(RuleProblem::Invalid(_))));
        assert!(matches!(AllowRule::parse("GET /a/../b"), Err(RuleProblem::NeverMatches(_))));
        assert!(matches!(AllowRule::parse("GET /a%2fb"), Err(RuleProblem::NeverMatches(_))));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50/s").unwrap(), 50.0);
        assert_eq!(parse_rate("120/m").unwrap(), 2.0);
        assert_eq!(parse_rate("36 / hour").unwrap(), 0.01);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/d").is_err());
        assert!(parse_rate("x/s").is_err());
        assert!(parse_rate("5").is_err());
    }

    #[test]
    fn rules_parse_into_segments() {
        let rule = AllowRule::parse("* /repos/*/**").unwrap();
        assert_eq!(rule.method, None);
        assert_eq!(rule.segments, [Segment::Literal("repos".into()), Segment::One, Segment::Any]);
        assert_eq!(AllowRule::parse("PATCH /").unwrap().segments, [Segment::Literal(String::new())]);
    }
}
