//! AWS Signature Version 4 verification for the admin API.
//!
//! boto3 and AWS CLI v1 sign every admin request with SigV4 (signing name `apigateway`, any
//! region unless [`AdminService::with_regions`](crate::admin::AdminService::with_regions) names them).
//! This module checks such a request the way AWS does:
//!
//! 1. parse `Authorization: AWS4-HMAC-SHA256 Credential=AK/yyyymmdd/region/apigateway/aws4_request,
//!    SignedHeaders=a;b;c, Signature=<hex>` and the `X-Amz-Date` header;
//! 2. check the credential scope (service `apigateway`, terminator `aws4_request`, a configured
//!    region, scope date == the date part of `X-Amz-Date`), look the access key id up, and
//!    reject an `X-Amz-Date` more than [`MAX_SKEW`] away from the server clock;
//! 3. recompute the signature from the same inputs the client signed, canonicalised as SigV4
//!    specifies for non-S3 services and as botocore does: the received path with its dot and
//!    empty segments removed (or, for a last dot segment, the `/` before it kept: the RFC 3986
//!    reading of the Rust SDK), then percent-encoded once more; the query's pairs sorted — as
//!    sent (botocore) or decoded and encoded again (the SigV4 rule; both are accepted, so raw
//!    `:`, `+` or `,` verify); only the headers named in `SignedHeaders`; the body's hash. The
//!    HMAC chain is the `aws-sigv4` crate's. The signatures are compared in constant time.
//!
//! The canonicalisation is checked against the AWS SigV4 test suite's published vectors.
//!
//! Every authentication failure maps to an [`AuthError`] whose [`code`](AuthError::code) is the
//! AWS error type to send in `x-amzn-ErrorType` (AWS answers all of them with HTTP 403).
//! Secrets are never logged, formatted or put in an error message.

use std::fmt;

use super::credentials::AdminCredentials;
use std::time::{Duration, SystemTime};

use aws_sigv4::sign::v4;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The allowed clock skew between the client's `X-Amz-Date` and the server clock (5 minutes each
/// way, AWS's usual window). A request dated exactly 5 minutes away is still accepted.
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(5 * 60);

/// The SigV4 signing name (credential-scope service) of API Gateway.
const SIGNING_NAME: &str = "apigateway";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SCOPE_TERMINATOR: &str = "aws4_request";
const X_AMZ_DATE: &str = "x-amz-date";
const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";
const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";
const SIGNATURE_MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

/// Why a request failed authentication. AWS answers every one of these with HTTP 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No `Authorization` header at all.
    MissingToken,
    /// The `Authorization` header or `X-Amz-Date` is malformed or incomplete.
    Incomplete(String),
    /// The access key id is not configured.
    UnrecognizedClient,
    /// Signature mismatch, expired/future `X-Amz-Date`, or a credential scope that cannot match.
    InvalidSignature(String),
}

