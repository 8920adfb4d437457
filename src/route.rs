//! API Gateway resource paths (`/pets/{id}`, `/files/{proxy+}`) and the
//! `"/resource/path/METHOD"` keys of per-method throttles.

use std::borrow::Cow;

use http::Method;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param,
}

/// Why [`canonical`] refuses a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadPath {
    /// A control character, raw or percent-encoded (`%00`–`%1F`, `%7F`).
    Control,
    /// `;`, raw or `%3B`: a parameter delimiter to some servers (Java
    /// servlet containers drop `;...` from a segment), data to others.
    Semicolon,
    /// `\`, raw or `%5C`: a separator to some servers, data to others.
    Backslash,
    /// A `%` not followed by two hex digits.
    BadEscape,
}

/// The path the gateway matches and forwards, or why it refuses it.
///
/// - Refused: control characters, raw or percent-encoded (`%00`); `;` and
///   `%3B`, `\\` and `%5C` (servers disagree on what they mean, so a
///   variant could reach a resource under another name than the one that
///   was metered); a `%` without two hex digits.
/// - `%2F` is a `/` (as API Gateway reads it): it separates segments.
/// - Escapes of unreserved characters are decoded (`%66oo` is `foo`), the
///   others upper-cased (`%e2` is `%E2`).
/// - Empty and `.` segments are dropped, `..` removes the segment before
///   it; a trailing `/` is kept (upstreams that redirect `/dir` to `/dir/`
///   must not loop), and matching ignores it.
///
/// Case is kept: resource paths are case-sensitive, as in API Gateway.
/// Borrowed when there is nothing to do (the common case).
pub(crate) fn canonical(path: &str) -> Result<Cow<'_, str>, BadPath> {
    // One pass: no byte that needs decoding or refusing, no `//` or `/.`
    // (two `contains` searches cost more than the pass on a short path).
    let mut previous = 0u8;
    let plain = path.bytes().all(|b| {
        let dot_segment_or_empty = previous == b'/' && (b == b'/' || b == b'.');
        previous = b;
        !(b < 0x20 || b == 0x7f || b == b'%' || b == b';' || b == b'\\' || dot_segment_or_empty)
    });
    if plain {
        return Ok(Cow::Borrowed(path));
    }
    // Decode what has one reading, refuse what has two.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0..=0x1f | 0x7f => return Err(BadPath::Control),
            b';' => return Err(BadPath::Semicolon),
            b'\\' => return Err(BadPath::Backslash),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .ok_or(BadPath::BadEscape)?;
                let byte = u8::from_str_radix(hex, 16).map_err(|_| BadPath::BadEscape)?;
                match byte {
                    0..=0x1f | 0x7f => return Err(BadPath::Control),
                    b';' => return Err(BadPath::Semicolon),
                    b'\\' => return Err(BadPath::Backslash),
                    b'/' => decoded.push('/'),
                    b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => {
                        decoded.push(char::from(b))
                    }
                    b => {
                        decoded.push('%');
                        decoded.push_str(&format!("{b:02X}"));
                    }
                }
                i += 3;
            }
            _ => {
                // Copy up to the next byte that needs a look (keeps
                // multi-byte characters whole).
                let next = bytes[i..]
                    .iter()
                    .position(|&c| c < 0x20 || c == 0x7f || c == b'%' || c == b';' || c == b'\\')
                    .map_or(bytes.len(), |n| i + n);
                decoded.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || decoded.ends_with('/') {
        out.push('/');
    }
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// The path as routes see it: [`canonical`], or the path itself when
/// [`canonical`] refuses it (the layer refuses such requests before any
/// route is consulted).
pub(crate) fn normalize(path: &str) -> Cow<'_, str> {
    canonical(path).unwrap_or(Cow::Borrowed(path))
}

/// A segment's text as an upstream reads it: its `%XX` escapes decoded.
fn decoded_segment(segment: &str) -> Cow<'_, str> {
    if segment.contains('%') {
        percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
    } else {
        Cow::Borrowed(segment)
    }
}

/// A resource path template: literal segments, `{param}` segments matching
/// one segment, and a final greedy `{name+}` matching one or more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    segments: Vec<Segment>,
    greedy: bool,
}

