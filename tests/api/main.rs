//! The contract of SPEC.md, tested through real HTTP on port 0, each test with
//! its own database.

mod adaptive;
mod callbacks;
mod cli;
mod cluster;
mod connections;
mod dashboard;
mod durability;
mod fairness;
mod helpers;
mod hostile;
mod hostile_upstream;
mod ingest;
mod leases;
mod openapi;
mod operations;
mod ordering;
mod protection;
mod queues;
mod rate;
mod retention;
mod sqlite_only;
mod status;
mod store_conformance;
mod store_trouble;
mod supervision;
mod tenants;
mod torture;
mod upstream;