impl AuthError {
    /// The AWS error type (for `x-amzn-ErrorType`).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignatureException",
            AuthError::UnrecognizedClient => "UnrecognizedClientException",
            AuthError::InvalidSignature(_) => "InvalidSignatureException",
        }
    }

    /// The human-readable message (for the JSON body's `message`), worded like AWS's.
    pub(crate) fn message(&self) -> String {
        match self {
            AuthError::MissingToken => "Missing Authentication Token".to_owned(),
            AuthError::UnrecognizedClient => {
                "The security token included in the request is invalid.".to_owned()
            }
            AuthError::Incomplete(m) | AuthError::InvalidSignature(m) => m.clone(),
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for AuthError {}

/// The identity of a request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedCaller {
    /// The access key id the request was signed with.
    pub(crate) access_key_id: String,
}

/// Verifies one SigV4-signed admin request.
///
/// `parts` is the request head as received: its URI must be the raw request target (path and
/// query still percent-encoded exactly as the client sent them, not re-encoded or stripped by a
/// router), and `body` the exact body bytes. `regions` are the regions a credential scope may
/// name (empty: any). `now` is the server clock.
pub(crate) fn verify(
    parts: &http::request::Parts,
    body: &[u8],
    credentials: &AdminCredentials,
    regions: &[String],
    now: SystemTime,
) -> Result<VerifiedCaller, AuthError> {
    let query_auth = has_query_auth(parts.uri.query());
    let mut auth_values = parts.headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(auth_value) = auth_values.next() else {
        return Err(if query_auth {
            AuthError::Incomplete(
                "Query-string (presigned URL) authentication is not supported by this API; \
                 sign the request with an Authorization header."
                    .to_owned(),
            )
        } else {
            AuthError::MissingToken
        });
    };
    if auth_values.next().is_some() {
        return Err(incomplete(
            "The request contains more than one Authorization header.",
        ));
    }
    if query_auth {
        return Err(incomplete(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, \
             Signature query string parameter or the Authorization header should be specified",
        ));
    }
    let auth_value = auth_value.to_str().map_err(|_| {
        incomplete("The Authorization header contains characters that are not printable ASCII.")
    })?;
    let auth = parse_authorization(auth_value)?;

    // X-Amz-Date: exactly one, in ISO 8601 basic format.
    let (amz_date, signing_time) = x_amz_date(&parts.headers)?;

    // Credential scope.
    if auth.service != SIGNING_NAME {
        return Err(invalid(format!(
            "Credential should be scoped to correct service: '{SIGNING_NAME}'. "
        )));
    }
    if auth.terminator != SCOPE_TERMINATOR {
        return Err(invalid(format!(
            "Credential should be scoped with a valid terminator: '{SCOPE_TERMINATOR}', not '{}'. ",
            shorten(auth.terminator)
        )));
    }
    if auth.region.is_empty() {
        return Err(invalid(
            "Credential should be scoped to a valid region. ".to_owned(),
        ));
    }
    if !regions.is_empty() && !regions.iter().any(|r| r == auth.region) {
        return Err(invalid(format!(
            "Credential should be scoped to a valid region, not '{}'.",
            shorten(auth.region)
        )));
    }
    if auth.date != &amz_date[..8] {
        return Err(invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
             HTTP: '{}' != '{}', from 'X-Amz-Date'.",
            auth.date,
            &amz_date[..8]
        )));
    }

    let Some(secret) = credentials.secret_for(auth.access_key_id) else {
        return Err(AuthError::UnrecognizedClient);
    };

    check_skew(amz_date, signing_time, now)?;

    let body_hash = payload_hash(&parts.headers, body)?;

    // The headers named in SignedHeaders (sorted, as parse_authorization checks), values
    // normalized the way botocore does, several lines of one name joined with ','.
    let mut headers: Vec<(String, String)> = Vec::with_capacity(auth.signed_headers.len());
    for &name in &auth.signed_headers {
        if name == "host" || name == AUTHORITY {
            headers.push((name.to_owned(), host_value(parts, name)?));
            continue;
        }
        let mut values = parts.headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            return Err(invalid(format!(
                "The header '{name}' is listed in SignedHeaders but is not present in the request."
            )));
        }
        if name == X_AMZ_SECURITY_TOKEN && parts.headers.get_all(name).iter().nth(1).is_some() {
            return Err(incomplete(
                "The request contains more than one X-Amz-Security-Token header.",
            ));
        }
        let joined = values
            .map(|value| normalize_header_value(&header_text(Some(value.as_bytes()))))
            .collect::<Vec<_>>()
            .join(",");
        headers.push((name.to_owned(), joined));
    }

    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let payload_hash = body_hash.unwrap_or_else(|| hex::encode(Sha256::digest(body)));
    let signing = Signing {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        canonical_headers: &canonical_headers,
        signed_headers: auth.signed_headers_raw,
        payload_hash: &payload_hash,
        amz_date,
        region: auth.region,
        service: SIGNING_NAME,
    };
    let provided = hex::decode(auth.signature).unwrap_or_default();
    let verified = expected_signatures(secret, signing_time, &signing)
        .iter()
        .any(|expected| {
            let expected = hex::decode(expected).unwrap_or_default();
            expected.len() == 32 && bool::from(expected.ct_eq(&provided))
        });
    if verified {
        Ok(VerifiedCaller {
            access_key_id: auth.access_key_id.to_owned(),
        })
    } else {
        Err(invalid(SIGNATURE_MISMATCH.to_owned()))
    }
}

/// What a SigV4 signature covers, besides the secret.
struct Signing<'a> {
    method: &'a str,
    /// The path as received (still percent-encoded).
    path: &'a str,
    /// The query as received.
    query: Option<&'a str>,
    /// `name:value\n` for each signed header, sorted by name.
    canonical_headers: &'a str,
    signed_headers: &'a str,
    payload_hash: &'a str,
    /// `X-Amz-Date`, `yyyyMMdd'T'HHmmss'Z'`.
    amz_date: &'a str,
    region: &'a str,
    service: &'a str,
}

