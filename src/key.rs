//! Where the layer finds a request's API key.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::header::HeaderName;
use http::{Extensions, HeaderMap, Method, Request, Uri};

/// An API key that an earlier layer (an authorizer) decided for this
/// request; read by [`KeySource::authorizer`]. AWS's `AUTHORIZER` source.
///
/// ```
/// use tower_usage_plans::AuthorizerKey;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(AuthorizerKey::new("alice-key-0123456789abcdef"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerKey(String);

impl AuthorizerKey {
    /// The key value an authorizer chose.
    ///
    /// ```
    /// # use tower_usage_plans::AuthorizerKey;
    /// assert_eq!(AuthorizerKey::new("k").value(), "k");
    /// ```
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The key value.
    ///
    /// ```
    /// # use tower_usage_plans::AuthorizerKey;
    /// let key = AuthorizerKey::new(String::from("alice-key-0123456789abcdef"));
    /// assert_eq!(key.value(), "alice-key-0123456789abcdef");
    /// ```
    pub fn value(&self) -> &str {
        &self.0
    }
}

/// The parts of a request the layer reads, borrowed from the request.
///
/// ```
/// use tower_usage_plans::RequestHead;
///
/// let request = http::Request::get("/pets?api_key=k").body(()).unwrap();
/// let head = RequestHead::of(&request);
/// assert_eq!(head.uri.query(), Some("api_key=k"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI as received.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions earlier layers put in.
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// Borrows the head of `request`.
    ///
    /// ```
    /// # use tower_usage_plans::RequestHead;
    /// let request = http::Request::post("/pets").header("x-api-key", "k").body(()).unwrap();
    /// let head = RequestHead::of(&request);
    /// assert_eq!(head.method, http::Method::POST);
    /// assert_eq!(head.headers["x-api-key"], "k");
    /// ```
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

