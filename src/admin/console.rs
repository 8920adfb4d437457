//! The console: a single page, compiled into the binary, served on the
//! admin listener at `/console/` without SigV4 (it holds nothing secret).
//! The page signs every admin API call itself, in the browser, so it adds
//! no second way in.

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use super::wire::AwsError;

/// The page's files: path under `/console/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("console/app.js"),
    ),
    (
        "sigv4.js",
        "text/javascript; charset=utf-8",
        include_str!("console/sigv4.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("console/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("console/favicon.svg"),
    ),
];

/// Only this origin, nothing inline: no script, style, image, frame or
/// connection from anywhere else.
const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The answer to a request for `path` when it belongs to the console
/// (`/console` or under `/console/`); `None` for every other path, which
/// the admin API answers.
pub(super) fn serve(
    method: &Method,
    path: &str,
    regions: &[String],
    top_ups: bool,
) -> Option<Response<Full<Bytes>>> {
    let rest = match path.strip_prefix("/console") {
        Some("") => return Some(redirect()),
        Some(rest) => rest.strip_prefix('/')?,
        None => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        let mut refused = error(AwsError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowedException",
            format!("Method {method} is not allowed on the console"),
        ));
        refused
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(refused);
    }
    let (content_type, body): (&str, Bytes) = if rest == "settings.json" {
        ("application/json", Bytes::from(settings(regions, top_ups)))
    } else {
        match ASSETS.iter().find(|(name, _, _)| *name == rest) {
            Some((_, content_type, body)) => (content_type, Bytes::from_static(body.as_bytes())),
            None => {
                return Some(error(AwsError::not_found(format!(
                    "The console has no /console/{rest}"
                ))))
            }
        }
    };
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    let mut response = Response::new(Full::new(body));
    secure(&mut response);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Some(response)
}

/// What the page needs to know before signing in: the region to sign for
/// (the first one the listener accepts; `us-east-1` when it accepts any).
fn settings(regions: &[String], top_ups: bool) -> String {
    let region = regions.first().map_or("us-east-1", String::as_str);
    serde_json::json!({ "region": region, "topUps": top_ups }).to_string()
}

fn redirect() -> Response<Full<Bytes>> {
    let mut response = plain(StatusCode::MOVED_PERMANENTLY, "Moved to /console/\n");
    response
        .headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/console/"));
    response
}

/// An error, AWS-shaped as the admin API's own (JSON, `x-amzn-ErrorType`).
fn error(error: AwsError) -> Response<Full<Bytes>> {
    let mut response = error.into_response();
    secure(&mut response);
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    secure(&mut response);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn secure(response: &mut Response<Full<Bytes>>) {
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_and_its_assets_with_strict_headers() {
        for (path, kind) in [
            ("/console/", "text/html"),
            ("/console/app.js", "text/javascript"),
            ("/console/sigv4.js", "text/javascript"),
            ("/console/style.css", "text/css"),
            ("/console/favicon.svg", "image/svg+xml"),
            ("/console/settings.json", "application/json"),
        ] {
            let r = serve(&Method::GET, path, &[], false).unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            assert!(
                h[CONTENT_TYPE].to_str().unwrap().starts_with(kind),
                "{path}"
            );
            assert!(h[CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'"));
            assert_eq!(h[X_FRAME_OPTIONS], "DENY");
        }
        let r = serve(&Method::GET, "/console", &[], false).unwrap();
        assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(r.headers()[LOCATION], "/console/");
        // Errors are the admin API's, AWS-shaped.
        for (method, path, status, kind) in [
            (
                Method::GET,
                "/console/nope",
                StatusCode::NOT_FOUND,
                "NotFoundException",
            ),
            (
                Method::POST,
                "/console/",
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowedException",
            ),
        ] {
            let r = serve(&method, path, &[], false).unwrap();
            assert_eq!(r.status(), status, "{path}");
            assert_eq!(r.headers()["x-amzn-errortype"], kind, "{path}");
            assert_eq!(r.headers()[CONTENT_TYPE], "application/json", "{path}");
            assert_eq!(r.headers()[X_FRAME_OPTIONS], "DENY");
        }
        let refused = serve(&Method::POST, "/console/", &[], false).unwrap();
        assert_eq!(refused.headers()[ALLOW], "GET, HEAD");
        assert!(serve(&Method::GET, "/consoles", &[], false).is_none());
        assert!(serve(&Method::GET, "/apikeys", &[], false).is_none());
    }

    #[test]
    fn settings_name_the_first_accepted_region() {
        assert_eq!(
            settings(&[], false),
            r#"{"region":"us-east-1","topUps":false}"#
        );
        assert_eq!(
            settings(&["eu-west-1".into()], true),
            r#"{"region":"eu-west-1","topUps":true}"#
        );
    }

    #[test]
    fn the_page_has_no_inline_script_and_no_other_origin() {
        let (_, _, html) = ASSETS[0];
        assert!(!html.contains("<script>"), "inline script");
        assert!(
            !html
                .split_whitespace()
                .any(|w| w.starts_with("on") && w.contains('=')),
            "inline handler"
        );
        for (_, _, body) in ASSETS {
            // The SVG namespace is a name, not a location.
            let body = body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "another origin"
            );
            assert!(!body.contains("innerHTML"), "innerHTML");
        }
    }
}
