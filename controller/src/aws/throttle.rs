//! An outbound rate limit per AWS service: a token bucket per service (its SigV4 signing name), applied to
//! every HTTP request the SDK sends, retries included. AWS's control planes are rate-limited per account
//! and region, API Gateway's far below the others; a controller serving many pipelines in one account must
//! stay under them instead of living on 429s.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Requests per second and burst for one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// The limits by service signing name (`apigateway`, `iam`, `lambda`, …); a service not named is not
/// limited. Parsed from `service=rate[/burst],…`; `none` for no limit at all (an emulator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits(pub BTreeMap<String, Rate>);

fn rate(per_second: u32, burst: u32) -> Rate {
    Rate {
        per_second: NonZeroU32::new(per_second).expect("a positive rate"),
        burst: NonZeroU32::new(burst).expect("a positive burst"),
    }
}

impl Default for RateLimits {
    /// Below AWS's published control-plane quotas per account and region, leaving room for other
    /// tools in the same account: API Gateway's management API allows 10 requests per second (burst 40)
    /// across all its operations; IAM's and the other services' mutating calls are limited more loosely.
    fn default() -> Self {
        Self(BTreeMap::from([
            ("apigateway".into(), rate(5, 10)),
            ("iam".into(), rate(10, 20)),
            ("lambda".into(), rate(15, 30)),
            ("states".into(), rate(15, 30)),
            ("monitoring".into(), rate(15, 30)),
            ("logs".into(), rate(15, 30)),
            ("ecr".into(), rate(15, 30)),
            ("sns".into(), rate(20, 40)),
            ("dynamodb".into(), rate(20, 40)),
            ("s3".into(), rate(50, 100)),
            ("sqs".into(), rate(50, 100)),
            ("sts".into(), rate(10, 20)),
        ]))
    }
}

impl RateLimits {
    /// No limit on any service.
    pub fn none() -> Self {
        Self(BTreeMap::new())
    }
}

impl FromStr for RateLimits {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("none") {
            return Ok(Self::none());
        }
        if s.is_empty() || s.eq_ignore_ascii_case("default") {
            return Ok(Self::default());
        }
        let mut limits = Self::default();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (service, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not service=rate[/burst]"))?;
            let (per_second, burst) = match value.split_once('/') {
                Some((r, b)) => (r, Some(b)),
                None => (value, None),
            };
            let number = |text: &str| {
                text.trim()
                    .parse::<u32>()
                    .ok()
                    .and_then(NonZeroU32::new)
                    .ok_or_else(|| format!("{pair:?}: {text:?} is not a positive whole number"))
            };
            let per_second = number(per_second)?;
            let burst = match burst {
                Some(b) => number(b)?,
                None => per_second.saturating_mul(NonZeroU32::new(2).expect("2")),
            };
            limits.0.insert(
                service.trim().to_ascii_lowercase(),
                Rate { per_second, burst },
            );
        }
        Ok(limits)
    }
}

impl fmt::Display for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(s, r)| format!("{s}={}/{}", r.per_second, r.burst))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// The buckets, shared by every client (and every pipeline) of one engine.
struct Buckets(BTreeMap<String, DefaultDirectRateLimiter>);

/// The signing name of a signed request: the service of its SigV4 credential scope
/// (`Credential=AKID/20260101/us-east-1/apigateway/aws4_request`). Works against AWS and emulators alike.
fn service_of(request: &HttpRequest) -> Option<String> {
    let auth = request.headers().get("authorization")?;
    let scope = auth.split("Credential=").nth(1)?.split([',', ' ']).next()?;
    scope.split('/').nth(3).map(str::to_ascii_lowercase)
}

/// An HTTP client that waits for its service's bucket before every request.
#[derive(Clone)]
pub struct RateLimitedClient {
    inner: SharedHttpClient,
    buckets: Arc<Buckets>,
}

impl fmt::Debug for RateLimitedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitedClient").finish_non_exhaustive()
    }
}

impl RateLimitedClient {
    pub fn new(inner: SharedHttpClient, limits: &RateLimits) -> Self {
        let buckets = limits
            .0
            .iter()
            .map(|(service, rate)| {
                let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
                (service.clone(), RateLimiter::direct(quota))
            })
            .collect();
        Self {
            inner,
            buckets: Arc::new(Buckets(buckets)),
        }
    }
}

impl HttpClient for RateLimitedClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(RateLimitedConnector {
            inner: self.inner.http_connector(settings, components),
            buckets: self.buckets.clone(),
        })
    }
}

#[derive(Debug)]
struct RateLimitedConnector {
    inner: SharedHttpConnector,
    buckets: Arc<Buckets>,
}

impl fmt::Debug for Buckets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl HttpConnector for RateLimitedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let inner = self.inner.clone();
        let buckets = self.buckets.clone();
        let service = service_of(&request);
        HttpConnectorFuture::new(async move {
            if let Some(bucket) = service.as_deref().and_then(|s| buckets.0.get(s)) {
                bucket.until_ready().await;
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overrides_over_the_defaults_and_none() {
        let limits: RateLimits = "apigateway=2/4, iam=7".parse().unwrap();
        assert_eq!(limits.0["apigateway"], rate(2, 4));
        assert_eq!(
            limits.0["iam"],
            rate(7, 14),
            "burst defaults to twice the rate"
        );
        assert_eq!(limits.0["lambda"], RateLimits::default().0["lambda"]);
        assert_eq!("none".parse::<RateLimits>().unwrap(), RateLimits::none());
        assert!("apigateway=0".parse::<RateLimits>().is_err());
        assert!("apigateway".parse::<RateLimits>().is_err());
        let round = RateLimits::default()
            .to_string()
            .parse::<RateLimits>()
            .unwrap();
        assert_eq!(round, RateLimits::default());
    }

    #[test]
    fn the_service_is_the_signing_scope_of_the_request() {
        let mut request = HttpRequest::empty();
        request.headers_mut().insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/apigateway/aws4_request, SignedHeaders=host, Signature=x",
        );
        assert_eq!(service_of(&request).as_deref(), Some("apigateway"));
        assert_eq!(service_of(&HttpRequest::empty()), None);
    }

    #[tokio::test]
    async fn a_bucket_spaces_requests_past_the_burst() {
        let quota = Quota::per_second(NonZeroU32::new(20).unwrap())
            .allow_burst(NonZeroU32::new(2).unwrap());
        let bucket = RateLimiter::direct(quota);
        let started = std::time::Instant::now();
        for _ in 0..6 {
            bucket.until_ready().await;
        }
        // 2 at once, then 4 more at 20 per second: at least 150 ms.
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }
}