/// The hex signatures a client may have computed for the request: one per
/// reading of its path ([`canonical_uris`]) and query string
/// ([`canonical_queries`]).
fn expected_signatures(secret: &str, time: SystemTime, s: &Signing<'_>) -> Vec<String> {
    let key = v4::generate_signing_key(secret, time, s.region, s.service);
    let scope = format!(
        "{}/{}/{}/{SCOPE_TERMINATOR}",
        &s.amz_date[..8],
        s.region,
        s.service
    );
    let uris = canonical_uris(s.path);
    let queries = canonical_queries(s.query);
    uris.iter()
        .flat_map(|uri| queries.iter().map(move |query| (uri, query)))
        .map(|(uri, query)| {
            let request = format!(
                "{}\n{uri}\n{query}\n{}\n{}\n{}",
                s.method, s.canonical_headers, s.signed_headers, s.payload_hash
            );
            v4::calculate_signature(
                &key,
                string_to_sign(s.amz_date, &scope, &request).as_bytes(),
            )
        })
        .collect()
}

/// `AWS4-HMAC-SHA256 \n <X-Amz-Date> \n <scope> \n hex(sha256(canonical request))`.
fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// The canonical URI of a non-S3 service, as botocore computes it: the path
/// as sent (still percent-encoded) with its dot segments and empty segments
/// removed (RFC 3986 §5.2.4, keeping a trailing `/`), then percent-encoded
/// once more with only unreserved characters and `/` left bare — so
/// `/apikeys/.` is `/apikeys`, `//example//` is `/example/`, `/a%20b` is
/// `/a%2520b` and `/example space` is `/example%20space`.
fn canonical_uri(path: &str) -> String {
    canonical_uri_reading(path, false)
}

/// The canonical URIs a signer may have used for `path`: botocore's
/// ([`canonical_uri`]), and — for a path that ends in a dot segment — the
/// RFC 3986 reading that the `aws-sigv4` crate (the AWS SDK for Rust)
/// signs, which keeps the `/` before it: `/apikeys/.` is `/apikeys/`.
fn canonical_uris(path: &str) -> Vec<String> {
    let mut uris = vec![canonical_uri(path)];
    if path.ends_with("/.") || path.ends_with("/..") {
        let rfc = canonical_uri_reading(path, true);
        if rfc != uris[0] {
            uris.push(rfc);
        }
    }
    uris
}

/// [`canonical_uri`], keeping the `/` before a last dot segment if
/// `slash_before_last_dots`.
fn canonical_uri_reading(path: &str, slash_before_last_dots: bool) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let kept: Vec<&str> = path.split('/').fold(Vec::new(), |mut kept, segment| {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
        kept
    });
    let mut normalized = String::with_capacity(path.len() + 1);
    if path.starts_with('/') {
        normalized.push('/');
    }
    normalized.push_str(&kept.join("/"));
    let last_dots = path.ends_with("/.") || path.ends_with("/..");
    if (path.ends_with('/') || (slash_before_last_dots && last_dots)) && !kept.is_empty() {
        normalized.push('/');
    }
    uri_encode(&normalized, true)
}

/// The canonical query strings a signer may have used for `query`, most
/// likely first: the pairs as sent, sorted (botocore), and — when it
/// differs — the pairs decoded (`+` as a space, as the admin API reads
/// them) and percent-encoded again the SigV4 way (every byte but the
/// unreserved ones), sorted by encoded name, then value. So a raw `:`,
/// `+` or `,` verifies whichever way it was signed.
fn canonical_queries(query: Option<&str>) -> Vec<String> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return vec![String::new()];
    };
    let sorted_pairs = |mut pairs: Vec<(String, String)>| {
        pairs.sort();
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let raw: Vec<(String, String)> = query
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let reencode = |s: &str| {
        let spaced = s.replace('+', " ");
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
        uri_encode_bytes(&bytes, false)
    };
    let spec: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (reencode(k), reencode(v))
        })
        .collect();
    let (raw, spec) = (sorted_pairs(raw), sorted_pairs(spec));
    if raw == spec {
        vec![raw]
    } else {
        vec![raw, spec]
    }
}

/// SigV4's `UriEncode`: every byte but `A-Za-z0-9-._~` (and `/` when
/// `keep_slash`) as `%XX`, upper-case hex.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    uri_encode_bytes(s.as_bytes(), keep_slash)
}

