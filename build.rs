//! Rebuilds when a migration changes: the PostgreSQL migrations are embedded
//! by `sqlx::migrate!` and the SQLite ones by `include_str!`, and a new file in
//! the folder would otherwise go unnoticed until some source file changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
