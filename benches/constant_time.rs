//! Does checking a bearer secret leak, through its timing, how much of a guess is
//! right? A dudect-style test (Reparaz, Balasch, Verbauwhede, "Dude, is my code
//! constant time?", 2017) of [`SecretDigest::matches`], with a plain `==` on the raw
//! strings as the baseline in the same process.
//!
//! ```text
//! cargo bench --bench constant_time [-- --samples N]
//! ```
//!
//! Two experiments, each timing two classes of inputs in random interleaving (one
//! sample is 64 calls), cropping the slowest 10 % (interrupts), and comparing the
//! classes with Welch's t-test:
//! - **prefix**: a guess wrong in its first byte vs one wrong only in its last byte
//!   (same length as the secret); a comparison that stops at the first difference is
//!   faster on the first.
//! - **length**: the same guess against a secret of its own length vs a secret one
//!   byte longer; a comparison that checks lengths first answers the second at once.
//!
//! |t| above 4.5 means the two classes' timings differ (dudect's threshold; above
//! 10 it is certain). The baseline must show it (otherwise the run was too noisy to
//! tell anything, and the exit code is 2); `SecretDigest` must not (exit code 1).

use std::hint::black_box;
use std::time::Instant;

use rand::Rng;
use revoker::support::SecretDigest;

const CALLS_PER_SAMPLE: usize = 64;
const THRESHOLD: f64 = 4.5;

/// Welch's t statistic of two samples.
fn welch_t(a: &[f64], b: &[f64]) -> f64 {
    let stats = |x: &[f64]| {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (n, mean, var)
    };
    let (na, ma, va) = stats(a);
    let (nb, mb, vb) = stats(b);
    (ma - mb) / (va / na + vb / nb).sqrt()
}

/// Times `check(class)` for randomly chosen classes 0 and 1; |t| between them.
fn experiment(samples: usize, check: &dyn Fn(usize) -> bool) -> f64 {
    let mut rng = rand::thread_rng();
    let mut timed: Vec<(usize, f64)> = Vec::with_capacity(samples);
    // Warm up caches and the branch predictor on both classes.
    for i in 0..1000 {
        black_box(check(i % 2));
    }
    for _ in 0..samples {
        let class = rng.gen_range(0..2);
        let start = Instant::now();
        for _ in 0..CALLS_PER_SAMPLE {
            black_box(check(black_box(class)));
        }
        timed.push((class, start.elapsed().as_nanos() as f64));
    }
    let mut sorted: Vec<f64> = timed.iter().map(|&(_, t)| t).collect();
    sorted.sort_by(f64::total_cmp);
    let crop = sorted[sorted.len() * 9 / 10];
    let class = |c: usize| -> Vec<f64> {
        timed
            .iter()
            .filter(|&&(k, t)| k == c && t <= crop)
            .map(|&(_, t)| t)
            .collect()
    };
    welch_t(&class(0), &class(1)).abs()
}

fn main() {
    let mut samples = 200_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--samples" {
            samples = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--samples N");
        }
    }
    // A 64-character secret, as a generated admin or API token would be.
    let secret: String = "k7Qm2xV9pL4sT8wZ1bN6cR3yH5jD0fG2".repeat(2);
    let longer = format!("{secret}x");
    let with_last = |s: &str, c: char| format!("{}{c}", &s[..s.len() - 1]);
    let with_first = |s: &str, c: char| format!("{c}{}", &s[1..]);
    let wrong_first = with_first(&secret, '#');
    let wrong_last = with_last(&secret, '#');
    let guesses = [wrong_first.as_str(), wrong_last.as_str()];
    let digest = SecretDigest::of(&secret);
    let digests = [SecretDigest::of(&secret), SecretDigest::of(&longer)];
    let secrets = [secret.as_str(), longer.as_str()];

    type Check<'a> = Box<dyn Fn(usize) -> bool + 'a>;
    let rows: [(&str, &str, Check); 4] = [
        (
            "prefix",
            "plain ==",
            Box::new(|c| black_box(guesses[c]) == black_box(secret.as_str())),
        ),
        (
            "prefix",
            "SecretDigest",
            Box::new(|c| digest.matches(black_box(guesses[c]))),
        ),
        (
            "length",
            "plain ==",
            Box::new(|c| black_box(wrong_last.as_str()) == black_box(secrets[c])),
        ),
        (
            "length",
            "SecretDigest",
            Box::new(|c| digests[c].matches(black_box(wrong_last.as_str()))),
        ),
    ];
    println!(
        "{samples} samples of {CALLS_PER_SAMPLE} calls per experiment; |t| > {THRESHOLD} means the timing tells the classes apart"
    );
    println!("{:<8} {:<14} {:>8}  verdict", "test", "compare", "|t|");
    let mut baseline_blind = false;
    let mut leaks = false;
    let mut baseline_t = 0.0;
    for (test, name, check) in &rows {
        let t = experiment(samples, check.as_ref());
        let differs = t > THRESHOLD;
        let verdict = if differs {
            "timing differs"
        } else {
            "no difference found"
        };
        println!("{test:<8} {name:<14} {t:>8.1}  {verdict}");
        if *name == "plain ==" {
            baseline_t = t;
            baseline_blind |= !differs;
        } else {
            leaks |= differs;
            println!(
                "{:<8} {:<14} {:>8.1}  (baseline |t| / SecretDigest |t|)",
                "",
                "ratio",
                baseline_t / t.max(1e-9)
            );
        }
    }
    if leaks {
        eprintln!("SecretDigest's timing depends on the guess: not constant time");
        std::process::exit(1);
    }
    if baseline_blind {
        eprintln!(
            "the baseline showed no difference: too noisy to conclude; rerun with more --samples"
        );
        std::process::exit(2);
    }
}