fn uri_encode_bytes(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn incomplete(message: &str) -> AuthError {
    AuthError::Incomplete(message.to_owned())
}

fn invalid(message: String) -> AuthError {
    AuthError::InvalidSignature(message)
}

/// Client-supplied text echoed in a message, cut to a sane length.
fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug)]
struct ParsedAuthorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    terminator: &'a str,
    signed_headers_raw: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<ParsedAuthorization<'_>, AuthError> {
    let value = value.trim();
    let (algorithm, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(AuthError::Incomplete(if algorithm.is_empty() {
            "The Authorization header is empty.".to_owned()
        } else {
            format!(
                "Unsupported AWS 'algorithm': '{}'; only {ALGORITHM} is accepted.",
                shorten(algorithm)
            )
        }));
    }

    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for component in rest.split(',') {
        let component = component.trim();
        if component.is_empty() {
            continue;
        }
        let Some((key, val)) = component.split_once('=') else {
            return Err(incomplete(
                "The Authorization header is malformed: expected comma-separated Name=Value \
                 components after the algorithm.",
            ));
        };
        let slot = match key.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => continue,
        };
        if slot.replace(val.trim()).is_some() {
            return Err(AuthError::Incomplete(format!(
                "The Authorization header contains the '{}' component more than once.",
                key.trim()
            )));
        }
    }
    let mut missing = String::new();
    for (name, slot) in [
        ("Credential", &credential),
        ("Signature", &signature),
        ("SignedHeaders", &signed_headers),
    ] {
        if slot.is_none_or(str::is_empty) {
            missing.push_str(&format!(
                "Authorization header requires '{name}' parameter. "
            ));
        }
    }
    let (Some(credential), Some(signed_headers_raw), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(AuthError::Incomplete(missing.trim_end().to_owned()));
    };
    if !missing.is_empty() {
        return Err(AuthError::Incomplete(missing.trim_end().to_owned()));
    }

    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(incomplete(
            "The Credential component must have the form \
             <access key id>/<yyyymmdd>/<region>/apigateway/aws4_request.",
        ));
    };
    if access_key_id.is_empty() {
        return Err(incomplete(
            "The Credential component has an empty access key id.",
        ));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(incomplete(
            "Invalid credential date. Date is not the required format: yyyyMMdd.",
        ));
    }

    let signed_headers: Vec<&str> = signed_headers_raw.split(';').collect();
    // HTTP/2 clients sign the `:authority` pseudo-header instead of `host`
    // (the AWS SDK for JavaScript v3 over HTTP/2); no other pseudo-header.
    let well_formed = signed_headers.iter().all(|&name| {
        name == AUTHORITY
            || !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
                })
    });
    if !well_formed || signed_headers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(incomplete(
            "SignedHeaders must be a ';'-separated list of lower-case header names, sorted and \
             without duplicates.",
        ));
    }
    if !signed_headers.contains(&"host") && !signed_headers.contains(&AUTHORITY) {
        return Err(incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }

    Ok(ParsedAuthorization {
        access_key_id,
        date,
        region,
        service,
        terminator,
        signed_headers_raw,
        signed_headers,
        signature,
    })
}

/// `true` when the query string carries presigned-URL (query-string) SigV4 parameters.
fn has_query_auth(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            ["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Algorithm"]
                .iter()
                .any(|p| key.eq_ignore_ascii_case(p))
        })
    })
}

/// The single `X-Amz-Date` header as text and as a time.
fn x_amz_date(headers: &http::HeaderMap) -> Result<(&str, SystemTime), AuthError> {
    let mut values = headers.get_all(X_AMZ_DATE).iter();
    let Some(value) = values.next() else {
        return Err(incomplete(
            "Authorization header requires existence of a 'X-Amz-Date' header.",
        ));
    };
    if values.next().is_some() {
        return Err(incomplete(
            "The request contains more than one X-Amz-Date header.",
        ));
    }
    let text = value.to_str().unwrap_or("");
    match parse_amz_date(text) {
        Some(time) => Ok((text, time)),
        None => Err(AuthError::Incomplete(format!(
            "Date must be in ISO-8601 'basic format' (yyyyMMdd'T'HHmmss'Z'). Got '{}'.",
            shorten(text)
        ))),
    }
}

