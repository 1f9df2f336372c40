//! What became of a reported item ([`Outcome`]), the per-report tally
//! ([`OutcomeCounts`]) and the scanner's verdict ([`Label`]).
//!
//! Invariant: an outcome's name (`as_str`, serde, metrics label, stored column) is one
//! snake_case string per variant, derived once by `strum`/`serde`; nothing else keeps a
//! table of them.

use serde::{Deserialize, Serialize};

/// What happened to one reported item.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::VariantArray,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    /// Ours, was live, now revoked by this report.
    Revoked,
    /// Ours, already revoked earlier; `revoked_at` is unchanged.
    AlreadyRevoked,
    /// Ours, had expired but was not revoked; revoked now anyway.
    Expired,
    /// Well-formed (check digits right) but not a token we issued.
    Unknown,
    /// Not a `cio_tp_` token at all; never reaches the database.
    NotOurs,
}

impl Outcome {
    pub const ALL: &'static [Outcome] = <Outcome as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }

    /// The label the scanner gets: was this a real token of ours?
    pub fn is_true_positive(self) -> bool {
        matches!(
            self,
            Outcome::Revoked | Outcome::AlreadyRevoked | Outcome::Expired
        )
    }
}

/// Per-outcome item counts of one report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OutcomeCounts {
    pub revoked: u32,
    pub already_revoked: u32,
    pub expired: u32,
    pub unknown: u32,
    pub not_ours: u32,
}

impl OutcomeCounts {
    fn slot(&mut self, outcome: Outcome) -> &mut u32 {
        match outcome {
            Outcome::Revoked => &mut self.revoked,
            Outcome::AlreadyRevoked => &mut self.already_revoked,
            Outcome::Expired => &mut self.expired,
            Outcome::Unknown => &mut self.unknown,
            Outcome::NotOurs => &mut self.not_ours,
        }
    }

    pub fn add(&mut self, outcome: Outcome) {
        *self.slot(outcome) += 1;
    }

    pub fn get(&self, outcome: Outcome) -> u32 {
        *self.clone().slot(outcome)
    }
}

/// The scanner's label for an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    TruePositive,
    FalsePositive,
}

impl From<Outcome> for Label {
    fn from(o: Outcome) -> Self {
        if o.is_true_positive() {
            Label::TruePositive
        } else {
            Label::FalsePositive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        assert_eq!(Outcome::ALL.len(), 5);
        for &o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::Value::from(o.as_str())
            );
        }
        assert_eq!(Outcome::AlreadyRevoked.as_str(), "already_revoked");
        assert_eq!(Outcome::parse("Revoked"), None);
    }

    #[test]
    fn counts_add_up_per_outcome() {
        let mut c = OutcomeCounts::default();
        for &o in Outcome::ALL {
            c.add(o);
        }
        c.add(Outcome::Expired);
        assert_eq!(c.get(Outcome::Expired), 2);
        assert_eq!(c.get(Outcome::NotOurs), 1);
        assert_eq!(c.revoked, 1);
    }
}
