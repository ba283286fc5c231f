//! The one place where failures become HTTP: every module's typed error is classified here
//! into a status, an OpenAI-shaped body, and whether it is the app's fault or ours.

use super::headers;
use super::record::Outcome;
use http::{HeaderValue, Response, StatusCode, header};

use super::body::Body;
use crate::limits::TenantError;
use crate::limits::ledger::{Limited, RateHeaders};
use crate::openai::{RequestError, error_body};
use crate::router::RouteError;
use crate::upstream::{BodyFailure, UpstreamError};

#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) code: Option<&'static str>,
    pub(crate) param: Option<&'static str>,
    pub(crate) message: String,
    pub(crate) retry_after: Option<u64>,
    /// How the request ended, for its log line and metrics.
    pub(crate) outcome: Outcome,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code,
            param: None,
            message: message.into(),
            retry_after: None,
            outcome: Outcome::Rejected,
        }
    }

    pub(crate) fn invalid(code: Option<&'static str>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            format!("The request body is larger than this sidecar's limit of {limit} bytes (server.max_body_bytes)."),
        )
    }

    pub(crate) fn unknown_url(method: &http::Method, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("unknown_url"),
            format!("Invalid URL ({method} {path}): the OpenAI API lives under /v1."),
        )
    }

    pub(crate) fn into_response(self, request_id: &HeaderValue) -> Response<Body> {
        let body = error_body(&self.message, self.kind, self.param, self.code);
        let mut resp = Response::new(Body::full(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(headers::REQUEST_ID, request_id.clone());
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        let code = match e {
            RequestError::Malformed(_) | RequestError::NotAnObject(_) => Some("invalid_json"),
            _ => None,
        };
        ApiError {
            param: e.param(),
            ..ApiError::invalid(code, e.to_string())
        }
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        let (status, code, param) = match &e {
            RouteError::UnknownModel { .. } => (StatusCode::NOT_FOUND, "model_not_found", Some("model")),
            RouteError::UnknownRoute { .. } => (StatusCode::BAD_REQUEST, "route_not_found", None),
            RouteError::NoEligibleTarget { .. } => (StatusCode::BAD_REQUEST, "no_eligible_model", None),
            RouteError::Unusable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable", None),
        };
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        ApiError {
            param,
            ..ApiError::new(status, kind, Some(code), e.to_string())
        }
    }
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            e.to_string(),
        )
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        let (status, code, retry_after) = match &e {
            UpstreamError::Connect { .. } | UpstreamError::Protocol { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream_unreachable", None)
            }
            UpstreamError::FirstByteTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", None),
            UpstreamError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "upstream_busy", Some(1)),
            UpstreamError::CircuitOpen { retry_in, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "circuit_open",
                Some(retry_in.as_secs().max(1)),
            ),
            UpstreamError::Status {
                status, retry_after, ..
            } if status.as_u16() == 429 => (
                StatusCode::TOO_MANY_REQUESTS,
                "upstream_rate_limited",
                Some(retry_after.map_or(1, |d| d.as_secs().max(1))),
            ),
            UpstreamError::Status { .. } => (StatusCode::BAD_GATEWAY, "upstream_status", None),
            UpstreamError::Unsupported { .. } => (StatusCode::BAD_REQUEST, "unsupported_by_provider", None),
            UpstreamError::Body {
                failure: BodyFailure::Reset(_),
                ..
            } => (StatusCode::BAD_GATEWAY, "upstream_reset", None),
            UpstreamError::Body {
                failure: BodyFailure::IdleTimeout(_) | BodyFailure::TotalTimeout | BodyFailure::FirstEventTimeout(_),
                ..
            } => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", None),
            UpstreamError::Body {
                failure: BodyFailure::ErrorEvent(_),
                ..
            } => (StatusCode::BAD_GATEWAY, "upstream_stream_error", None),
            UpstreamError::Body { .. } | UpstreamError::Malformed { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream_malformed", None)
            }
            // 502, not 401: the app's own key is fine; an SDK told 401 would blame it.
            UpstreamError::Auth { .. } => (StatusCode::BAD_GATEWAY, "upstream_auth", None),
        };
        ApiError {
            retry_after,
            outcome: Outcome::UpstreamError,
            ..ApiError::new(status, "upstream_error", Some(code), e.to_string())
        }
    }
}

impl ApiError {
    pub(crate) fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}

impl ApiError {
    /// A tenant over a rate limit (429 `rate_limit_exceeded`, with its `x-ratelimit-*`
    /// headers) or over its budget (429 `insufficient_quota`), worded for the app's developer.
    pub(crate) fn limited(tenant: &str, limited: Limited) -> (Self, Option<RateHeaders>) {
        match limited {
            Limited::Rate {
                reason,
                limit,
                reset,
                headers,
            } => {
                let what = reason.unit();
                let scope = if reason.per_model() { "for this model " } else { "" };
                let e = ApiError {
                    retry_after: Some(reset.as_secs().max(1)),
                    outcome: Outcome::RateLimited,
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "requests",
                        Some("rate_limit_exceeded"),
                        format!(
                            "Rate limit reached for tenant {tenant} {scope}on {what} per minute: limit {limit}. Retry in {:.0} s.",
                            reset.as_secs_f64().ceil()
                        ),
                    )
                };
                (e, Some(headers))
            }
            Limited::Budget {
                reason,
                limit_usd,
                spent_usd,
                reset,
            } => {
                let period = reason.period();
                let e = ApiError {
                    retry_after: Some(reset.as_secs().max(1)),
                    outcome: Outcome::OverBudget,
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "insufficient_quota",
                        Some("insufficient_quota"),
                        format!(
                            "Tenant {tenant} has used its {period} budget (${spent_usd:.2} of ${limit_usd:.2}); it renews in {} h {} min. Ask the platform team to raise tenants.list.{tenant}.budget.",
                            reset.as_secs() / 3600,
                            reset.as_secs() % 3600 / 60
                        ),
                    )
                };
                (e, None)
            }
        }
    }
}
