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

/// The path as routes see it: percent-encoded unreserved characters
/// decoded, empty and `.` segments dropped, `..` resolved — so `/pets//1`,
/// `/pets/./1`, `/x/../pets/1` and `/pet%73/1` all meet the throttle of
/// `/pets/{id}`. Borrowed when there is nothing to do (the common case).
pub(crate) fn normalize(path: &str) -> Cow<'_, str> {
    if !path.contains("//") && !path.contains("/.") && !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let segment = decode_unreserved(raw);
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Decodes `%XX` where it stands for an unreserved character (RFC 3986
/// §2.3); other escapes, such as `%2F`, stay as they are.
fn decode_unreserved(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let decoded = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
            if let Some(b) = decoded {
                out.push(char::from(b));
                i += 3;
                continue;
            }
        }
        // Copy up to the next '%' as is (keeps multi-byte characters whole).
        let from = if bytes[i] == b'%' { i + 1 } else { i };
        let next = segment[from..].find('%').map_or(bytes.len(), |n| from + n);
        out.push_str(&segment[i..next]);
        i = next;
    }
    out
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
                None => segments.push(Segment::Literal((*part).into())),
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
                (Segment::Literal(lit), Some(part)) if **lit == *part => {}
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
        let path = if path.is_empty() { "/" } else { path };
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
        assert_eq!(normalize("/a%2Fb"), "/a%2Fb", "an encoded slash stays");
        assert_eq!(normalize("/../.."), "/");
        assert_eq!(normalize("/%e2%82%ac/%7E"), "/%e2%82%ac/~");
        assert_eq!(normalize("/%"), "/%");
        assert_eq!(normalize("/€%41/é%zz"), "/€A/é%zz");
        assert!(matches!(normalize("/pets/1"), Cow::Borrowed(_)));
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
