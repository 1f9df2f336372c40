//! Test support shared by the format tests: the fixture tokens, fixture files, and
//! readers that collect every occurrence and check that the whole input was read.

use crate::domain::Formats;
use std::io::Cursor;
use std::path::PathBuf;

use super::{read_report, Emitter, Format, FormatError, Found, ReadStats};

// Test-only tokens from fixtures/reports (see its README).
pub const A: &str = "cio_tp_ACAyMYNZERnTTS1iqvGWBaE8Nt8Ebu052fSx";
pub const B: &str = "cio_tp_lXgcmdQXsufD3qUOXbNKdAwgXN8can1OoeWU";
pub const C: &str = "cio_tp_gzqdfPXHzUfToQmeSRY4KCBCZSwhHN3JuWiw";
pub const D: &str = "cio_tp_UzdWnDTOCvFft4g9hLRxgLPPrU2Q2u0VTqp6";
pub const E: &str = "cio_tp_JjEvY1YIYnsep3zgvn2VOaIUCH3De43QC7H5";
pub const F: &str = "cio_tp_0GhNi68shQanwvDbxHn0vr39EirQPp0U6m2n";
pub const G: &str = "cio_tp_ojjsMe6M8Hsh5Bv3dofjGTBOJrx9cc3gqZqc";
pub const H: &str = "cio_tp_xy2X5r57IONveWxzHdypVCsUbBAwzK0P2RTI";
pub const I: &str = "cio_tp_KWbNbgECMszLtziYYiiX4cSqjLtyS83Z17Wl";
pub const W1: &str = "cio_tp_vNB0ydMX6C31JZeQJfMdjqVzKYsJre1OfZo8";
pub const W2: &str = "cio_tp_uxMOcdHPqJmyGIZN831DqPA6VL1iFV3fuuHn";
pub const W3: &str = "cio_tp_j2tjkXBuQiaUlctrjEt7hpZWULQcSo39yV6H";
pub const KNOWN: &str = "cio_tp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1yLcDB";

/// Every report in fixtures/reports, one per format.
pub const FIXTURES: [&str; 7] = [
    "incident.txt",
    "github.json",
    "github-alerts.json",
    "gl-secret-detection-report.json",
    "gitleaks.sarif",
    "gitleaks.json",
    "trufflehog.jsonl",
];

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/reports")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn found(token: &str, token_type: &str, url: &str, source: &str) -> Found {
    Found {
        token: token.into(),
        token_type: token_type.into(),
        url: url.into(),
        source: source.into(),
    }
}

/// Every occurrence through [`read_report`]; on success, also checks that the reader
/// was taken to the end of `input`.
pub fn read_all(
    input: &[u8],
    format: Format,
    origin: &str,
) -> Result<(Vec<Found>, ReadStats), FormatError> {
    let mut all = Vec::new();
    let mut reader = Cursor::new(input);
    let stats = read_report(&mut reader, format, Formats::DEFAULT, origin, &mut |f| {
        all.push(f);
        Ok(())
    })?;
    assert_eq!(reader.position(), input.len() as u64, "not read to the end");
    Ok((all, stats))
}

/// Every occurrence through one format's own reader (`read`, given the input and the
/// emitter), which must succeed and take the input to its end.
pub(super) fn collect(
    input: &[u8],
    read: impl FnOnce(&mut Cursor<&[u8]>, &mut Emitter<'_>) -> Result<(), FormatError>,
) -> (Vec<Found>, ReadStats) {
    let mut all = Vec::new();
    let mut sink = |f| {
        all.push(f);
        Ok(())
    };
    let mut out = Emitter {
        sink: &mut sink,
        stats: ReadStats::default(),
    };
    let mut reader = Cursor::new(input);
    read(&mut reader, &mut out).unwrap();
    assert_eq!(reader.position(), input.len() as u64, "not read to the end");
    let stats = out.stats;
    (all, stats)
}
