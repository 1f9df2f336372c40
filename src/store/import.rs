//! The model of `revoker token import` (a registry's tokens, stored by their hashes): what
//! an import hands the store, what the store answers, and the instant that stands for
//! "never expires".
//!
//! Invariants: an import never changes a stored token's owner, format or times and never
//! un-revokes one ([`RevocationStore::import_tokens`] inserts only hashes not stored yet);
//! the only change it makes to a stored token is [`RevocationStore::revoke_imported`],
//! which revokes a live one (`revoked_by` NULL: no report, no notification).
//!
//! [`RevocationStore::import_tokens`]: super::RevocationStore::import_tokens
//! [`RevocationStore::revoke_imported`]: super::RevocationStore::revoke_imported

use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::TokenHash;

/// The `expires_at` of a token that never expires (a registry's API tokens usually do
/// not): `9999-12-31T23:59:59Z`, which both databases store, so `expires_at` stays
/// `NOT NULL` and every comparison with it works unchanged.
pub const NEVER_EXPIRES: DateTime<Utc> = match DateTime::from_timestamp(253_402_300_799, 0) {
    Some(t) => t,
    None => panic!("9999-12-31T23:59:59Z is a valid instant"),
};

/// A registry's token, as an import stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportToken {
    /// The hash the registry stores for it (its format says of which bytes).
    pub hash: TokenHash,
    pub owner: String,
    /// A name of [`crate::domain::format::FORMATS`].
    pub format: &'static str,
    pub created_at: DateTime<Utc>,
    /// [`NEVER_EXPIRES`] for a token that never expires.
    pub expires_at: DateTime<Utc>,
    /// Stored revoked (by no report) when set.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token that was stored before an import named it: what the import compares its line
/// with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub hash: TokenHash,
    pub owner: String,
    pub format: String,
    pub revoked: bool,
}

/// What [`RevocationStore::import_tokens`](super::RevocationStore::import_tokens)
/// answers for one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportedBatch {
    /// The hashes this call stored (absent before).
    pub inserted: Vec<TokenHash>,
    /// The tokens among those given that were stored before, as they are stored.
    pub stored: Vec<StoredToken>,
}

/// A row of an import statement: `(hash, inserted, owner, format, revoked)`, `owner` and
/// `format` NULL on an inserted row.
pub(super) type ImportRow = (Vec<u8>, bool, Option<String>, Option<String>, bool);

impl ImportedBatch {
    /// From the rows of an import statement.
    pub(super) fn from_rows(rows: Vec<ImportRow>) -> Result<ImportedBatch, StoreError> {
        let mut batch = ImportedBatch::default();
        for (hash, inserted, owner, format, revoked) in rows {
            let hash = super::rows::hash_from(&hash)?;
            if inserted {
                batch.inserted.push(hash);
                continue;
            }
            let (Some(owner), Some(format)) = (owner, format) else {
                return Err(StoreError::Corrupt(
                    "a stored token without owner or format".into(),
                ));
            };
            batch.stored.push(StoredToken {
                hash,
                owner,
                format,
                revoked,
            });
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_expires_is_the_last_second_of_9999() {
        assert_eq!(NEVER_EXPIRES.to_rfc3339(), "9999-12-31T23:59:59+00:00");
    }
}