/// Parses `yyyyMMdd'T'HHmmss'Z'` strictly.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i16> {
        b[range].iter().try_fold(0i16, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i16::from(d - b'0'))
        })
    };
    let small = |range| digits(range).and_then(|v| i8::try_from(v).ok());
    let datetime = jiff::civil::DateTime::new(
        digits(0..4)?,
        small(4..6)?,
        small(6..8)?,
        small(9..11)?,
        small(11..13)?,
        small(13..15)?,
        0,
    )
    .ok()?;
    let timestamp = jiff::tz::Offset::UTC.to_timestamp(datetime).ok()?;
    Some(SystemTime::from(timestamp))
}

/// Formats a time as `yyyyMMdd'T'HHmmss'Z'` (for error messages).
fn format_amz_date(time: SystemTime) -> String {
    match jiff::Timestamp::try_from(time) {
        Ok(ts) => ts.strftime("%Y%m%dT%H%M%SZ").to_string(),
        Err(_) => format!("{time:?}"),
    }
}

/// Rejects an `X-Amz-Date` more than [`MAX_SKEW`] away from `now`, with AWS's messages.
fn check_skew(amz_date: &str, signing_time: SystemTime, now: SystemTime) -> Result<(), AuthError> {
    let skew_minutes = MAX_SKEW.as_secs() / 60;
    match signing_time.duration_since(now) {
        // Signed in the future.
        Ok(ahead) if ahead > MAX_SKEW => Err(invalid(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + {skew_minutes} min.)",
            now.checked_add(MAX_SKEW)
                .map_or_else(|| "?".to_owned(), format_amz_date),
            format_amz_date(now),
        ))),
        Ok(_) => Ok(()),
        // Signed in the past.
        Err(behind) if behind.duration() > MAX_SKEW => Err(invalid(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - {skew_minutes} min.)",
            now.checked_sub(MAX_SKEW)
                .map_or_else(|| "?".to_owned(), format_amz_date),
            format_amz_date(now),
        ))),
        Err(_) => Ok(()),
    }
}

/// When the request carries `X-Amz-Content-SHA256`, botocore uses that header's value as the
/// payload hash of the canonical request (signed or not). Accept it only when it is the hash of
/// the body actually received: unsigned payloads are refused. Returns the exact header text to
/// use as the precomputed hash, or `None` to hash the body.
fn payload_hash(headers: &http::HeaderMap, body: &[u8]) -> Result<Option<String>, AuthError> {
    let mut values = headers.get_all(X_AMZ_CONTENT_SHA256).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(incomplete(
            "The request contains more than one X-Amz-Content-SHA256 header.",
        ));
    }
    let claimed = value.to_str().unwrap_or("");
    let actual = hex::encode(Sha256::digest(body));
    if claimed.eq_ignore_ascii_case(&actual) {
        Ok(Some(claimed.to_owned()))
    } else if claimed == "UNSIGNED-PAYLOAD" || claimed.starts_with("STREAMING-") {
        Err(invalid(
            "Unsigned or streaming payloads (X-Amz-Content-SHA256) are not accepted by this API; \
             sign the request body."
                .to_owned(),
        ))
    } else {
        Err(invalid(
            "The provided 'x-amz-content-sha256' header does not match what was computed."
                .to_owned(),
        ))
    }
}

/// The HTTP/2 pseudo-header a client may sign in place of `host`.
const AUTHORITY: &str = ":authority";

/// The value of the signed header `name` (`host` or `:authority`): for `host`, the `Host`
/// header(s), else the URI authority (HTTP/2's `:authority`); for `:authority`, the other way
/// round.
fn host_value(parts: &http::request::Parts, name: &str) -> Result<String, AuthError> {
    let hosts: Vec<String> = parts
        .headers
        .get_all(http::header::HOST)
        .iter()
        .map(|v| normalize_header_value(&header_text(Some(v.as_bytes()))))
        .collect();
    let host = (!hosts.is_empty()).then(|| hosts.join(","));
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    let value = match name {
        AUTHORITY => authority.or(host),
        _ => host.or(authority),
    };
    value.ok_or_else(|| {
        invalid(format!(
            "The request has no Host header although '{name}' is a signed header."
        ))
    })
}

/// A header value as text: UTF-8 when it is valid UTF-8, else Latin-1 (what Python's
/// http.client sends for non-ASCII `str` values, which botocore signed as text).
fn header_text(bytes: Option<&[u8]>) -> String {
    let bytes = bytes.unwrap_or_default();
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// botocore's `' '.join(value.split())`: trims and collapses every run of (Python) whitespace
/// to one space. aws-sigv4 itself only collapses spaces, not tabs.
fn normalize_header_value(value: &str) -> String {
    value
        .split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