type Extract = dyn Fn(&RequestHead<'_>) -> Option<String> + Send + Sync;

/// Where to read the API key from. The default is the `x-api-key` header,
/// as in AWS. An empty key, or a header or query parameter given twice
/// (ambiguous), is no key: the request gets 403.
///
/// ```
/// use tower_usage_plans::KeySource;
///
/// let header = KeySource::header("x-api-key");
/// let query = KeySource::query("api_key");
/// let custom = KeySource::custom(|head| {
///     let auth = head.headers.get("authorization")?.to_str().ok()?;
///     auth.strip_prefix("ApiKey ").map(str::to_owned)
/// });
/// # drop((header, query, custom));
/// ```
#[derive(Clone)]
pub struct KeySource(Source);

#[derive(Clone)]
enum Source {
    Header(HeaderName),
    Query(Arc<str>),
    Authorizer,
    Custom(Arc<Extract>),
}

impl KeySource {
    /// A request header (for gRPC, a metadata entry).
    ///
    /// # Panics
    /// If `name` is not a valid header name, or names binary gRPC metadata
    /// (ends in `-bin`: base64 of arbitrary bytes, never an API key) — a
    /// programming error.
    ///
    /// ```should_panic
    /// tower_usage_plans::KeySource::header("x-api-key-bin");
    /// ```
    pub fn header(name: &str) -> Self {
        let name = HeaderName::try_from(name).expect("KeySource::header: invalid header name");
        assert!(
            !name.as_str().ends_with("-bin"),
            "KeySource::header({name:?}): binary gRPC metadata cannot hold an API key"
        );
        Self(Source::Header(name))
    }

    /// A query-string parameter (percent-decoded).
    ///
    /// ```
    /// # use axum::{body::Body, routing::get, Router};
    /// # use tower::ServiceExt;
    /// # use tower_usage_plans::{AuthorizerKey, KeySource, NewApiKey, NewUsagePlan, UsagePlanLayer, UsagePlans};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("p")).unwrap();
    /// # let key = NewApiKey::new("k").with_value("key-0123456789abcdefghij").with_enabled(true);
    /// # plans.add_key_to_plan(&plan.id, &plans.create_api_key(key).unwrap().id).unwrap();
    /// # let app = |source| Router::new().route("/", get(|| async { "ok" })).layer(UsagePlanLayer::new(plans.clone()).with_key_source(source));
    /// let request = http::Request::get("/?api_key=key-0123456789abcdefghij").body(Body::empty()).unwrap();
    /// let response = app(KeySource::query("api_key")).oneshot(request).await.unwrap();
    /// assert_eq!(response.status(), 200);
    /// # });
    /// ```
    pub fn query(name: &str) -> Self {
        Self(Source::Query(name.into()))
    }

    /// An [`AuthorizerKey`] placed in the request extensions by an earlier
    /// layer.
    ///
    /// ```
    /// # use axum::{body::Body, routing::get, Router};
    /// # use tower::ServiceExt;
    /// # use tower_usage_plans::{AuthorizerKey, KeySource, NewApiKey, NewUsagePlan, UsagePlanLayer, UsagePlans};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("p")).unwrap();
    /// # let key = NewApiKey::new("k").with_value("key-0123456789abcdefghij").with_enabled(true);
    /// # plans.add_key_to_plan(&plan.id, &plans.create_api_key(key).unwrap().id).unwrap();
    /// # let app = |source| Router::new().route("/", get(|| async { "ok" })).layer(UsagePlanLayer::new(plans.clone()).with_key_source(source));
    /// let mut request = http::Request::get("/").body(Body::empty()).unwrap();
    /// request.extensions_mut().insert(AuthorizerKey::new("key-0123456789abcdefghij"));
    /// let response = app(KeySource::authorizer()).oneshot(request).await.unwrap();
    /// assert_eq!(response.status(), 200);
    /// # });
    /// ```
    pub fn authorizer() -> Self {
        Self(Source::Authorizer)
    }

    /// A closure over the request head.
    ///
    /// ```
    /// # use axum::{body::Body, routing::get, Router};
    /// # use tower::ServiceExt;
    /// # use tower_usage_plans::{AuthorizerKey, KeySource, NewApiKey, NewUsagePlan, UsagePlanLayer, UsagePlans};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let plans = UsagePlans::new();
    /// # let plan = plans.create_usage_plan(NewUsagePlan::new("p")).unwrap();
    /// # let key = NewApiKey::new("k").with_value("key-0123456789abcdefghij").with_enabled(true);
    /// # plans.add_key_to_plan(&plan.id, &plans.create_api_key(key).unwrap().id).unwrap();
    /// # let app = |source| Router::new().route("/", get(|| async { "ok" })).layer(UsagePlanLayer::new(plans.clone()).with_key_source(source));
    /// let source = KeySource::custom(|head| {
    ///     let auth = head.headers.get("authorization")?.to_str().ok()?;
    ///     auth.strip_prefix("ApiKey ").map(str::to_owned)
    /// });
    /// let request = http::Request::get("/").header("authorization", "ApiKey key-0123456789abcdefghij");
    /// let response = app(source).oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    /// assert_eq!(response.status(), 200);
    /// # });
    /// ```
    pub fn custom(
        extract: impl Fn(&RequestHead<'_>) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self(Source::Custom(Arc::new(extract)))
    }

    /// The key of this request, borrowed where possible. A header or query
    /// parameter given twice names no key: which one would be meant (the
    /// upstream may read the other) is ambiguous, so the request is refused
    /// as one without a key.
    pub(crate) fn extract<'a>(&self, head: &RequestHead<'a>) -> Option<Cow<'a, [u8]>> {
        match &self.0 {
            Source::Header(name) => the_only_value(head.headers, name).map(Cow::Borrowed),
            Source::Query(name) => query_param(head.uri.query()?, name),
            Source::Authorizer => head
                .extensions
                .get::<AuthorizerKey>()
                .map(|k| Cow::Borrowed(k.0.as_bytes())),
            Source::Custom(extract) => extract(head).map(|k| Cow::Owned(k.into_bytes())),
        }
        .filter(|key| !key.is_empty())
    }
}

impl Default for KeySource {
    fn default() -> Self {
        Self(Source::Header(HeaderName::from_static("x-api-key")))
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::Header(name) => write!(f, "KeySource::header({name:?})"),
            Source::Query(name) => write!(f, "KeySource::query({name:?})"),
            Source::Authorizer => f.write_str("KeySource::authorizer()"),
            Source::Custom(_) => f.write_str("KeySource::custom(..)"),
        }
    }
}

