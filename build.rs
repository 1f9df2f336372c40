//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!` embeds
//! `migrations/` at compile time, and without this Cargo may keep a binary (and test
//! binaries) migrating to the schema of the last build. The build script sqlx's
//! documentation recommends.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
