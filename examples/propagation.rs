//! How long a change made through one gateway replica takes to bind
//! another: two replicas on one Redis, 100 changes (a key disabled, then
//! enabled again) made through A, each timed from the call until it
//! returned — the admin API answers only then — and each checked on B's
//! very next request. Prints p50, p99 and the worst.
//!
//! ```text
//! cargo run --release --example propagation -- redis://127.0.0.1:6390
//! ```

use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_usage_plans::gateway::{FilePlan, Gateway, GatewayConfig};
use tower_usage_plans::{NewApiKey, NewUsagePlan, Quota, QuotaPeriod};

const KEY: &str = "propagation-key-0123456789";
const CHANGES: usize = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6390".into());
    let config = || GatewayConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        redis: Some(url.clone()),
        keys: vec![NewApiKey::new("propagation")
            .with_value(KEY)
            .with_enabled(true)],
        plans: vec![FilePlan {
            plan: NewUsagePlan::new("propagation")
                .with_quota(Quota::new(1_000_000, QuotaPeriod::Day)),
            keys: vec!["propagation".into()],
        }],
        ..GatewayConfig::default()
    };
    let a = Gateway::start(config()).await?;
    let b = Gateway::start(config()).await?;
    let key_id = a.plans().api_key_by_value(KEY).ok_or("no key")?.id;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let mut took = Vec::with_capacity(CHANGES);
    for change in 0..CHANGES {
        let enabled = change % 2 == 1;
        let started = Instant::now();
        a.plans().update_api_key(&key_id, |key| {
            key.enabled = enabled;
            Ok(())
        })?;
        a.plans().replicated().await?;
        took.push(started.elapsed());
        let request = http::Request::get(format!("http://{}/", b.data_addr()))
            .header("x-api-key", KEY)
            .body(Empty::new())?;
        let status = client.request(request).await?.status().as_u16();
        let want = if enabled { 200 } else { 403 };
        if status != want {
            return Err(format!("change {change}: B answered {status}, not {want}").into());
        }
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{CHANGES} changes, each enforced by the other replica on its next request: \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(took[took.len() - 1])
    );
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}
