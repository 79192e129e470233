//! Request-rate limits: a token bucket per caller. Which bucket a request draws from:
//!
//! - provider webhooks and secret-token triggers: per client address, `webhook` (off by
//!   default: a provider's burst of deliveries must not be dropped, and most providers do not
//!   redeliver a refused one);
//! - the admin token: `admin` (off by default: the operator must not be locked out);
//! - another valid token (or a trusted proxy's user): per token or user, `token`;
//! - no valid token: per client address, `anonymous` (slows down token guessing and bounds
//!   the audit records refused calls cost).
//!
//! An IPv6 client is keyed by its /64 network (one host usually holds the whole network).
//! Excess requests get 429 problem+json with `Retry-After`, before anything else runs: they
//! are neither authenticated further nor recorded in the audit log (recording them would
//! cost the write the limit protects against); the first refusal of a run is logged.
//!
//! Memory is bounded: a bucket that has refilled is the same as no bucket and is dropped on
//! the next sweep; past [`MAX_KEYS`] buckets, new keys share one overflow bucket until a sweep
//! makes room.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::audit::{Actor, actor_of, client_of, is_hook_sender};
use crate::{AppState, Problem};

/// Most buckets one limit keeps.
pub const MAX_KEYS: usize = 100_000;
/// How often idle buckets are swept at most.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A sustained rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// `N/s`, `N/m` or `N/h` (N at least 1).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or("expected N/s, N/m or N/h (e.g. 50/s), or off")?;
        let count: u32 = n
            .trim()
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or("the count must be a whole number of at least 1")?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err("the unit must be s, m or h".into()),
        };
        Ok(Rate { count, per })
    }

    /// [`Rate::parse`], or `None` for `off`.
    pub fn parse_optional(s: &str) -> Result<Option<Rate>, String> {
        if matches!(s.trim(), "off" | "none" | "0") {
            Ok(None)
        } else {
            Rate::parse(s).map(Some)
        }
    }

    fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// The limits `serve` applies; `None` is no limit.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// Per token other than the admin token.
    pub token: Option<Rate>,
    /// The admin token.
    pub admin: Option<Rate>,
    /// Per client address, for calls without a valid token.
    pub anonymous: Option<Rate>,
    /// Per client address, for provider webhooks and secret-token triggers.
    pub webhook: Option<Rate>,
    /// Requests a full bucket lets through at once, for every limit.
    pub burst: u32,
}

impl RateLimits {
    /// No limit at all.
    pub fn off() -> RateLimits {
        RateLimits {
            token: None,
            admin: None,
            anonymous: None,
            webhook: None,
            burst: 100,
        }
    }
}

impl Default for RateLimits {
    /// What `serve` applies unless told otherwise.
    fn default() -> Self {
        RateLimits {
            token: Some(Rate {
                count: 50,
                per: Duration::from_secs(1),
            }),
            anonymous: Some(Rate {
                count: 10,
                per: Duration::from_secs(1),
            }),
            ..RateLimits::off()
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
    /// Refused since the last request it let through (the first refusal is logged).
    refusing: bool,
}

/// The buckets of one limit.
struct Limiter {
    rate: Rate,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<String, Bucket>,
    overflow: Option<Bucket>,
    swept: Instant,
}

/// What a limiter said.
enum Verdict {
    Allowed,
    /// Refused: wait this long; `first` when the key was not refusing before.
    Refused {
        wait: Duration,
        first: bool,
    },
}

impl Limiter {
    fn new(rate: Rate, burst: u32) -> Limiter {
        Limiter {
            rate,
            burst: f64::from(burst.max(1)),
            max_keys: MAX_KEYS,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                overflow: None,
                swept: Instant::now(),
            }),
        }
    }

    /// How long an idle bucket takes to refill: after that it is as good as absent.
    fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.rate.per_second())
    }

    fn check(&self, key: &str, now: Instant) -> Verdict {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(b.swept) >= SWEEP_EVERY || b.map.len() >= self.max_keys {
            self.sweep(&mut b, now);
        }
        let full = || Bucket {
            tokens: self.burst,
            last: now,
            refusing: false,
        };
        let bucket = if b.map.contains_key(key) || b.map.len() < self.max_keys {
            b.map.entry(key.to_string()).or_insert_with(full)
        } else {
            b.overflow.get_or_insert_with(full)
        };
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate.per_second()).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.refusing = false;
            Verdict::Allowed
        } else {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate.per_second());
            let first = !bucket.refusing;
            bucket.refusing = true;
            Verdict::Refused { wait, first }
        }
    }

    /// Drops the buckets that have refilled since their last request.
    fn sweep(&self, b: &mut Buckets, now: Instant) {
        let idle = self.refill_time();
        b.map
            .retain(|_, bucket| now.saturating_duration_since(bucket.last) < idle);
        if b.overflow
            .as_ref()
            .is_some_and(|o| now.saturating_duration_since(o.last) >= idle)
        {
            b.overflow = None;
        }
        b.swept = now;
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.buckets.lock().unwrap().map.len()
    }
}

