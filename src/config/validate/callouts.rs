//! `callouts`: the HTTP services asked before routing (`before_route`) and told after the
//! answer (`after_answer`): URL, credentials and headers (as a provider's), timeout, failure
//! policy, breaker.

use super::*;

/// Calls a callout may have in flight by default.
const DEFAULT_CALLOUT_IN_FLIGHT: u32 = 64;
/// A before_route callout's default budget: it is on every request's path.
const DEFAULT_BEFORE_TIMEOUT: Duration = Duration::from_millis(100);
/// An after_answer callout's: nobody waits for it.
const DEFAULT_AFTER_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_BREAKER_FAILURES: u32 = 5;
const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(10);

impl Validator<'_> {
    pub(super) fn callouts(&mut self, raw: RawCallouts) -> CalloutsConfig {
        CalloutsConfig {
            before_route: raw
                .before_route
                .and_then(|c| self.callout(CalloutPoint::BeforeRoute, c))
                .map(Arc::new),
            after_answer: raw
                .after_answer
                .and_then(|c| self.callout(CalloutPoint::AfterAnswer, c))
                .map(Arc::new),
        }
    }

    fn callout(&mut self, point: CalloutPoint, raw: RawCallout) -> Option<CalloutConfig> {
        let path = format!("callouts.{}", point.label());
        let start = self.issues.len();
        let url = match raw.url.parse::<Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some() => Some(u),
            _ => {
                self.issue(
                    format!("{path}.url"),
                    format!(
                        "{:?} is not an http(s) URL: write e.g. http://policy.platform:8080/check",
                        raw.url
                    ),
                );
                None
            }
        };
        let before = point == CalloutPoint::BeforeRoute;
        let default_timeout = if before {
            DEFAULT_BEFORE_TIMEOUT
        } else {
            DEFAULT_AFTER_TIMEOUT
        };
        let timeout = self.duration(&format!("{path}.timeout"), raw.timeout.as_deref(), default_timeout);
        if timeout.is_zero() {
            self.issue(format!("{path}.timeout"), "must be greater than zero");
        }
        let fail_closed = match raw.on_failure.as_deref() {
            None | Some("allow") => false,
            Some("refuse") if before => true,
            Some("refuse") => {
                self.issue(
                    format!("{path}.on_failure"),
                    "after_answer never holds a request: only before_route can refuse",
                );
                false
            }
            Some(other) => {
                self.issue(
                    format!("{path}.on_failure"),
                    format!("{other:?}: use allow (the request goes on without the callout) or refuse (503 callout_unavailable)"),
                );
                false
            }
        };
        if raw.send_body.is_some() && !before {
            self.issue(format!("{path}.send_body"), "only before_route sends the request");
        }
        let soft = self.soft.len();
        let auth = raw.auth.and_then(|a| self.auth(&format!("{path}.auth"), a));
        // A callout's missing key cannot degrade to "some models unusable": it is an error.
        let missing: Vec<ConfigIssue> = self.soft.drain(soft..).collect();
        self.issues.extend(missing);
        let headers = self.header_list(&path, raw.headers);
        let ca_file = self.ca_file(&path, raw.ca_file);
        let max_in_flight = raw.max_in_flight.unwrap_or(DEFAULT_CALLOUT_IN_FLIGHT);
        if max_in_flight == 0 {
            self.issue(format!("{path}.max_in_flight"), "must be at least 1");
        }
        let b = raw.breaker.unwrap_or_default();
        let breaker_failures = b.failures.unwrap_or(DEFAULT_BREAKER_FAILURES);
        if breaker_failures == 0 {
            self.issue(format!("{path}.breaker.failures"), "must be at least 1");
        }
        let breaker_cooldown = self.duration(
            &format!("{path}.breaker.cooldown"),
            b.cooldown.as_deref(),
            DEFAULT_BREAKER_COOLDOWN,
        );
        if self.issues.len() > start {
            return None;
        }
        let url = url?;
        let client = ProviderConfig {
            name: format!("callout:{}", point.label()).into(),
            base_url: url.clone(),
            auth,
            headers,
            query: String::new(),
            ca_file,
            timeouts: Timeouts {
                connect: timeout,
                first_byte: timeout,
                idle: timeout,
                total: timeout,
            },
            max_connections: max_in_flight as usize,
            inject_stream_usage: false,
            kind: ProviderKind::OpenAi,
            health_check: None,
            unusable: None,
        };
        Some(CalloutConfig {
            point,
            url,
            client: Arc::new(client),
            timeout,
            fail_closed,
            send_body: raw.send_body.unwrap_or(true),
            max_in_flight: max_in_flight as usize,
            breaker_failures,
            breaker_cooldown,
        })
    }
}
