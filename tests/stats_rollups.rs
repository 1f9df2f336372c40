//! The stats rollups (migration 0007) against the history they summarise, on both
//! backends: after deliveries on two stores at once (many scanners, sources and days,
//! repeats, re-reports, unknown and expired tokens, negative ages), notifications
//! delivered, failed and re-queued, and a retention purge, `stats` and
//! `notification_counts` equal what the rows themselves add up to, computed here
//! independently from every report, item, token and notification. Then the rollups are
//! dropped and migration 0007 is applied again to that history: its backfill gives the
//! same figures.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Duration as Ttl, NaiveDate, Utc};
use common::*;
use revoker::domain::alert::{CandidateItem, NewReport};
use revoker::domain::token::Token;
use revoker::domain::Outcome;
use revoker::store::{
    AttemptResult, Clock, DayTotals, NewToken, NotificationCounts, NotificationStatus,
    RecordOptions, RevocationAges, RevocationStore, ScannerTotals, SourceTotals, Totals,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rollups_equal_the_history_they_summarise() {
    rollups_equal_the_history(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rollups_equal_the_history_they_summarise() {
    rollups_equal_the_history(Kind::Postgres).await;
}

/// At the millisecond, as both backends store instants.
fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
}

const SCANNERS: [&str; 3] = ["github", "gitlab", "replay"];

/// Report `r` of the history: 5 to 8 items naming tokens of `tokens` (some twice), one
/// token nobody minted, over a few sources, received over 35 days.
fn report(r: usize, tokens: &[Token], now: DateTime<Utc>) -> NewReport {
    let mut named: Vec<(revoker::domain::token::TokenHash, String)> = (0..5 + r % 4)
        .map(|j| {
            let t = &tokens[(r * 7 + j * 11) % tokens.len()];
            (t.hash(), ["content", "commit", "npm"][j % 3].to_owned())
        })
        .collect();
    // A source of its own per four reports (about six days): the purge takes whole ones.
    named.push((Token::generate().hash(), format!("s-{}", r / 4)));
    if r % 3 == 0 {
        // The first token again, in the same delivery.
        named.push((named[0].0, "content".into()));
    }
    let candidates: Vec<CandidateItem> = named
        .into_iter()
        .enumerate()
        .map(|(i, (hash, source))| CandidateItem {
            position: i as u32,
            hash,
            token_type: "cio_tp".into(),
            source,
            url: format!("https://example.com/{r}/{i}"),
        })
        .collect();
    let not_ours = (r % 3) as u32;
    let mut body = [0u8; 32];
    body[0] = r as u8;
    NewReport {
        scanner: SCANNERS[r % 3].into(),
        key_id: "k".into(),
        received_at: ms(now - Ttl::days(35) + Ttl::hours(35 * r as i64)),
        body_sha256: body,
        item_count: candidates.len() as u32 + not_ours,
        not_ours,
        candidates,
    }
}

async fn rollups_equal_the_history(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let a = open_store(db.url()).await;
    a.migrate().await.unwrap();
    let b = open_store(db.url()).await;
    let now = ms(Utc::now());

    // 60 tokens minted over 32 days from 50 days ago (so some after the report that
    // names them: a negative age), a quarter living only a day.
    let tokens: Vec<Token> = (0..60).map(|_| Token::generate()).collect();
    let rows: Vec<NewToken> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let created_at = ms(now - Ttl::days(50) + Ttl::hours(13 * i as i64));
            NewToken {
                hash: t.hash(),
                owner: format!("team-{}", i % 4),
                created_at,
                expires_at: created_at
                    + if i % 4 == 0 {
                        Ttl::days(1)
                    } else {
                        Ttl::days(400)
                    },
            }
        })
        .collect();
    a.insert_tokens(&rows).await.unwrap();

    // 24 deliveries, two at a time on two stores.
    let options = RecordOptions {
        deadline: None,
        once_per_body: false,
    };
    for r in (0..24).step_by(2) {
        let (x, y) = (report(r, &tokens, now), report(r + 1, &tokens, now));
        let (x, y) = tokio::join!(a.record_report(&x, options), b.record_report(&y, options));
        x.unwrap();
        y.unwrap();
    }

    // Notifications: four delivered, three failed (one of them re-queued), some retried.
    let claimed = a
        .claim_notifications(Clock::Database, Duration::from_secs(60), 12)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 12);
    for (i, n) in claimed.iter().enumerate() {
        let result = match i {
            0..=3 => AttemptResult::Delivered,
            4..=6 => AttemptResult::Failed {
                error: "HTTP 500".into(),
            },
            _ => AttemptResult::Retry {
                error: "timeout".into(),
                retry_in: Duration::from_secs(60),
            },
        };
        a.finish_notification(n, &result, Clock::Database)
            .await
            .unwrap();
    }
    a.requeue_notification(claimed[4].id, Clock::Database)
        .await
        .unwrap();

    // The retention purge: reports older than 30 days lose their sources.
    let purged = revoker::retention::purge(a.as_ref(), Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert!(purged.reports > 0, "{purged:?}");

    let since = (now - Ttl::days(29)).date_naive();
    let expected = History::read(a.as_ref()).await.stats(since);
    assert_eq!(expected.counts, {
        let all = a.list_notifications(None, u32::MAX).await.unwrap();
        let of = |s| all.iter().filter(|n| n.status == s).count() as i64;
        NotificationCounts {
            pending: of(NotificationStatus::Pending),
            delivered: 4,
            failed: 2,
        }
    });
    expected.check(&db, a.as_ref(), since).await;

    // Migration 0007 again, over this history: the backfill says the same.
    let drop = match kind {
        Kind::Sqlite => {
            "DROP TRIGGER notifications_status_stats; DROP TABLE stats_daily;
             DROP TABLE stats_sources; DROP TABLE stats_ages; DROP TABLE stats_age_buckets;
             DROP TABLE stats_notifications"
        }
        Kind::Postgres => {
            "DROP TRIGGER notifications_status_stats ON notifications;
             DROP FUNCTION stats_notification_status();
             DROP TABLE stats_daily, stats_sources, stats_ages, stats_age_buckets,
                        stats_notifications"
        }
    };
    for sql in drop.split(';').filter(|s| !s.trim().is_empty()) {
        db.execute(sql).await;
    }
    db.execute("DELETE FROM _sqlx_migrations WHERE version = 7")
        .await;
    let fresh = open_store(db.url()).await;
    fresh.migrate().await.unwrap();
    expected.check(&db, fresh.as_ref(), since).await;

    // And the rollups it backfilled keep following the items: a purge of 20 days moves
    // the counts of reports the backfill summed.
    let purged = revoker::retention::purge(fresh.as_ref(), Duration::from_secs(20 * 86_400))
        .await
        .unwrap();
    assert!(purged.reports > 0, "{purged:?}");
    let expected = History::read(fresh.as_ref()).await.stats(since);
    expected.check(&db, fresh.as_ref(), since).await;
    db.cleanup().await;
}

