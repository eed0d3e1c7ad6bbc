//! Sluice: a prioritized, rate-limited, durable ingestion service.
//!
//! # Layout
//!
//! A request flows through four parts, one folder each:
//!
//! - [`api`]: the HTTP edge. `POST /ingest` validates a request into
//!   [`domain`] types, hands it to the store, and answers once it is durable;
//!   `GET /status` reads it back. Every error is one [`api::error::ApiError`].
//! - [`store`]: everything persisted, behind the [`store::Store`] trait. The
//!   SQLite store groups concurrent writes into one commit.
//! - [`dispatcher`]: one loop for the whole service. It asks the store to claim
//!   the next batch (priority, then arrival, then position), which also takes the
//!   rate limit in the same commit, then processes it.
//! - [`upstream`]: where a batch's ids are fetched, behind the
//!   [`upstream::Fetcher`] trait; the built-in mock by default.
//!
//! [`callbacks`] POSTs a request's final status to its `callback_url`.
//! [`metrics`] counts what happens, for `/metrics`. [`signals`] are the wake-ups between them; [`supervisor`] restarts a background part that stops. `pruner` deletes ended work past `--retention`. `redact` keeps secrets out of messages. [`startup`] wires them together; [`config`] and [`cli`] are the command line;
//! `main.rs` only parses flags and calls [`startup::serve`].
//! [`client`] is `sluice submit`, `status` and `watch`, run by [`client::run`]: an API client.

pub mod api;
pub mod callbacks;
pub mod cli;
pub mod client;
pub mod config;
pub mod dispatcher;
pub mod domain;
pub mod metrics;
pub(crate) mod pruner;
pub mod queue;
pub(crate) mod redact;
pub mod signals;
pub mod startup;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod upstream;
