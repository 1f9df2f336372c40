//! Prometheus metrics of one receiver instance.
//!
//! Instance counters live here (an instance registry, not a process-global recorder, so
//! two receivers in one process keep separate numbers). Figures that describe the
//! database as a whole (totals, ages) are not metrics here: `/api/stats` reads them
//! from the database at request time.
//!
//! Label values are bounded: `scanner` is a configured scanner name or `_unknown`,
//! `status` an HTTP status code, `outcome` one of five names. Nothing derived from a
//! request body becomes a label.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::activity::Activity;
use crate::domain::Outcome;

/// The `scanner` label of a delivery to a name no scanner is configured under.
pub const UNKNOWN_SCANNER: &str = "_unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub scanner: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ItemLabels {
    pub scanner: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScannerLabels {
    pub scanner: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyFetchLabels {
    pub scanner: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectedLabels {
    pub scanner: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HolderLabels {
    pub endpoint: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

/// Upper bounds of the latency buckets: 0.5 ms doubling to ~8 s, then GitHub's 15 s
/// (the partner agreement's deadline for a 2xx) and 30 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 15)
        .chain([15.0, 30.0])
        .collect()
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

/// The metrics of one receiver. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    deliveries: Family<DeliveryLabels, Counter>,
    rejected: Family<RejectedLabels, Counter>,
    items: Family<ItemLabels, Counter>,
    revocations: Counter,
    holder: Family<HolderLabels, Counter>,
    request_duration: Family<ScannerLabels, Histogram, fn() -> Histogram>,
    key_fetches: Family<KeyFetchLabels, Counter>,
    key_cache_age: Family<ScannerLabels, Gauge<f64, AtomicU64>>,
    key_cache_keys: Family<ScannerLabels, Gauge>,
    db_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    notification_attempts: Family<ResultLabels, Counter>,
    notifications: Family<StatusLabels, Gauge>,
    database_up: Gauge,
    notify_worker_restarts: Counter,
    /// The on-call view of the same deliveries (not a metric: last delivery, slow days,
    /// the last hour).
    activity: Arc<Activity>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("revoker");
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Alert deliveries answered, by scanner and HTTP status code",
            deliveries.clone(),
        );
        let rejected = Family::<RejectedLabels, Counter>::default();
        registry.register(
            "rejected_requests",
            "Requests refused before their signature or credentials verified (no or bad \
             signature headers, bad signature, unknown key id, unknown scanner, a body too \
             large, too slow or unreadable, a wrong Revocation API token), by scanner and \
             reason: anyone can send these, so they are not deliveries",
            rejected.clone(),
        );
        let items = Family::<ItemLabels, Counter>::default();
        registry.register(
            "items",
            "Reported items by scanner and outcome",
            items.clone(),
        );
        let holder = Family::<HolderLabels, Counter>::default();
        registry.register(
            "holder_requests",
            "Requests to the holder endpoints (/v1/tokens/current, /oauth/revoke, \
             /oauth/introspect), by endpoint and outcome (active, inactive, malformed, revoked, \
             rate_limited, unauthorized, invalid_request, unavailable)",
            holder.clone(),
        );
        let revocations = Counter::default();
        registry.register(
            "revocations",
            "Distinct tokens revoked (a token listed twice in a delivery counts once)",
            revocations.clone(),
        );
        let request_duration =
            Family::<ScannerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "delivery_duration_seconds",
            "Time to answer a delivery, from headers to response",
            request_duration.clone(),
        );
        let key_fetches = Family::<KeyFetchLabels, Counter>::default();
        registry.register(
            "key_fetches",
            "Scanner key fetches by result (ok, error)",
            key_fetches.clone(),
        );
        let key_cache_age = Family::<ScannerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "key_cache_age_seconds",
            "Age of the scanner keys held (-1 when none were ever fetched)",
            key_cache_age.clone(),
        );
        let key_cache_keys = Family::<ScannerLabels, Gauge>::default();
        registry.register(
            "key_cache_keys",
            "Number of scanner keys held",
            key_cache_keys.clone(),
        );
        let db_duration =
            Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "db_statement_duration_seconds",
            "Duration of database work per operation (record_report is one transaction)",
            db_duration.clone(),
        );
        let notification_attempts = Family::<ResultLabels, Counter>::default();
        registry.register(
            "notification_attempts",
            "Owner-notification webhook attempts by this instance, by result \
             (delivered, retry, failed = out of attempts)",
            notification_attempts.clone(),
        );
        let notifications = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "notifications",
            "Owner notifications in the database by status (pending, delivered, failed), \
             read from the database's rollups at each scrape (whether or not this \
             instance sends them); absent only while the database cannot be read",
            notifications.clone(),
        );
        let database_up = Gauge::default();
        registry.register(
            "database_up",
            "1 when the database answered this scrape's read (the notification counts) \
             within 2 s, 0 when it did not",
            database_up.clone(),
        );
        let notify_worker_restarts = Counter::default();
        registry.register(
            "notify_worker_restarts",
            "Restarts of this instance's owner-notification worker after a panic",
            notify_worker_restarts.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            notify_worker_restarts,
            notification_attempts,
            notifications,
            database_up,
            deliveries,
            rejected,
            items,
            revocations,
            holder,
            request_duration,
            key_fetches,
            key_cache_age,
            key_cache_keys,
            db_duration,
            activity: Arc::new(Activity::default()),
        }
    }

    /// What this instance saw of each scanner's deliveries.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// One owner-notification attempt: `delivered`, `retry` or `failed`.
    pub fn notification_attempt(&self, result: &str) {
        self.notification_attempts
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// The notification worker panicked and is being restarted.
    pub fn notify_worker_restarted(&self) {
        self.notify_worker_restarts.inc();
    }

    /// Notifications by status, as the database counts them now.
    pub fn notifications(&self, pending: i64, delivered: i64, failed: i64) {
        for (status, n) in [
            ("pending", pending),
            ("delivered", delivered),
            ("failed", failed),
        ] {
            self.notifications
                .get_or_create(&StatusLabels {
                    status: status.to_owned(),
                })
                .set(n);
        }
        self.database_up.set(1);
    }

    /// The counts could not be read: no notification series rather than stale ones, and
    /// `revoker_database_up` 0.
    pub fn notifications_unknown(&self) {
        self.notifications.clear();
        self.database_up.set(0);
    }

    pub fn delivery(&self, scanner: &str, status: u16, seconds: f64) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                scanner: scanner.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.request_duration
            .get_or_create(&ScannerLabels {
                scanner: scanner.to_owned(),
            })
            .observe(seconds);
        if scanner != UNKNOWN_SCANNER {
            self.activity
                .record(scanner, status, seconds, chrono::Utc::now());
        }
    }

    /// A request refused before it proved to be the scanner's (see `rejected_requests`):
    /// not a delivery, so neither `deliveries`, the latency histogram nor the on-call
    /// panel move.
    pub fn rejected(&self, scanner: &str, reason: &str) {
        self.rejected
            .get_or_create(&RejectedLabels {
                scanner: scanner.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn item(&self, scanner: &str, outcome: Outcome, n: u64) {
        if n == 0 {
            return;
        }
        self.items
            .get_or_create(&ItemLabels {
                scanner: scanner.to_owned(),
                outcome: outcome.as_str().to_owned(),
            })
            .inc_by(n);
    }

    /// One answer of a holder endpoint ([`crate::http::holder`]).
    pub fn holder(&self, endpoint: &'static str, outcome: &'static str) {
        self.holder
            .get_or_create(&HolderLabels { endpoint, outcome })
            .inc();
    }

    /// Tokens flipped to revoked by one delivery (distinct).
    pub fn revoked(&self, tokens: u32) {
        self.revocations.inc_by(u64::from(tokens));
    }

    pub fn key_fetch(&self, scanner: &str, ok: bool) {
        self.key_fetches
            .get_or_create(&KeyFetchLabels {
                scanner: scanner.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    pub fn key_cache(&self, scanner: &str, keys: usize, age_seconds: Option<f64>) {
        let labels = ScannerLabels {
            scanner: scanner.to_owned(),
        };
        self.key_cache_keys.get_or_create(&labels).set(keys as i64);
        self.key_cache_age
            .get_or_create(&labels)
            .set(age_seconds.unwrap_or(-1.0));
    }

    pub fn db(&self, operation: &str, seconds: f64) {
        self.db_duration
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .observe(seconds);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_latency_has_a_bucket_at_githubs_15_seconds() {
        let buckets = latency_buckets();
        assert_eq!(buckets.first(), Some(&0.0005));
        assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{buckets:?}");
        assert!(buckets.contains(&15.0), "{buckets:?}");
        let m = Metrics::new();
        m.delivery("github", 200, 14.0);
        m.delivery("github", 200, 16.0);
        let text = m.render();
        let line = |le: &str| {
            let needle = format!(
                "revoker_delivery_duration_seconds_bucket{{le=\"{le}\",scanner=\"github\"}}"
            );
            text.lines()
                .find(|l| l.starts_with(&needle))
                .unwrap_or_else(|| panic!("{needle} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(line("15.0"), "1");
        assert_eq!(line("30.0"), "2");
    }
}