/// Headers up to which a name is found by comparing names in order, not
/// by hashing it: an API client's request has a handful of headers, and
/// comparing a few names (most differ in length, or are standard ones) is
/// cheaper than hashing the name and probing (~230 instructions, see
/// BENCHMARKS.md).
const SCANNED_HEADERS: usize = 8;

/// The value of header `name`, if it is there exactly once.
#[inline]
fn the_only_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    if headers.keys_len() > SCANNED_HEADERS {
        let mut values = headers.get_all(name).iter();
        let value = values.next()?;
        return values.next().is_none().then(|| value.as_bytes());
    }
    // A map holds each name once, its values one after the other.
    let mut pairs = headers.iter().skip_while(|(n, _)| *n != name);
    let (_, value) = pairs.next()?;
    match pairs.next() {
        Some((next, _)) if next == name => None,
        _ => Some(value.as_bytes()),
    }
}

/// The parameter's value, if it is there exactly once.
fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, [u8]>> {
    let mut values = query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k).as_ref() == name.as_bytes()).then(|| percent_decode(v))
    });
    let value = values.next()?;
    values.next().is_none().then_some(value)
}

fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    percent_encoding::percent_decode_str(s).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, header: Option<&str>) -> Request<()> {
        let mut builder = http::Request::builder().uri(uri);
        if let Some(h) = header {
            builder = builder.header("x-api-key", h);
        }
        builder.body(()).unwrap()
    }

    fn extract(source: &KeySource, request: &Request<()>) -> Option<Vec<u8>> {
        source
            .extract(&RequestHead::of(request))
            .map(Cow::into_owned)
    }

    #[test]
    fn header_query_authorizer_custom() {
        let p = parts("/x?a=1&api_key=k%2B1&b", Some("hdr"));
        assert_eq!(extract(&KeySource::default(), &p), Some(b"hdr".to_vec()));
        assert_eq!(
            extract(&KeySource::query("api_key"), &p),
            Some(b"k+1".to_vec())
        );
        assert_eq!(extract(&KeySource::query("missing"), &p), None);
        assert_eq!(extract(&KeySource::authorizer(), &p), None);
        let mut p2 = parts("/", None);
        p2.extensions_mut().insert(AuthorizerKey::new("auth"));
        assert_eq!(
            extract(&KeySource::authorizer(), &p2),
            Some(b"auth".to_vec())
        );
        let custom = KeySource::custom(|head| Some(head.uri.path().to_owned()));
        assert_eq!(extract(&custom, &p), Some(b"/x".to_vec()));
    }

    #[test]
    fn a_key_given_twice_is_no_key() {
        let mut twice = parts("/?api_key=a&api_key=b", Some("a"));
        twice
            .headers_mut()
            .append("x-api-key", http::HeaderValue::from_static("b"));
        assert_eq!(extract(&KeySource::default(), &twice), None);
        assert_eq!(extract(&KeySource::query("api_key"), &twice), None);
    }

    /// Few headers are scanned, many are looked up: either way a key
    /// there once is found, one there twice or not at all is not.
    #[test]
    fn a_key_among_few_or_many_headers() {
        for others in [0, 1, SCANNED_HEADERS - 1, SCANNED_HEADERS, 40] {
            for (position, twice) in [(0, false), (others, false), (0, true), (others, true)] {
                let mut request = Request::get("/").body(()).unwrap();
                let headers = request.headers_mut();
                for i in 0..=others {
                    if i == position {
                        headers.append("x-api-key", "alice".parse().unwrap());
                        if twice {
                            headers.append("x-api-key", "bob".parse().unwrap());
                        }
                    }
                    if i < others {
                        // Same length as the key's name, and a standard one.
                        let name = HeaderName::try_from(format!("x-other-{i:02}")).unwrap();
                        headers.append(name, "v".parse().unwrap());
                        headers.append(http::header::ACCEPT, "*/*".parse().unwrap());
                    }
                }
                let expected = (!twice).then(|| b"alice".to_vec());
                assert_eq!(
                    extract(&KeySource::default(), &request),
                    expected,
                    "{others} {position} {twice}"
                );
                request.headers_mut().remove("x-api-key");
                assert_eq!(extract(&KeySource::default(), &request), None);
            }
        }
    }

    #[test]
    fn empty_key_is_no_key() {
        assert_eq!(extract(&KeySource::default(), &parts("/", Some(""))), None);
    }
}
