//! `sqlx::migrate!` embeds `migrations/` at compile time but does not tell
//! cargo to watch it: without this, a new migration file is silently left out
//! of an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
