//! [`UsageContext`] as an axum extractor.

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

use super::UsageContext;

/// The rejection of the [`UsageContext`] extractor: the handler is not
/// behind [`UsagePlanLayer`](crate::UsagePlanLayer) (or the layer was built
/// `with_usage_context(false)`, or the route is unmetered). Answers 500,
/// naming the missing layer: a wiring mistake, not the client's.
///
/// ```
/// use axum_core::response::IntoResponse;
/// use tower_usage_plans::MissingUsageContext;
///
/// let response = MissingUsageContext.into_response();
/// assert_eq!(response.status(), 500);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MissingUsageContext;

impl std::fmt::Display for MissingUsageContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "no UsageContext in the request: the handler is not behind UsagePlanLayer \
             (or its route is unmetered, or the layer runs with_usage_context(false))",
        )
    }
}

impl std::error::Error for MissingUsageContext {}

impl IntoResponse for MissingUsageContext {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

/// A handler takes the context of its request as an argument: who it was
/// counted for, what the quota has left. (A clone: the charge stays in the
/// request's extensions.)
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_usage_plans::{UsageContext, UsagePlanLayer, UsagePlans};
///
/// async fn pets(usage: UsageContext) -> String {
///     format!("pets for key {} on plan {}", usage.key_id(), usage.plan_id())
/// }
///
/// let app: Router = Router::new()
///     .route("/pets", get(pets))
///     .layer(UsagePlanLayer::new(UsagePlans::new()));
/// # drop(app);
/// ```
impl<S: Send + Sync> FromRequestParts<S> for UsageContext {
    type Rejection = MissingUsageContext;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<UsageContext>()
            .cloned()
            .ok_or(MissingUsageContext)
    }
}