impl PathTemplate {
    pub(crate) fn parse(template: &str) -> Result<Self> {
        let rest = template.strip_prefix('/').ok_or_else(|| {
            Error::bad_request(format!(
                "Invalid resource path '{template}': must start with '/'"
            ))
        })?;
        let mut segments = Vec::new();
        let mut greedy = false;
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            if greedy {
                return Err(Error::bad_request(format!(
                    "Invalid resource path '{template}': a greedy {{name+}} segment must be last"
                )));
            }
            if part.is_empty() {
                return Err(Error::bad_request(format!(
                    "Invalid resource path '{template}': empty segment {}",
                    i + 1
                )));
            }
            match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) if name.ends_with('+') && name.len() > 1 => greedy = true,
                Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                    segments.push(Segment::Param)
                }
                Some(_) => {
                    return Err(Error::bad_request(format!(
                        "Invalid resource path '{template}': bad parameter segment '{part}'"
                    )))
                }
                None => segments.push(Segment::Literal(decoded_segment(part).into())),
            }
        }
        Ok(Self { segments, greedy })
    }

    /// Whether the request path (without query) matches.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let rest = path.strip_prefix('/').unwrap_or(path);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut parts = rest.split('/').filter(|_| !rest.is_empty());
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Literal(lit), Some(part)) if **lit == *decoded_segment(part) => {}
                (Segment::Param, Some(part)) if !part.is_empty() => {}
                _ => return false,
            }
        }
        match parts.next() {
            None => !self.greedy,
            Some(first) => self.greedy && !first.is_empty(),
        }
    }

    /// Orders templates so the most specific one is tried first: more
    /// literal segments, then more segments, then non-greedy.
    fn specificity(&self) -> (usize, usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (literals, self.segments.len(), !self.greedy)
    }
}

/// A method on a resource path: `"/pets/{id}/GET"`, `"//GET"` for the root,
/// `*` or `ANY` for every method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MethodRoute {
    method: Option<Method>,
    path: PathTemplate,
}

impl MethodRoute {
    /// Parses an AWS method-throttle key, `"{resourcePath}/{httpMethod}"`.
    pub(crate) fn parse(key: &str) -> Result<Self> {
        let (path, method) = key.rsplit_once('/').ok_or_else(|| {
            Error::bad_request(format!(
                "Invalid method throttle key '{key}': expected '/resource/path/METHOD'"
            ))
        })?;
        // The root's key is "//GET": a key without its resource path
        // ("/GET") is refused, not read as the root's.
        Self::new(method, path).map_err(|e| {
            Error::bad_request(format!(
                "Invalid method throttle key '{key}': {}",
                e.message()
            ))
        })
    }

