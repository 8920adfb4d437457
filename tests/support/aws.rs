//! A SigV4-signing admin client (signing like boto3) and a data-plane
//! client, both over real sockets, plus the servers they talk to.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::{routing::get, Router};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower_usage_plans::admin::{AdminCredentials, AdminService};
use tower_usage_plans::{UsagePlanLayer, UsagePlans};

use super::net::{channel_body, ChannelBody};
use super::sdk_signing::sign_as_sdk;

pub const AKID: &str = "AKIDTEST";
pub const SECRET: &str = "test-secret";

/// Status, headers and the JSON body (`Null` when the body is empty).
pub type Resp = (StatusCode, HeaderMap, Value);
pub type Req = Request<Full<Bytes>>;

/// The admin API, a data plane wearing the layer, both on the same
/// `UsagePlans`, each on its own real socket.
pub struct Env {
    pub plans: UsagePlans,
    pub admin: Admin,
    data: SocketAddr,
}

pub async fn env() -> Env {
    env_with(UsagePlans::new()).await
}

pub async fn env_with(plans: UsagePlans) -> Env {
    env_of(plans, false).await
}

/// As [`env`], the admin API taking `add /remaining` (`with_top_ups`).
pub async fn env_with_top_ups() -> Env {
    env_of(UsagePlans::new(), true).await
}

