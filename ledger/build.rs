//! sqlx's `migrate!` embeds the migration files when the crate compiles; a new file alone would
//! not make cargo compile it again.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