    /// A route from a method name (`*` or `ANY` for all) and a path template.
    pub(crate) fn new(method: &str, path: &str) -> Result<Self> {
        let method = match method {
            "*" | "ANY" => None,
            m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => Some(
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| Error::bad_request(format!("invalid HTTP method '{m}'")))?,
            ),
            m => return Err(Error::bad_request(format!("invalid HTTP method '{m}'"))),
        };
        Ok(Self {
            method,
            path: PathTemplate::parse(path)?,
        })
    }

    /// Whether the route matches; `path` must be [`normalize`]d.
    pub(crate) fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && self.path.matches(path)
    }

    /// Sorts routes most specific first, so the first match wins.
    pub(crate) fn sort_by_specificity<T>(routes: &mut [(Self, T)]) {
        routes.sort_by(|(a, _), (b, _)| {
            (b.path.specificity(), b.method.is_some())
                .cmp(&(a.path.specificity(), a.method.is_some()))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(key: &str) -> MethodRoute {
        MethodRoute::parse(key).unwrap()
    }

    #[test]
    fn literal_and_root_paths() {
        assert!(route("/pets/GET").matches(&Method::GET, "/pets"));
        assert!(route("/pets/GET").matches(&Method::GET, "/pets/"));
        assert!(!route("/pets/GET").matches(&Method::POST, "/pets"));
        assert!(!route("/pets/GET").matches(&Method::GET, "/pets/1"));
        assert!(route("//GET").matches(&Method::GET, "/"));
        assert!(!route("//GET").matches(&Method::GET, "/pets"));
    }

    #[test]
    fn params_match_one_segment() {
        let r = route("/pets/{id}/GET");
        assert!(r.matches(&Method::GET, "/pets/42"));
        assert!(!r.matches(&Method::GET, "/pets"));
        assert!(!r.matches(&Method::GET, "/pets/42/toys"));
    }

    #[test]
    fn greedy_matches_one_or_more_segments() {
        let r = route("/files/{proxy+}/*");
        assert!(r.matches(&Method::PUT, "/files/a"));
        assert!(r.matches(&Method::GET, "/files/a/b/c"));
        assert!(!r.matches(&Method::GET, "/files"));
        assert!(route("/{proxy+}/ANY").matches(&Method::GET, "/x/y"));
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        let r = route("/pets/{id}/GET");
        for path in [
            "/pets//1",
            "/pets/./1",
            "/x/../pets/1",
            "/pet%73/1",
            "/pets/1/",
        ] {
            assert!(r.matches(&Method::GET, &normalize(path)), "{path}");
        }
        assert_eq!(normalize("/../.."), "/");
        assert_eq!(normalize("/%e2%82%ac/%7E"), "/%E2%82%AC/~");
        assert_eq!(normalize("/€%41/é"), "/€A/é");
        assert!(matches!(normalize("/pets/1"), Cow::Borrowed(_)));
    }

    #[test]
    fn canonical_is_what_is_matched_and_forwarded() {
        for (path, expected) in [
            ("/foo", "/foo"),
            ("/foo/", "/foo/"),
            ("//foo", "/foo"),
            ("/./foo", "/foo"),
            ("/%66oo", "/foo"),
            ("/bar/../foo", "/foo"),
            ("/foo%2F", "/foo/"),
            ("/foo%2f..%2Fbar", "/bar"),
            ("/a%2Fb", "/a/b"),
            ("/foo/%2e%2E/bar", "/bar"),
            ("/a%3ab/%40x", "/a%3Ab/%40x"),
            ("/%e2%82%ac", "/%E2%82%AC"),
            ("/a%25b", "/a%25b"),
            ("/", "/"),
            ("/..", "/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/FOO", "/FOO"),
        ] {
            assert_eq!(canonical(path).as_deref(), Ok(expected), "{path}");
        }
        assert!(matches!(canonical("/pets/1?x"), Ok(Cow::Borrowed(_))));
        assert!(matches!(canonical("/.well-known/x"), Ok(Cow::Borrowed(_))));
        for (path, why) in [
            ("/foo%00", BadPath::Control),
            ("/foo%0a", BadPath::Control),
            ("/foo%1F", BadPath::Control),
            ("/foo%7f", BadPath::Control),
            ("/foo\u{0}", BadPath::Control),
            ("/foo\t", BadPath::Control),
            ("/foo;x", BadPath::Semicolon),
            ("/foo%3Bx", BadPath::Semicolon),
            ("/foo%3bx", BadPath::Semicolon),
            ("/foo\\x", BadPath::Backslash),
            ("/foo%5c", BadPath::Backslash),
            ("/foo%", BadPath::BadEscape),
            ("/foo%4", BadPath::BadEscape),
            ("/foo%zz", BadPath::BadEscape),
        ] {
            assert_eq!(canonical(path), Err(why), "{path}");
        }
    }

    #[test]
    fn literals_match_whatever_escapes_spell_them() {
        let r = route("/foo:bar/GET");
        assert!(r.matches(&Method::GET, &normalize("/foo%3Abar")));
        assert!(r.matches(&Method::GET, &normalize("/foo:bar/")));
        assert!(
            !r.matches(&Method::GET, &normalize("/FOO:bar")),
            "case-sensitive"
        );
        assert!(route("/foo/GET").matches(&Method::GET, &normalize("/foo%2F")));
        assert!(!route("/foo/GET").matches(&Method::GET, &normalize("/Foo")));
    }

    #[test]
    fn bad_keys_are_errors() {
        for key in [
            "pets/GET",
            "/pets/get",
            "/pets/{proxy+}/x/GET",
            "/a//b/GET",
            "/{}/GET",
            "GET",
            "",
            // The root's is "//GET".
            "/GET",
        ] {
            assert!(MethodRoute::parse(key).is_err(), "{key} should be rejected");
        }
    }

    #[test]
    fn most_specific_first() {
        let mut routes = vec![
            (route("/{proxy+}/GET"), 1),
            (route("/pets/{id}/GET"), 2),
            (route("/pets/mine/GET"), 3),
        ];
        MethodRoute::sort_by_specificity(&mut routes);
        let first = routes
            .iter()
            .find(|(r, _)| r.matches(&Method::GET, "/pets/mine"))
            .unwrap();
        assert_eq!(first.1, 3);
        let first = routes
            .iter()
            .find(|(r, _)| r.matches(&Method::GET, "/pets/7"))
            .unwrap();
        assert_eq!(first.1, 2);
    }
}