/// Every limit's buckets, shared by all requests of one router.
pub(crate) struct Limiters {
    token: Option<Limiter>,
    admin: Option<Limiter>,
    anonymous: Option<Limiter>,
    webhook: Option<Limiter>,
}

impl Limiters {
    pub(crate) fn new(l: &RateLimits) -> Arc<Limiters> {
        let make = |r: Option<Rate>| r.map(|r| Limiter::new(r, l.burst));
        Arc::new(Limiters {
            token: make(l.token),
            admin: make(l.admin),
            anonymous: make(l.anonymous),
            webhook: make(l.webhook),
        })
    }
}

/// The key of a client address: the address, or its /64 network for IPv6.
fn address_key(ip: Option<IpAddr>) -> String {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => format!("ip:{v4}"),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "ip:unknown".to_string(),
    }
}

/// The outermost middleware: finds the actor (kept for the audit log), then applies the
/// limit that covers the request.
pub(crate) async fn limit(
    State((s, limiters)): State<(AppState, Arc<Limiters>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    if route.as_deref() == Some("/healthz") {
        return next.run(req).await;
    }
    let hook_sender = route.as_deref().is_some_and(is_hook_sender);
    // Authenticated once, here: authorization (inside) takes the caller found.
    let caller = if hook_sender {
        None
    } else {
        let headers = req.headers().clone();
        crate::identity::authenticate_request(&s, &headers, client_of(&req)).await
    };
    let actor = actor_of(&req, caller.as_ref());
    let ip = crate::forwarded::client_ip(&s, &req);
    let (limiter, key, name) = match &caller {
        _ if hook_sender => (&limiters.webhook, address_key(ip), "webhook"),
        None => (&limiters.anonymous, address_key(ip), "anonymous"),
        Some(c) if c.is_admin_token() => (&limiters.admin, actor.clone(), "admin"),
        Some(c) => (&limiters.token, c.limit_key(), "token"),
    };
    req.extensions_mut().insert(Actor(actor.clone()));
    if let Some(c) = caller {
        req.extensions_mut()
            .insert(crate::identity::Authenticated(c));
    }
    let Some(limiter) = limiter else {
        return next.run(req).await;
    };
    match limiter.check(&key, Instant::now()) {
        Verdict::Allowed => next.run(req).await,
        Verdict::Refused { wait, first } => {
            if first {
                tracing::warn!(limit = name, rate = %limiter.rate, %actor, client = ?ip,
                    "request rate limit reached; refusing with 429 until the rate drops");
            }
            too_many(name, limiter.rate, wait)
        }
    }
}

fn too_many(name: &str, rate: Rate, wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut r = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("request rate limit ({name}: {rate}) exceeded; retry in {secs} s"),
    )
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(
            Rate::parse("50/s"),
            Ok(Rate {
                count: 50,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(Rate::parse("600/m").unwrap().per, Duration::from_secs(60));
        assert_eq!(Rate::parse("10/h").unwrap().to_string(), "10/h");
        assert_eq!(Rate::parse_optional("off"), Ok(None));
        for bad in ["", "50", "0/s", "-1/s", "x/s", "5/d", "1.5/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_lets_a_burst_through_then_the_rate() {
        let l = Limiter::new(Rate::parse("10/s").unwrap(), 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(matches!(l.check("a", t0), Verdict::Allowed));
        }
        let Verdict::Refused { wait, first } = l.check("a", t0) else {
            panic!("the fourth at once is refused")
        };
        assert!(first);
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert!(matches!(
            l.check("a", t0),
            Verdict::Refused { first: false, .. }
        ));
        // Another key is unaffected.
        assert!(matches!(l.check("b", t0), Verdict::Allowed));
        // One token back after 100 ms.
        let t1 = t0 + Duration::from_millis(100);
        assert!(matches!(l.check("a", t1), Verdict::Allowed));
        assert!(matches!(l.check("a", t1), Verdict::Refused { .. }));
    }

    #[test]
    fn idle_buckets_are_swept_and_overflow_is_shared() {
        let mut l = Limiter::new(Rate::parse("1/s").unwrap(), 2);
        l.max_keys = 50;
        let t0 = Instant::now();
        for i in 0..50 {
            l.check(&format!("k{i}"), t0);
        }
        assert_eq!(l.keys(), 50);
        // Full: new keys share the overflow bucket (burst 2).
        assert!(matches!(l.check("new1", t0), Verdict::Allowed));
        assert!(matches!(l.check("new2", t0), Verdict::Allowed));
        assert!(matches!(l.check("new3", t0), Verdict::Refused { .. }));
        assert_eq!(l.keys(), 50);
        // Refilled after 2 s: swept on the next check after SWEEP_EVERY.
        let later = t0 + SWEEP_EVERY;
        assert!(matches!(l.check("fresh", later), Verdict::Allowed));
        assert_eq!(l.keys(), 1);
    }

    #[test]
    fn ipv6_clients_share_their_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(Some(a)), address_key(Some(b)));
        assert_ne!(address_key(Some(a)), address_key(Some(c)));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(Some(mapped)), "ip:10.0.0.1");
    }
}
