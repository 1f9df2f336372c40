//! What one instance saw of each scanner's deliveries, for the on-call panel of
//! `/api/stats` and the dashboard: the last delivery and its answer, the UTC days with a
//! delivery answered in more than GitHub's 15 s (the partner agreement counts days),
//! and the answers of the last hour.
//!
//! In memory, per instance, since it started: with several instances each shows its own
//! share (Prometheus, summed over instances, has the fleet: README "Metrics"). Bounded:
//! 31 days and 60 minutes per name; the names are the configured scanners and the
//! Revocation API's fixed one (a name no scanner has is never recorded).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, NaiveDate, Utc};

/// GitHub's budget for an answer (partner agreement §3.1(a)).
pub const BUDGET_SECONDS: f64 = 15.0;
/// Days of slow-delivery counts kept.
const DAYS: usize = 31;
/// Minutes of answer counts kept.
const MINUTES: i64 = 60;

/// Deliveries seen by this instance, per scanner.
#[derive(Debug)]
pub struct Activity {
    started: DateTime<Utc>,
    scanners: Mutex<HashMap<String, Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    last: Option<LastDelivery>,
    /// The last 2xx answer: a delivery that passed its signature check.
    last_accepted: Option<DateTime<Utc>>,
    /// Deliveries over the budget per UTC day (days with none are absent).
    slow: BTreeMap<NaiveDate, u64>,
    /// (minute since the epoch, answers, 5xx answers), oldest first.
    minutes: VecDeque<(i64, u64, u64)>,
}

/// The last delivery answered.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct LastDelivery {
    pub at: DateTime<Utc>,
    pub status: u16,
    pub seconds: f64,
}

/// One scanner as this instance saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ScannerActivity {
    /// The last request answered, whatever its status (a forged one too).
    pub last_delivery: Option<LastDelivery>,
    /// The last one answered 2xx: signed by the scanner's key. Only this says the
    /// scanner is alive (anyone can make the public listener answer 401).
    pub last_accepted_at: Option<DateTime<Utc>>,
    /// UTC days (of the last 31) with a delivery answered in more than 15 s, and how many.
    pub slow_days: Vec<SlowDay>,
    /// Answers in the last 60 minutes, and how many of them were 5xx.
    pub last_hour_deliveries: u64,
    pub last_hour_server_errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SlowDay {
    pub day: NaiveDate,
    pub deliveries: u64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: Utc::now(),
            scanners: Mutex::new(HashMap::new()),
        }
    }
}

impl Activity {
    /// When this instance started counting.
    pub fn since(&self) -> DateTime<Utc> {
        self.started
    }

    /// One delivery to `scanner` answered `status` after `seconds`, finished `at`.
    pub fn record(&self, scanner: &str, status: u16, seconds: f64, at: DateTime<Utc>) {
        let mut scanners = self.scanners.lock().unwrap_or_else(|p| p.into_inner());
        // The name is allocated once per scanner, not per delivery.
        if !scanners.contains_key(scanner) {
            scanners.insert(scanner.to_owned(), Seen::default());
        }
        let seen = scanners.get_mut(scanner).expect("inserted above");
        seen.last = Some(LastDelivery {
            at,
            status,
            seconds,
        });
        if (200..300).contains(&status) {
            seen.last_accepted = Some(at);
        }
        if seconds > BUDGET_SECONDS {
            *seen.slow.entry(at.date_naive()).or_default() += 1;
            while seen.slow.len() > DAYS {
                seen.slow.pop_first();
            }
        }
        let minute = at.timestamp().div_euclid(60);
        match seen.minutes.back_mut() {
            Some((m, n, errors)) if *m == minute => {
                *n += 1;
                *errors += u64::from(status >= 500);
            }
            _ => seen
                .minutes
                .push_back((minute, 1, u64::from(status >= 500))),
        }
        while seen
            .minutes
            .front()
            .is_some_and(|(m, _, _)| *m <= minute - MINUTES)
        {
            seen.minutes.pop_front();
        }
    }

    /// `scanner` as of `now` (nothing seen: `None`).
    pub fn scanner(&self, scanner: &str, now: DateTime<Utc>) -> Option<ScannerActivity> {
        let scanners = self.scanners.lock().unwrap_or_else(|p| p.into_inner());
        let seen = scanners.get(scanner)?;
        let minute = now.timestamp().div_euclid(60);
        let first_day = now.date_naive() - chrono::Days::new(DAYS as u64 - 1);
        let recent = seen
            .minutes
            .iter()
            .filter(|(m, _, _)| *m > minute - MINUTES && *m <= minute);
        Some(ScannerActivity {
            last_delivery: seen.last,
            last_accepted_at: seen.last_accepted,
            slow_days: seen
                .slow
                .range(first_day..)
                .map(|(day, n)| SlowDay {
                    day: *day,
                    deliveries: *n,
                })
                .collect(),
            last_hour_deliveries: recent.clone().map(|(_, n, _)| n).sum(),
            last_hour_server_errors: recent.map(|(_, _, e)| e).sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn counts_slow_days_and_the_last_hour() {
        let a = Activity::default();
        assert_eq!(a.scanner("github", at("2026-03-01T10:00:00Z")), None);
        a.record("github", 200, 16.0, at("2026-02-27T23:59:00Z"));
        a.record("github", 200, 15.0, at("2026-02-28T09:00:00Z")); // at the budget: fine
        a.record("github", 503, 0.2, at("2026-03-01T09:10:00Z"));
        a.record("github", 200, 0.1, at("2026-03-01T09:30:00Z"));
        a.record("github", 503, 30.0, at("2026-03-01T09:59:30Z"));
        let s = a.scanner("github", at("2026-03-01T10:00:00Z")).unwrap();
        assert_eq!(s.last_accepted_at, Some(at("2026-03-01T09:30:00Z")));
        assert_eq!(
            s.last_delivery,
            Some(LastDelivery {
                at: at("2026-03-01T09:59:30Z"),
                status: 503,
                seconds: 30.0
            })
        );
        let day = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
        assert_eq!(
            s.slow_days,
            [
                SlowDay {
                    day: day("2026-02-27"),
                    deliveries: 1
                },
                SlowDay {
                    day: day("2026-03-01"),
                    deliveries: 1
                }
            ]
        );
        // 09:10 is more than an hour before 10:10; 09:30 and 09:59 are not.
        let later = a.scanner("github", at("2026-03-01T10:10:00Z")).unwrap();
        assert_eq!(
            (later.last_hour_deliveries, later.last_hour_server_errors),
            (2, 1)
        );
        assert_eq!((s.last_hour_deliveries, s.last_hour_server_errors), (3, 2));
        // A month on, the old slow days are out of the window.
        let month = a.scanner("github", at("2026-04-15T00:00:00Z")).unwrap();
        assert!(month.slow_days.is_empty());
        assert_eq!(month.last_hour_deliveries, 0);
    }
}
