//! Least privilege per route: `allow` rules (`METHOD /path/glob`), a token-bucket `rate` and a
//! `max_in_flight` cap, all checked before anything is forwarded. Rules are compiled once per
//! config; matching walks the path in place, without allocating.
//!
//! Paths are matched after the prefix strip and after dot segments are resolved (the router
//! does that, and refuses encoded dot segments). Within a segment, percent-escapes of
//! unreserved characters match their character (`rep%6fs` is `repos`); an encoded slash
//! (`%2F`) is never a separator, so `repos%2Fx` is one segment that no `/repos/...` rule names.
//!
//! An upstream may read a path otherwise, though: many decode `%2F` before routing (so
//! `public/..%2Fadmin` is `/admin` to them), and some (Tomcat, Spring) take `..;x` for `..`.
//! On a route with rules, a path such a reading would change is refused outright
//! ([`AllowList::check_path`]), and a method-override header must name a method the rules
//! permit as well ([`METHOD_OVERRIDES`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::rules::{AllowRule, Segment as Seg};
use crate::http1::Fields;

/// One `METHOD /path/glob` rule, compiled from its syntax ([`AllowRule`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None` for `*`.
    method: Option<Method>,
    segs: Box<[Seg]>,
}

impl From<AllowRule> for Rule {
    fn from(rule: AllowRule) -> Rule {
        Rule { method: rule.method, segs: rule.segments.into() }
    }
}

impl Rule {
    /// Whether `method` and `path` (starting with `/`, or empty for the route's root) match.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let path = path.strip_prefix('/').unwrap_or(path);
        match_segs(&self.segs, path)
    }
}

/// Matches glob segments against a `/`-separated path (without its leading `/`).
fn match_segs(segs: &[Seg], path: &str) -> bool {
    match segs.split_first() {
        None => path.is_empty(),
        Some((Seg::Any, rest)) => {
            // Zero segments, then each further cut.
            if rest.is_empty() {
                return true;
            }
            if match_segs(rest, path) {
                return true;
            }
            let mut p = path;
            while let Some((_, tail)) = p.split_once('/') {
                if match_segs(rest, tail) {
                    return true;
                }
                p = tail;
            }
            false
        }
        Some((seg, rest)) => {
            let (head, tail, more) = match path.split_once('/') {
                Some((h, t)) => (h, t, true),
                None => (path, "", false),
            };
            let ok = match seg {
                Seg::One => true,
                Seg::Literal(l) => segment_eq(head, l),
                Seg::Any => unreachable!(),
            };
            ok && if more { match_segs(rest, tail) } else { rest.is_empty() || rest == [Seg::Any] }
        }
    }
}

/// Compares a path segment with a literal, decoding percent-escapes of unreserved characters
/// in the segment as it goes (others, `%2F` among them, stay as written).
fn segment_eq(segment: &str, literal: &str) -> bool {
    let s = segment.as_bytes();
    let l = literal.as_bytes();
    let (mut i, mut j) = (0, 0);
    while i < s.len() {
        let c = if s[i] == b'%' {
            match (hex(s.get(i + 1)), hex(s.get(i + 2))) {
                (Some(h), Some(lo)) => {
                    let b = h * 16 + lo;
                    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                        i += 3;
                        b
                    } else {
                        i += 1;
                        b'%'
                    }
                }
                _ => {
                    i += 1;
                    b'%'
                }
            }
        } else {
            i += 1;
            s[i - 1]
        };
        if j >= l.len() || l[j] != c {
            return false;
        }
        j += 1;
    }
    j == l.len()
}

fn hex(b: Option<&u8>) -> Option<u8> {
    let b = *b?;
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A route's allow-list; empty means everything is allowed.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    rules: Vec<Rule>,
    /// `allow_encoded_slash`: a segment may hold `%2F`.
    encoded_slash: bool,
}

/// Headers some frameworks take the request's method from, instead of its own.
pub const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-method-override", "x-http-method"];

impl AllowList {
    pub fn new(rules: Vec<Rule>) -> AllowList {
        AllowList { rules, encoded_slash: false }
    }

    /// Lets a segment hold an encoded slash (`allow_encoded_slash = true`).
    pub fn with_encoded_slash(mut self, yes: bool) -> AllowList {
        self.encoded_slash = yes;
        self
    }

    /// No rules: everything is allowed, and none of the checks below apply.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether `path` reads the same to an upstream that decodes `%2F` or takes `;`
    /// parameters off dot segments: no `.`/`..` segment with parameters, and no encoded slash
    /// in a segment (unless `allow_encoded_slash`, and then none beside a dot segment). Also
    /// what keeps `*` from matching a segment holding `%2F` without `allow_encoded_slash`.
    pub fn check_path(&self, path: &str) -> bool {
        path.split('/').all(|seg| {
            if seg.split(';').next().is_some_and(is_dot) && seg.contains(';') {
                return false;
            }
            if !contains_encoded_slash(seg) {
                return true;
            }
            self.encoded_slash && split_encoded_slash(seg).all(|piece| !piece.split(';').next().is_some_and(is_dot))
        })
    }

