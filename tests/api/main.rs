//! The contract of SPEC.md, tested through real HTTP on port 0, each test with
//! its own database.

mod cli;
mod cluster;
mod durability;
mod helpers;
mod ingest;
mod ordering;
mod rate;
mod sqlite_only;
mod status;
mod upstream;
