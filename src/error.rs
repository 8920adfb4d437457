//! The error type of every [`UsagePlans`](crate::UsagePlans) operation.

use std::fmt;
use std::sync::Arc;

/// What went wrong, in the terms the admin API maps to AWS errors.
///
/// ```
/// use tower_usage_plans::{ErrorKind, NewApiKey, NewUsagePlan, UsagePlans};
///
/// let plans = UsagePlans::new();
/// let plan = plans.create_usage_plan(NewUsagePlan::new("basic")).unwrap();
/// let key = plans.create_api_key(NewApiKey::new("alice")).unwrap();
/// plans.add_key_to_plan(&plan.id, &key.id).unwrap();
/// let again = plans.add_key_to_plan(&plan.id, &key.id).unwrap_err();
/// assert_eq!(again.kind(), ErrorKind::Conflict);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An id that names nothing: AWS `NotFoundException` (404).
    NotFound,
    /// A duplicate or a state clash: AWS `ConflictException` (409).
    Conflict,
    /// Invalid input: AWS `BadRequestException` (400).
    BadRequest,
    /// The counter store failed (e.g. Redis unreachable).
    Store,
}

/// An operation that was refused; nothing was changed.
///
/// ```
/// use tower_usage_plans::{ErrorKind, UsagePlans};
///
/// let plans = UsagePlans::new();
/// let err = plans.usage_plan("nope").unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::NotFound);
/// assert_eq!(err.message(), "Invalid Usage Plan ID specified");
/// ```
///
/// A store failure keeps what caused it as its
/// [`source`](std::error::Error::source) (e.g. the `redis` crate's error).
/// Two errors are equal when their kind and message are.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for Error {}

impl Error {
    /// An error of `kind` with a human-readable `message`.
    ///
    /// ```
    /// # use tower_usage_plans::{Error, ErrorKind};
    /// let err = Error::new(ErrorKind::BadRequest, "Invalid quota limit");
    /// assert_eq!(err.to_string(), "Invalid quota limit");
    /// ```
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `source`.
    ///
    /// ```
    /// use std::error::Error as _;
    /// use tower_usage_plans::{Error, ErrorKind};
    ///
    /// let cause = std::io::Error::other("connection refused");
    /// let err = Error::new(ErrorKind::Store, "Redis connect: connection refused")
    ///     .with_source(cause);
    /// assert_eq!(err.source().unwrap().to_string(), "connection refused");
    /// ```
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub(crate) fn plan_not_found() -> Self {
        Self::new(ErrorKind::NotFound, "Invalid Usage Plan ID specified")
    }

    pub(crate) fn key_not_found() -> Self {
        Self::new(ErrorKind::NotFound, "Invalid API Key identifier specified")
    }

    /// The kind of failure.
    ///
    /// ```
    /// # use tower_usage_plans::{ErrorKind, UsagePlans};
    /// let err = UsagePlans::new().api_key("nope").unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::NotFound);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, worded like AWS's where AWS has one.
    ///
    /// ```
    /// # use tower_usage_plans::UsagePlans;
    /// let err = UsagePlans::new().api_key("nope").unwrap_err();
    /// assert_eq!(err.message(), "Invalid API Key identifier specified");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// `Result` with this crate's [`Error`].
///
/// ```
/// use tower_usage_plans::{ErrorKind, Result, UsagePlan, UsagePlans};
///
/// fn find(plans: &UsagePlans, id: &str) -> Result<UsagePlan> {
///     plans.usage_plan(id)
/// }
/// assert_eq!(find(&UsagePlans::new(), "nope").unwrap_err().kind(), ErrorKind::NotFound);
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
