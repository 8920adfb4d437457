//! AWS wire details: JSON responses, AWS-shaped errors, query parameters
//! and pagination.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::{Error, ErrorKind};

/// The admin service's response body.
pub(crate) type Body = Full<Bytes>;

/// The longest page a list operation returns.
pub(crate) const MAX_PAGE: usize = 500;
const DEFAULT_PAGE: usize = 25;

/// An AWS-shaped error: status, `x-amzn-ErrorType`, `{"message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AwsError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// For a 405: the methods the resource takes (`Allow`).
    pub(crate) allow: Option<&'static str>,
    /// The connection closes after this answer (`Connection: close`, on
    /// HTTP/1): a body left unread makes it unusable.
    pub(crate) close: bool,
}

impl AwsError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
            close: false,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequestException", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFoundException", message)
    }
}

impl From<Error> for AwsError {
    fn from(error: Error) -> Self {
        let (status, code) = match error.kind() {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "NotFoundException"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "ConflictException"),
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "BadRequestException"),
            ErrorKind::Store => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
            ),
        };
        Self::new(status, code, error.message())
    }
}

pub(crate) type WireResult = Result<Response<Body>, AwsError>;

/// A JSON response with `status`.
pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> WireResult {
    let body = serde_json::to_vec(value).map_err(|e| {
        AwsError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerErrorException",
            e.to_string(),
        )
    })?;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Answers may carry key values (`includeValue`): no cache keeps them.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// 202 with no body: the answer to every delete.
pub(crate) fn accepted() -> WireResult {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

impl AwsError {
    pub(crate) fn into_response(self) -> Response<Body> {
        #[derive(Serialize)]
        struct Message<'a> {
            message: &'a str,
        }
        let body = serde_json::to_vec(&Message {
            message: &self.message,
        })
        .unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("x-amzn-errortype", HeaderValue::from_static(self.code));
        if let Some(allow) = self.allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // The store or the other replicas were out of reach: the SDKs
            // retry 503s, and may do so a second later.
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Parses a JSON body, an object, into `T`; an empty body is `{}`. An
/// array where `T` has a struct, at the top or inside, is refused: serde
/// alone would read it as the struct's fields in order (see
/// `objects_only`).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AwsError> {
    let invalid = |e: &dyn std::fmt::Display| {
        AwsError::bad_request(format!(
            "Invalid request body: {}",
            in_json_terms(&e.to_string())
        ))
    };
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    // Read from the bytes, which refuses a member given twice (a `Value`
    // keeps the last one) and says where it went wrong; the shape from a
    // `Value`. An array where an object belongs is named as such, not as
    // what serde made of it ("invalid length 0, expected ... with 6
    // elements").
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| invalid(&e))?;
    let shape = super::objects_only::check::<T>(&value);
    let parsed = serde_json::from_slice(body).map_err(|e| match &shape {
        Err(array) if array.contains(super::objects_only::AN_ARRAY) => invalid(array),
        _ => invalid(&e),
    })?;
    shape.map_err(|e| invalid(&e))?;
    Ok(parsed)
}

/// A parse error's `message` in JSON's terms, not Rust's: serde names
/// what it expected by the Rust type (`u64`, `struct NewUsagePlan`).
fn in_json_terms(message: &str) -> String {
    const TERMS: [(&str, &str); 4] = [
        ("expected u", "expected a non-negative integer"),
        ("expected i", "expected an integer"),
        ("expected f", "expected a number"),
        ("expected struct ", "expected an object"),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    'scan: while let Some(at) = rest.find("expected ") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        for (rust, json) in TERMS {
            let Some(after) = tail.strip_prefix(rust) else {
                continue;
            };
            // The type's name: `u64`, `i32`, `f64`, or a struct's.
            let name = after
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(after.len());
            let numeric = after[..name].bytes().all(|b| b.is_ascii_digit());
            if name > 0 && (rust.ends_with(' ') || numeric) {
                out.push_str(json);
                rest = &after[name..];
                continue 'scan;
            }
        }
        out.push_str("expected ");
        rest = &tail["expected ".len()..];
    }
    out.push_str(rest);
    out
}

