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
use revoker::domain::token::{Token, TokenHash};
use revoker::domain::Outcome;
use revoker::store::{
    AttemptResult, Clock, DayTotals, FormatTotals, NewToken, NotificationCounts,
    NotificationStatus, RecordOptions, RevocationAges, RevocationStore, ScannerTotals,
    SourceTotals, Totals,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rollups_equal_the_history_they_summarise() {
    rollups_equal_the_history(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rollups_equal_the_history_they_summarise() {
    rollups_equal_the_history(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_source_of_any_length_is_recorded() {
    a_source_of_any_length_is_recorded(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_source_of_any_length_is_recorded() {
    a_source_of_any_length_is_recorded(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_each_age_lands_in_the_bucket_the_table_names() {
    each_age_lands_in_the_bucket_the_table_names(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_each_age_lands_in_the_bucket_the_table_names() {
    each_age_lands_in_the_bucket_the_table_names(Kind::Postgres).await;
}

/// A flipped token's age goes into the age histogram's bucket that `stats_age_buckets`
/// names (the last lower bound at or below it): one delivery of tokens aged exactly each
/// bound and a millisecond under it, for all 264 bounds, and one far under the first and
/// one far over the last. SQLite's delivery computes the bucket in the process
/// (`store/stats.rs`), PostgreSQL's with `width_bucket` over the table.
async fn each_age_lands_in_the_bucket_the_table_names(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let store = open_store(db.url()).await;
    store.migrate().await.unwrap();
    let bounds: Vec<(i64, i64)> = db
        .texts("SELECT concat(bucket, ' ', lo_ms) FROM stats_age_buckets WHERE bucket > 0")
        .await
        .iter()
        .map(|row| {
            let (b, lo) = row.split_once(' ').unwrap();
            (b.parse().unwrap(), lo.parse().unwrap())
        })
        .collect();
    assert_eq!(bounds.len(), 264);
    let mut ages = vec![(-5, 0), (5_000_000_000_000, 264)];
    for (bucket, lo) in &bounds {
        ages.extend([(*lo, *bucket), (lo - 1, bucket - 1)]);
    }
    let received = ms(Utc::now());
    let tokens: Vec<Token> = ages.iter().map(|_| Token::generate()).collect();
    let rows: Vec<NewToken> = tokens
        .iter()
        .zip(&ages)
        .map(|(t, (age, _))| {
            let created_at = received - Ttl::milliseconds(*age);
            NewToken {
                hash: t.hash(),
                owner: "o".into(),
                created_at,
                expires_at: created_at + Ttl::days(1),
            }
        })
        .collect();
    store.insert_tokens(&rows).await.unwrap();
    let mut report = one_item_report(tokens[0].hash(), "s", received);
    report.candidates = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| CandidateItem {
            position: i as u32,
            hash: t.hash(),
            ..report.candidates[0].clone()
        })
        .collect();
    report.item_count = tokens.len() as u32;
    let recorded = store
        .record_report(&report, RecordOptions::default())
        .await
        .unwrap();
    assert_eq!(recorded.tokens_revoked as usize, ages.len());

    let mut expected = BTreeMap::<i64, i64>::new();
    for (_, bucket) in &ages {
        *expected.entry(*bucket).or_default() += 1;
    }
    let stored: BTreeMap<i64, i64> = db
        .texts("SELECT concat(bucket, ' ', sum(tokens)) FROM stats_format_ages GROUP BY bucket")
        .await
        .iter()
        .map(|row| {
            let (b, n) = row.split_once(' ').unwrap();
            (b.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    assert_eq!(stored, expected);
    // Two tokens in every bucket: its bound and the next one's less a millisecond (bucket
    // 0: 9 ms and -5 ms; bucket 264: its bound and 5e12 ms).
    assert!(expected.len() == 265 && expected.values().all(|n| *n == 2));
}

/// A source keys the per-source rollup, whose index PostgreSQL caps at about 2.7 KB a
/// row: a 6,400-character source must still revoke (it is stored cut to 200
/// characters), never fail the delivery on every retry.
async fn a_source_of_any_length_is_recorded(kind: Kind) {
    let Some(db) = TestDb::new(kind).await else {
        return;
    };
    let store = open_store(db.url()).await;
    store.migrate().await.unwrap();
    let t = Token::generate();
    let now = ms(Utc::now());
    store
        .insert_tokens(&[NewToken {
            hash: t.hash(),
            owner: "o".into(),
            created_at: now,
            expires_at: now + Ttl::hours(1),
        }])
        .await
        .unwrap();
    // 6,400 characters that do not compress (PostgreSQL compresses a long index entry
    // before it measures it), with a two-byte one in front to cut at a character.
    let long: String = std::iter::once("ü".to_owned())
        .chain((0..100).map(|i| TokenHash::of(&i.to_string()).to_hex()))
        .collect();
    let report = one_item_report(t.hash(), &long, now);
    let options = RecordOptions {
        deadline: None,
        once_per_body: false,
    };
    let recorded = store.record_report(&report, options).await.unwrap();
    assert_eq!(recorded.tokens_revoked, 1);
    let stored = store.report_items(recorded.report_id).await.unwrap();
    let cut: String = long.chars().take(200).collect();
    assert_eq!(stored[0].source, cut);
    let stats = store.stats(now.date_naive()).await.unwrap();
    assert_eq!(stats.by_source[0].source, cut);
    assert_eq!(stats.by_source[0].revoked, 1);
    db.cleanup().await;
}

/// PostgreSQL: the purge's batch locks its reports, then the per-source rollup rows; a
/// delivery (here, a session standing in for one) holding such a row and then waiting
/// for one of those reports makes a deadlock. PostgreSQL aborts the purge (this session
/// waits a minute before checking for deadlocks, the purge one second); the batch runs
/// again instead of failing the pass for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_purge_aborted_by_a_deadlock_runs_again() {
    use sqlx::Connection;
    let Some(db) = TestDb::new(Kind::Postgres).await else {
        return;
    };
    let store = open_store(db.url()).await;
    store.migrate().await.unwrap();
    let tokens: Vec<Token> = (0..2).map(|_| Token::generate()).collect();
    let old = ms(Utc::now() - Ttl::days(40));
    let rows: Vec<NewToken> = tokens
        .iter()
        .map(|t| NewToken {
            hash: t.hash(),
            owner: "o".into(),
            created_at: old - Ttl::hours(1),
            expires_at: old + Ttl::days(400),
        })
        .collect();
    store.insert_tokens(&rows).await.unwrap();
    let old_report = report(0, &tokens, old + Ttl::days(35));
    let recorded = store
        .record_report(
            &old_report,
            RecordOptions {
                deadline: None,
                once_per_body: false,
            },
        )
        .await
        .unwrap();

    let mut other = sqlx::PgConnection::connect(db.url()).await.unwrap();
    for sql in [
        "BEGIN",
        "SET LOCAL deadlock_timeout = '60s'",
        "SELECT 1 FROM stats_sources WHERE source = 'content' FOR UPDATE",
    ] {
        sqlx::query(sql).execute(&mut other).await.unwrap();
    }
    let purging = {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move {
            store
                .purge_metadata(Utc::now() - Ttl::days(30), 200, 5_000)
                .await
        })
    };
    // The purge holds its report and waits for the row this session holds.
    let mut watch = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity
                   WHERE wait_event_type = 'Lock' AND query LIKE '%WITH picked AS%'";
    let started = std::time::Instant::now();
    while sqlx::query_scalar::<_, i64>(waiting)
        .fetch_one(&mut watch)
        .await
        .unwrap()
        == 0
    {
        if started.elapsed() > Duration::from_secs(10) {
            let rows: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT wait_event_type, wait_event, left(query, 80) FROM pg_stat_activity WHERE datname = current_database()",
            )
            .fetch_all(&mut watch)
            .await
            .unwrap();
            panic!(
                "the purge never waited: {rows:?} {:?}",
                purging.is_finished()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Now wait for the purge's report: a cycle, which the purge detects first.
    sqlx::query("UPDATE reports SET key_id = key_id WHERE id = $1")
        .bind(recorded.report_id)
        .execute(&mut other)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    let purged = purging.await.unwrap().expect("the batch ran again");
    // Run again, the batch skips (SKIP LOCKED) a report this session still held then,
    // as it skips another purge's: the next pass, with the session gone, takes it.
    let next = store
        .purge_metadata(Utc::now() - Ttl::days(30), 200, 5_000)
        .await
        .unwrap();
    assert_eq!(purged.reports + next.reports, 1, "{purged:?} {next:?}");
    let stats = store.stats(Utc::now().date_naive()).await.unwrap();
    assert!(
        stats.by_source.iter().all(|s| s.source == "(purged)"),
        "{:?}",
        stats.by_source
    );
    db.cleanup().await;
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
            found_in: None,
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
    // A quarter are a registry's, another quarter of another format: counted apart.
    db.execute("UPDATE tokens SET format = 'crates_io_api' WHERE owner = 'team-1'")
        .await;
    db.execute("UPDATE tokens SET format = 'crates_io_trustpub' WHERE owner = 'team-2'")
        .await;

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
             DROP TABLE stats_sources; DROP TABLE stats_ages; DROP TABLE stats_format_ages;
             DROP TABLE stats_age_buckets;
             DROP TABLE stats_notifications"
        }
        Kind::Postgres => {
            "DROP TRIGGER notifications_status_stats ON notifications;
             DROP FUNCTION stats_notification_status();
             DROP TABLE stats_daily, stats_sources, stats_ages, stats_format_ages, stats_age_buckets,
                        stats_notifications"
        }
    };
    for sql in drop.split(';').filter(|s| !s.trim().is_empty()) {
        db.execute(sql).await;
    }
    // (and 0010 after it, which rebuilds the age histograms by format).
    db.execute("DELETE FROM _sqlx_migrations WHERE version IN (7, 10)")
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
    by_format: Vec<FormatTotals>,
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
        // Per format: [tokens revoked live, expired] and each one's age.
        let mut formats: BTreeMap<&str, ([i64; 2], Vec<i64>)> = BTreeMap::new();
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
            let age = at.timestamp_millis() - t.created_at.timestamp_millis();
            ages.push(age);
            let f = formats.entry(&t.format).or_default();
            f.0[usize::from(expired)] += 1;
            f.1.push(age);
        }
        // Nearest-rank median and p95 of a set of ages (sorted here), as bucket bounds.
        let ages_of = |ages: &mut Vec<i64>| {
            ages.sort();
            let rank = |num: usize, den: usize| (num * ages.len()).div_ceil(den) - 1;
            RevocationAges {
                count: ages.len() as i64,
                median_seconds: Some(bucket_upper_seconds(ages[rank(1, 2)])),
                p95_seconds: Some(bucket_upper_seconds(ages[rank(19, 20)])),
            }
        };
        let by_format: Vec<FormatTotals> = formats
            .into_iter()
            .map(|(format, ([live, expired], mut ages))| FormatTotals {
                format: format.to_owned(),
                tokens_revoked: live,
                tokens_expired: expired,
                revocation_ages: ages_of(&mut ages),
            })
            .collect();
        assert_eq!(by_format.len(), 3, "{by_format:?}");
        let all_ages = ages_of(&mut ages);
        assert!(ages[0] < 0, "the history has a negative age: {ages:?}");
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
            ages: all_ages,
            by_format,
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
        assert_eq!(stats.by_format, self.by_format);
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