    #[inline]
    pub fn allows(&self, method: &Method, path: &str) -> bool {
        self.rules.is_empty() || self.rules.iter().any(|r| r.matches(method, path))
    }
}

fn contains_encoded_slash(seg: &str) -> bool {
    seg.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'f')
}

/// The pieces of a segment between its encoded slashes.
fn split_encoded_slash(seg: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(seg);
    std::iter::from_fn(move || {
        let s = rest?;
        let b = s.as_bytes();
        match (0..b.len().saturating_sub(2)).find(|&i| b[i] == b'%' && b[i + 1] == b'2' && (b[i + 2] | 0x20) == b'f') {
            Some(i) => {
                rest = Some(&s[i + 3..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// `.` or `..`, a dot written or encoded (`%2e`).
fn is_dot(piece: &str) -> bool {
    let lower = piece.to_ascii_lowercase();
    matches!(lower.replace("%2e", ".").as_str(), "." | "..")
}

/// A token bucket: `burst` requests at once, refilled at `rate` per second. Fails fast.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64) -> Bucket {
        Bucket { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&self) -> Result<(), Duration> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let tokens = (st.0 + now.duration_since(st.1).as_secs_f64() * self.rate).min(self.burst);
        st.1 = now;
        if tokens >= 1.0 {
            st.0 = tokens - 1.0;
            Ok(())
        } else {
            st.0 = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

/// A route's policy, compiled from its config: what may pass, how fast, how many at once.
#[derive(Debug, Default)]
pub struct Policy {
    allow: AllowList,
    bucket: Option<Bucket>,
    /// `max_in_flight`: one permit per request between admission and its answer's head.
    in_flight: Option<Arc<Semaphore>>,
}

impl Policy {
    pub fn new(allow: AllowList, bucket: Option<Bucket>, max_in_flight: Option<usize>) -> Policy {
        // More permits than a semaphore holds would be no cap at all: the largest it holds is one.
        let in_flight = max_in_flight.map(|max| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))));
        Policy { allow, bucket, in_flight }
    }
}

/// A request's header fields, wherever the listener kept them: the own loop's fields as they
/// came, or a header map.
#[derive(Clone, Copy)]
pub enum Headers<'a> {
    Map(&'a HeaderMap),
    Fields(&'a Fields),
}

impl Headers<'_> {
    /// Whether every value of the field `name` satisfies `ok`.
    fn all(self, name: &str, mut ok: impl FnMut(&[u8]) -> bool) -> bool {
        match self {
            Headers::Map(map) => map.get_all(name).iter().all(|v| ok(v.as_bytes())),
            Headers::Fields(fields) => fields.values(name.as_bytes()).all(ok),
        }
    }
}

/// An admitted request's hold on its route's in-flight cap, released when dropped (its
/// answer's head is back, it failed, or the client went away).
#[derive(Debug, Default)]
pub struct Permit(Option<OwnedSemaphorePermit>);

impl Permit {
    /// Gives the in-flight slot back now.
    pub fn release(&mut self) {
        self.0 = None;
    }
}

/// Why policy refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// A path an upstream could read otherwise than the rules do ([`AllowList::check_path`]).
    BadPath,
    /// No `allow` rule permits the method (or a method-override header's) for the path.
    NotAllowed,
    /// `max_in_flight` requests are upstream already.
    InFlight,
    /// The `rate` bucket is empty; a token is due in `wait`.
    RateLimited { wait: Duration },
}

/// Admission: the allow rules (with the path and method-override checks they bring), then the
/// in-flight cap, then the rate. `path` is the request's path past the route's prefix. Nothing
/// is taken from the bucket for a request the rules or the cap refuse.
#[inline]
pub fn admit(policy: &Policy, method: &Method, path: &str, headers: Headers<'_>) -> Result<Permit, Denial> {
    let allow = &policy.allow;
    if !allow.is_empty() {
        if !allow.check_path(path) {
            return Err(Denial::BadPath);
        }
        if !allow.allows(method, path) || !overrides_allowed(allow, path, headers) {
            return Err(Denial::NotAllowed);
        }
    }
    let permit = match &policy.in_flight {
        Some(cap) => Some(cap.clone().try_acquire_owned().map_err(|_| Denial::InFlight)?),
        None => None,
    };
    if let Some(bucket) = &policy.bucket {
        bucket.take().map_err(|wait| Denial::RateLimited { wait })?;
    }
    Ok(Permit(permit))
}

/// Whether every method-override header the request carries names a method `allow` permits
/// for `path` (a value that is no method is refused too).
fn overrides_allowed(allow: &AllowList, path: &str, headers: Headers<'_>) -> bool {
    let permitted = |value: &[u8]| Method::from_bytes(value.trim_ascii()).is_ok_and(|m| allow.allows(&m, path));
    METHOD_OVERRIDES.iter().all(|name| headers.all(name, permitted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(rules: &[&str], method: &str, path: &str) -> bool {
        let list = AllowList::new(rules.iter().map(|r| AllowRule::parse(r).unwrap().into()).collect());
        list.allows(&method.parse().unwrap(), path)
    }

    #[test]
    fn globs_match_whole_segments() {
        let r = ["GET /repos/**", "POST /repos/*/issues"];
        assert!(allows(&r, "GET", "/repos"));
        assert!(allows(&r, "GET", "/repos/a/b/c"));
        assert!(!allows(&r, "GET", "/reposx/a"));
        assert!(allows(&r, "POST", "/repos/a/issues"));
        assert!(!allows(&r, "POST", "/repos/a/b/issues"));
        assert!(!allows(&r, "POST", "/repos/a/issues/1"));
        assert!(!allows(&r, "DELETE", "/repos/a"));
        assert!(!allows(&r, "GET", "/user"));
        assert!(allows(&["* /a/**/z"], "PATCH", "/a/z"));
        assert!(allows(&["* /a/**/z"], "PATCH", "/a/b/c/z"));
        assert!(!allows(&["* /a/**/z"], "PATCH", "/a/b/c"));
        assert!(allows(&[], "DELETE", "/anything"));
    }

    #[test]
    fn encodings_do_not_slip_past() {
        let r = ["GET /repos/**"];
        assert!(allows(&r, "GET", "/rep%6fs/x"), "an encoded unreserved character is that character");
        assert!(allows(&r, "GET", "/rep%6Fs/x"));
        assert!(!allows(&r, "GET", "/repos%2Fx"), "an encoded slash is no separator");
        assert!(!allows(&r, "GET", "//repos/x"), "an empty first segment is not `repos`");

        assert!(!allows(&r, "GET", "/repo%"));
    }

    #[test]
    fn paths_an_upstream_could_read_otherwise_are_refused_on_routes_with_rules() {
        let strict = AllowList::new(vec![AllowRule::parse("GET /public/**").unwrap().into()]);
        let slashes = strict.clone().with_encoded_slash(true);
        for bad in
            ["/public/..%2fadmin/x", "/public/..%2Fadmin%2Fsecret.txt", "/items/1%2fdelete", "/a/..;/b", "/a/.;x/b"]
        {
            assert!(!strict.check_path(bad), "{bad}");
        }
        for bad in ["/public/..%2fadmin", "/public/x%2F..", "/public/x%2F%2e%2e%2Fy", "/p/..;x%2Fy"] {
            assert!(!slashes.check_path(bad), "{bad}");
        }
        for good in ["/public/a/b", "/public/a;v=1", "/public/..x", "/public/a%20b", ""] {
            assert!(strict.check_path(good), "{good}");
        }
        assert!(slashes.check_path("/projects/group%2Fproject/issues"));
        assert!(!strict.check_path("/projects/group%2Fproject/issues"));
    }

    #[test]
    fn buckets() {
        let b = Bucket::new(1.0, 3.0);
        assert!(b.take().is_ok() && b.take().is_ok() && b.take().is_ok());
        let wait = b.take().unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
    }

    fn request(rules: &[&str], cap: Option<usize>) -> Policy {
        let allow = AllowList::new(rules.iter().map(|r| AllowRule::parse(r).unwrap().into()).collect());
        Policy::new(allow, None, cap)
    }

    #[test]
    fn in_flight_caps_and_releases() {
        let p = request(&[], Some(2));
        let none = HeaderMap::new();
        let get = |p: &Policy| admit(p, &Method::GET, "/x", Headers::Map(&none));
        let mut a = get(&p).unwrap();
        let _b = get(&p).unwrap();
        assert_eq!(get(&p).unwrap_err(), Denial::InFlight);
        a.release();
        let c = get(&p).unwrap();
        assert_eq!(get(&p).unwrap_err(), Denial::InFlight);
        drop(c);
        assert!(get(&p).is_ok());
        // A cap above what a semaphore holds is no cap, not a panic.
        assert!(get(&request(&[], Some(usize::MAX))).is_ok());
    }

    #[test]
    fn admission_checks_rules_then_cap_then_rate() {
        let none = HeaderMap::new();
        let mut p = request(&["GET /ok/**"], Some(1));
        p.bucket = Some(Bucket::new(1.0, 1.0));
        assert_eq!(admit(&p, &Method::GET, "/ok/..;/x", Headers::Map(&none)).unwrap_err(), Denial::BadPath);
        assert_eq!(admit(&p, &Method::POST, "/ok/x", Headers::Map(&none)).unwrap_err(), Denial::NotAllowed);
        let mut over = HeaderMap::new();
        over.insert("x-http-method-override", "DELETE".parse().unwrap());
        assert_eq!(admit(&p, &Method::GET, "/ok/x", Headers::Map(&over)).unwrap_err(), Denial::NotAllowed);
        // Refusals by the rules took nothing from the bucket; a refusal by the cap neither.
        let held = admit(&p, &Method::GET, "/ok/x", Headers::Map(&none)).unwrap();
        assert_eq!(admit(&p, &Method::GET, "/ok/x", Headers::Map(&none)).unwrap_err(), Denial::InFlight);
        drop(held);
        assert!(matches!(admit(&p, &Method::GET, "/ok/x", Headers::Map(&none)), Err(Denial::RateLimited { .. })));
    }
}