/// Every report with its items, every token, every notification.
struct History {
    reports: Vec<(
        revoker::store::ReportRecord,
        Vec<revoker::store::ReportItemRecord>,
    )>,
    tokens: Vec<revoker::store::TokenRecord>,
    counts: NotificationCounts,
}

/// What the stats must say.
struct Expected {
    totals: Totals,
    by_scanner: Vec<ScannerTotals>,
    by_source: Vec<SourceTotals>,
    daily: Vec<DayTotals>,
    ages: RevocationAges,
    counts: NotificationCounts,
}

impl History {
    async fn read(store: &dyn RevocationStore) -> History {
        let n = store.count_reports().await.unwrap() as usize;
        let mut reports = Vec::new();
        let mut id = 0;
        while reports.len() < n {
            id += 1;
            assert!(id < 10_000, "report ids run past {n} reports");
            if let Some(r) = store.report(id).await.unwrap() {
                reports.push((r, store.report_items(id).await.unwrap()));
            }
        }
        let all = store.list_notifications(None, u32::MAX).await.unwrap();
        let of = |s| all.iter().filter(|n| n.status == s).count() as i64;
        History {
            reports,
            tokens: store.tokens_from(&[], u32::MAX).await.unwrap(),
            counts: NotificationCounts {
                pending: of(NotificationStatus::Pending),
                delivered: of(NotificationStatus::Delivered),
                failed: of(NotificationStatus::Failed),
            },
        }
    }

