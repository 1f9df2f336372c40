-- Each token's format (issue 27): `cio_tp` (minted by revoker), `crates_io_trustpub` or
-- `crates_io_api` (a registry's own, imported by `revoker token import`). The hash's
-- meaning depends on it (crates.io hashes a trusted-publishing token's random part
-- only). Every token stored so far was minted by revoker. A constant default: adding the
-- column rewrites no row.
ALTER TABLE tokens ADD COLUMN format TEXT NOT NULL DEFAULT 'cio_tp';