/// The decoded query string.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Self {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        Self(
            raw.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn flag(&self, name: &str) -> Result<bool, AwsError> {
        match self.get(name) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(AwsError::bad_request(format!(
                "Invalid value '{v}' for {name}: expected true or false"
            ))),
        }
    }

    pub(crate) fn required(&self, name: &str) -> Result<&str, AwsError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AwsError::bad_request(format!("Missing required parameter: {name}")))
    }

    /// `limit` and `position` of a list operation.
    pub(crate) fn page(&self) -> Result<Page, AwsError> {
        let limit = match self.get("limit") {
            None => DEFAULT_PAGE,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    AwsError::bad_request(format!(
                        "Invalid limit '{v}': must be an integer from 1 to {MAX_PAGE}"
                    ))
                })?,
        };
        let after = match self.get("position").filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => Some(
                hex::decode(p)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| AwsError::bad_request("Invalid position"))?,
            ),
        };
        Ok(Page { limit, from: after })
    }
}

/// One page of an id-ordered list: items from the id `from` on, at most
/// `limit` of them. The position names the first id of the next page, so
/// paging stays correct while items are added or deleted.
#[derive(Debug)]
pub(crate) struct Page {
    limit: usize,
    from: Option<String>,
}

impl Page {
    /// The page of `items` (sorted by `id`) and the next position, if any.
    pub(crate) fn apply<T>(
        &self,
        items: Vec<T>,
        id: impl Fn(&T) -> &str,
    ) -> (Vec<T>, Option<String>) {
        let mut rest: Vec<T> = items
            .into_iter()
            .filter(|item| self.from.as_deref().is_none_or(|from| id(item) >= from))
            .collect();
        let next = rest.get(self.limit).map(|item| hex::encode(id(item)));
        rest.truncate(self.limit);
        (rest, next)
    }
}

/// A list response: `{"item": [...], "position": "..."}`.
#[derive(Serialize)]
pub(crate) struct List<T> {
    pub(crate) item: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) position: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end() {
        let q = Query::parse(Some("limit=2"));
        let (first, pos) = q.page().unwrap().apply(vec!["a", "b", "c"], |s| s);
        assert_eq!(first, ["a", "b"]);
        let q = Query::parse(Some(&format!("limit=2&position={}", pos.unwrap())));
        let (second, pos) = q.page().unwrap().apply(vec!["a", "b", "c"], |s| s);
        assert_eq!((second, pos), (vec!["c"], None));
    }

    #[test]
    fn bad_page_parameters() {
        for q in ["limit=0", "limit=501", "limit=x", "position=zz"] {
            assert!(Query::parse(Some(q)).page().is_err(), "{q}");
        }
    }

    #[test]
    fn parse_errors_name_json_types_not_rust_ones() {
        let message = |body: &str| {
            let error = serde_json::from_str::<crate::model::Quota>(body).unwrap_err();
            in_json_terms(&error.to_string())
        };
        let negative = message(r#"{"limit": -5, "period": "DAY"}"#);
        assert!(
            negative.contains("expected a non-negative integer"),
            "{negative}"
        );
        let array = message(r#"{"limit": [1], "period": "DAY"}"#);
        assert!(!array.contains("u64") && !array.contains("u32"), "{array}");
        let top = message("7");
        assert!(!top.contains("struct") && top.contains("expected"), "{top}");
        // Other wording is left as serde writes it.
        assert_eq!(
            in_json_terms("invalid type: integer `1`, expected a string at line 1"),
            "invalid type: integer `1`, expected a string at line 1"
        );
        assert_eq!(
            in_json_terms("expected struct Quota, expected u32 or expected unit"),
            "expected an object, expected a non-negative integer or expected unit"
        );
    }

    /// An array for an object, at the top or inside, is named as such
    /// (helper 81: `[]` for a plan was "expected an object with 6
    /// elements").
    #[test]
    fn an_array_for_an_object_is_named_so() {
        for body in ["[]", r#"[5, "DAY"]"#, r#"[5]"#] {
            let error = parse_json::<crate::model::Quota>(body.as_bytes()).unwrap_err();
            assert!(
                error.message.contains(super::super::objects_only::AN_ARRAY),
                "{body}: {}",
                error.message
            );
        }
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some("name=a%20b&flag=TRUE&x"));
        assert_eq!(q.get("name"), Some("a b"));
        assert!(q.flag("flag").unwrap());
        assert_eq!(q.get("x"), Some(""));
        assert!(Query::parse(Some("f=yes")).flag("f").is_err());
    }
}