    fn stats(&self, since: NaiveDate) -> Expected {
        let mut by_scanner: BTreeMap<String, Totals> = BTreeMap::new();
        let mut by_day: BTreeMap<NaiveDate, Totals> = BTreeMap::new();
        let mut by_source: BTreeMap<String, SourceTotals> = BTreeMap::new();
        let mut report_of = std::collections::HashMap::new();
        for (r, items) in &self.reports {
            report_of.insert(r.id, r);
            for t in [
                by_scanner.entry(r.scanner.clone()).or_default(),
                by_day.entry(r.received_at.date_naive()).or_default(),
            ] {
                t.reports += 1;
                t.items += i64::from(r.item_count);
                t.revoked += i64::from(r.counts.revoked);
                t.already_revoked += i64::from(r.counts.already_revoked);
                t.expired += i64::from(r.counts.expired);
                t.unknown += i64::from(r.counts.unknown);
                t.not_ours += i64::from(r.counts.not_ours);
            }
            for i in items {
                let s = by_source
                    .entry(i.source.clone())
                    .or_insert_with(|| SourceTotals {
                        source: i.source.clone(),
                        items: 0,
                        revoked: 0,
                        already_revoked: 0,
                        expired: 0,
                        unknown: 0,
                    });
                s.items += 1;
                match i.outcome {
                    Outcome::Revoked => s.revoked += 1,
                    Outcome::AlreadyRevoked => s.already_revoked += 1,
                    Outcome::Expired => s.expired += 1,
                    Outcome::Unknown => s.unknown += 1,
                    Outcome::NotOurs => unreachable!("not stored"),
                }
            }
        }
        let mut ages = Vec::new();
        for t in &self.tokens {
            let (Some(at), Some(by)) = (t.revoked_at, t.revoked_by) else {
                continue;
            };
            let r = report_of[&by];
            let expired = t.expires_at <= at;
            for totals in [
                by_scanner.get_mut(&r.scanner).unwrap(),
                by_day.get_mut(&r.received_at.date_naive()).unwrap(),
            ] {
                if expired {
                    totals.tokens_expired += 1;
                } else {
                    totals.tokens_revoked += 1;
                }
            }
            ages.push(at.timestamp_millis() - t.created_at.timestamp_millis());
        }
        ages.sort();
        assert!(ages[0] < 0, "the history has a negative age: {ages:?}");
        let rank = |num: usize, den: usize| (num * ages.len()).div_ceil(den) - 1;
        let mut sources: Vec<SourceTotals> = by_source.into_values().collect();
        sources.sort_by(|x, y| y.items.cmp(&x.items).then(x.source.cmp(&y.source)));
        sources.truncate(20);
        let by_scanner: Vec<ScannerTotals> = by_scanner
            .into_iter()
            .map(|(scanner, totals)| ScannerTotals { scanner, totals })
            .collect();
        let mut totals = Totals::default();
        for s in &by_scanner {
            let t = &s.totals;
            totals.reports += t.reports;
            totals.items += t.items;
            totals.revoked += t.revoked;
            totals.already_revoked += t.already_revoked;
            totals.expired += t.expired;
            totals.unknown += t.unknown;
            totals.not_ours += t.not_ours;
            totals.tokens_revoked += t.tokens_revoked;
            totals.tokens_expired += t.tokens_expired;
        }
        Expected {
            totals,
            by_scanner,
            by_source: sources,
            daily: by_day
                .into_iter()
                .filter(|(day, _)| *day >= since)
                .map(|(day, totals)| DayTotals { day, totals })
                .collect(),
            ages: RevocationAges {
                count: ages.len() as i64,
                median_seconds: Some(bucket_upper_seconds(ages[rank(1, 2)])),
                p95_seconds: Some(bucket_upper_seconds(ages[rank(19, 20)])),
            },
            counts: self.counts,
        }
    }
}

impl Expected {
    async fn check(&self, db: &TestDb, store: &dyn RevocationStore, since: NaiveDate) {
        let stats = store.stats(since).await.unwrap();
        assert_eq!(stats.totals, self.totals);
        assert_eq!(stats.by_scanner, self.by_scanner);
        assert_eq!(stats.by_source, self.by_source);
        assert!(stats.by_source.iter().any(|s| s.source == "(purged)"));
        assert_eq!(stats.daily, self.daily);
        assert!(self.daily.len() > 15, "{} days", self.daily.len());
        assert_eq!(stats.revocation_ages, self.ages);
        assert_eq!(store.notification_counts().await.unwrap(), self.counts);
        // No rollup row names a source no item carries any more (§7.1: a purged source
        // is gone from every table).
        let items = db.texts("SELECT DISTINCT source FROM report_items").await;
        let rolled = db.texts("SELECT DISTINCT source FROM stats_sources").await;
        for source in &rolled {
            assert!(items.contains(source), "{source:?} outlived its items");
        }
        assert!(!rolled.contains(&"s-0".to_owned()), "{rolled:?}");
    }
}
