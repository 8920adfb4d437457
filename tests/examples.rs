//! The README's axum example, run as written: `cargo run --example axum_app`
//! then the curl lines (here: an HTTP client), on a free port.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const DEMO_KEY: &str = "demo-key-0123456789abcdef";

struct Example(Child);

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cargo test` builds the examples next to the test binaries.
fn example_path(name: &str) -> std::path::PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("examples").join(name)
}

#[tokio::test]
async fn axum_app_answers_200_403_and_429_as_the_readme_says() {
    let path = example_path("axum_app");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it",
        path.display()
    );
    let mut child = Command::new(&path)
        .env("ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Example(child);
    let mut stdout = BufReader::new(stdout);
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // Keep reading: the example prints more, and a closed pipe would kill it.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected: {first}"))
        .to_owned();

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let get = |path: &str, key: Option<&str>| {
        let mut request = http::Request::get(format!("http://{addr}{path}"));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        let request = request.body(Empty::new()).unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (status, body) = get("/pets", None).await;
    assert_eq!((status, body.as_str()), (403, r#"{"message":"Forbidden"}"#));
    assert_eq!(get("/health", None).await.0, 200, "unmetered");
    // Burst of 5 at 2/s: five pass, the sixth is throttled (the README's line).
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get("/pets", Some(DEMO_KEY)).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
}

#[test]
fn memory_probe_runs_and_reports_bytes_per_key() {
    let path = example_path("memory");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it",
        path.display()
    );
    let output = Command::new(&path).arg("2000").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let row: Vec<&str> = text.lines().last().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "2000", "{text}");
    let total: f64 = row[3].parse().unwrap();
    assert!(total > 0.0, "resident growth was measured: {text}");
}