async fn env_of(plans: UsagePlans, top_ups: bool) -> Env {
    let admin = AdminService::new(
        plans.clone(),
        AdminCredentials::new().with_access_key(AKID, SECRET),
    )
    .with_top_ups(top_ups);
    let admin_addr = serve(Router::new().fallback_service(admin)).await;
    let data = serve(
        Router::new()
            .route("/pets", get(|| async { "pets" }))
            .layer(UsagePlanLayer::new(plans.clone())),
    )
    .await;
    Env {
        plans,
        admin: Admin {
            addr: admin_addr,
            http: Client::builder(TokioExecutor::new()).build_http(),
            request_ids: Mutex::default(),
        },
        data,
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

impl Env {
    /// `GET /pets` on the data plane with `x-api-key: key`.
    pub async fn data(&self, key: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::get(format!("http://{}/pets", self.data));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let response = self
            .admin
            .http
            .request(request.body(Full::default()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }
}

pub struct Admin {
    addr: SocketAddr,
    http: Client<HttpConnector, Full<Bytes>>,
    request_ids: Mutex<HashSet<String>>,
}

impl Admin {
    /// An unsigned request with boto3's headers: `host` (with port),
    /// `accept`, and `content-type` when given.
    pub fn unsigned(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Req {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("host", self.addr.to_string())
            .header("accept", "application/json");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap()
    }

    /// The same request, SigV4-signed (`apigateway`, `us-east-1`) over
    /// `body`: adds `x-amz-date` and `authorization`.
    pub fn signed_as(&self, akid: &str, secret: &str, request: Req, body: &[u8]) -> Req {
        self.signed_at(akid, secret, request, body, SystemTime::now())
    }

    /// Signed as of `time`.
    pub fn signed_at(
        &self,
        akid: &str,
        secret: &str,
        mut request: Req,
        body: &[u8],
        time: SystemTime,
    ) -> Req {
        let headers: Vec<(&str, &str)> = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        let instructions = sign_as_sdk(
            (akid, secret),
            time,
            request.method().as_str(),
            &request.uri().to_string(),
            &headers,
            body,
        );
        instructions.apply_to_request_http1x(&mut request);
        request
    }

    pub fn signed(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Req {
        let request = self.unsigned(method, path, content_type, body);
        self.signed_as(AKID, SECRET, request, body)
    }

    /// Sends, checks the request id (present, a UUID, never seen before)
    /// and parses the body as JSON.
    pub async fn send(&self, request: Req) -> Resp {
        self.read(self.http.request(request).await.unwrap()).await
    }

    /// Sends `request` with its body streamed as `chunks` (no
    /// Content-Length: `Transfer-Encoding: chunked`).
    pub async fn send_chunked(&self, request: Req, chunks: Vec<Bytes>) -> Resp {
        let client: Client<HttpConnector, ChannelBody> =
            Client::builder(TokioExecutor::new()).build_http();
        let (sender, body) = channel_body(chunks.len().max(1));
        for chunk in chunks {
            sender.try_send(chunk).unwrap();
        }
        drop(sender);
        self.read(client.request(request.map(|_| body)).await.unwrap())
            .await
    }

    async fn read(&self, response: Response<Incoming>) -> Resp {
        let (parts, body) = response.into_parts();
        let id = parts
            .headers
            .get("x-amzn-RequestId")
            .expect("x-amzn-RequestId");
        let id = id.to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "request id {id}");
        assert!(
            self.request_ids.lock().unwrap().insert(id),
            "request id reused"
        );
        let body = body.collect().await.unwrap().to_bytes();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)))
        };
        (parts.status, parts.headers, value)
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Resp {
        self.send(self.signed(method, path, content_type, body))
            .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.raw("GET", path, None, b"").await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.raw("DELETE", path, None, b"").await
    }

    /// DELETE `path`: 202 with an empty body; then GET and DELETE of it are
    /// both `404 NotFoundException`. The GET's message.
    pub async fn delete_then_gone(&self, path: &str) -> String {
        let (status, _, body) = self.delete(path).await;
        assert_eq!(
            (status, body),
            (StatusCode::ACCEPTED, Value::Null),
            "{path}"
        );
        let message = assert_not_found(&self.get(path).await);
        assert_not_found(&self.delete(path).await);
        message
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        let body = serde_json::to_vec(&body).unwrap();
        self.raw("POST", path, Some("application/json"), &body)
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        let body = serde_json::to_vec(&body).unwrap();
        self.raw("PATCH", path, Some("application/json"), &body)
            .await
    }

    /// `PATCH path` with `patchOperations` made of `(op, path, value)`.
    pub async fn patch_ops(&self, path: &str, ops: &[(&str, &str, &str)]) -> Resp {
        let ops: Vec<Value> = ops
            .iter()
            .map(|(op, path, value)| json!({"op": op, "path": path, "value": value}))
            .collect();
        self.patch(path, json!({ "patchOperations": ops })).await
    }

    /// Creates an enabled key named `name` with `value`; 201 or panic.
    pub async fn create_key(&self, name: &str, value: &str) -> Value {
        let (status, _, key) = self
            .post(
                "/apikeys",
                json!({"name": name, "value": value, "enabled": true}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        key
    }

    /// Creates a plan from `body`; 201 or panic.
    pub async fn create_plan(&self, body: Value) -> Value {
        let (status, _, plan) = self.post("/usageplans", body).await;
        assert_eq!(status, StatusCode::CREATED, "{plan}");
        plan
    }

    /// CreateUsagePlanKey; 201 or panic.
    pub async fn add_key(&self, plan: &Value, key: &Value) -> Value {
        let (status, _, member) = self
            .post(
                &format!("/usageplans/{}/keys", plan["id"].as_str().unwrap()),
                json!({"keyId": key["id"], "keyType": "API_KEY"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{member}");
        member
    }

    /// Follows `position` through a list operation with `limit=2`; the
    /// pages (the list must end within 20 pages).
    pub async fn pages(&self, path: &str, items: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut pages = Vec::new();
        let mut position: Option<String> = None;
        loop {
            assert!(pages.len() < 20, "pagination does not end: {pages:?}");
            let url = match &position {
                None => format!("{path}{sep}limit=2"),
                Some(p) => format!("{path}{sep}limit=2&position={p}"),
            };
            let (status, _, page) = self.get(&url).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let len = match &page[items] {
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                other => panic!("no {items}: {other}"),
            };
            position = page.get("position").map(|p| p.as_str().unwrap().to_owned());
            assert!(len <= 2, "{page}");
            assert!(
                position.is_none() || len == 2,
                "short page with a position: {page}"
            );
            pages.push(page);
            if position.is_none() {
                return pages;
            }
        }
    }
}

/// Asserts an AWS error: status, `x-amzn-ErrorType` (up to a `:`), JSON
/// content type and a body of exactly `{"message": "..."}`; the message.
#[track_caller]
pub fn assert_error(resp: &Resp, status: u16, code: &str) -> String {
    let (s, headers, body) = resp;
    assert_eq!(s.as_u16(), status, "{body}");
    let error_type = headers
        .get("x-amzn-ErrorType")
        .unwrap_or_else(|| panic!("no x-amzn-ErrorType: {body}"));
    let error_type = error_type.to_str().unwrap();
    assert_eq!(error_type.split(':').next(), Some(code), "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(object.len(), 1, "{body}");
    let message = body["message"].as_str().expect("message is a string");
    assert!(!message.is_empty());
    message.to_owned()
}

/// `assert_error` for `400 BadRequestException`; the message.
#[track_caller]
pub fn assert_bad_request(resp: &Resp) -> String {
    assert_error(resp, 400, "BadRequestException")
}

/// `assert_error` for `404 NotFoundException`; the message.
#[track_caller]
pub fn assert_not_found(resp: &Resp) -> String {
    assert_error(resp, 404, "NotFoundException")
}

/// A JSON integer (not a string, not a float).
#[track_caller]
pub fn int(v: &Value) -> i64 {
    assert!(v.is_i64() || v.is_u64(), "not a JSON integer: {v}");
    v.as_i64().unwrap()
}

pub fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {v}"))
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Today's UTC date, `yyyy-MM-dd`.
pub fn today() -> String {
    jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}
