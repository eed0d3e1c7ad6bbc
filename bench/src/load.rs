//! The closed-loop load generator: N kept-alive connections, each sending its
//! next request as soon as the previous answer has been read (as wrk does), for
//! a warm-up and then a measured window. Latency is from just before the request
//! is written to the last byte of the answer. (The soak's open-loop, paced load
//! is in `soak.rs`; it makes its requests with [`Requests`] too.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};

use crate::http::Connection;
use crate::server::{cpu_time_of, machine_busy_time};

/// A server process under load: where it listens, and the CPU it has used (a
/// `sluice serve`, or the seed-design reference server).
pub trait Target {
    fn addr(&self) -> SocketAddr;
    fn cpu_time(&self) -> Duration;
}

/// What each connection sends.
#[derive(Clone)]
pub enum Workload {
    /// `POST /ingest`, cycling through these bodies.
    Ingest(Arc<Vec<Bytes>>),
    /// `GET` of these paths (`/status/{id}`), picked at random.
    Get(Arc<Vec<String>>),
    /// Half the connections (the even ones) `POST /ingest`, the other half
    /// `GET /status/{id}`: the service taking work and answering about it at
    /// once, as the soak needs.
    Mixed {
        bodies: Arc<Vec<Bytes>>,
        paths: Arc<Vec<String>>,
    },
}

pub const INGEST: &str = "POST /ingest";
pub const STATUS: &str = "GET /status/{id}";

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ingest(_) => INGEST,
            Self::Get(_) => STATUS,
            Self::Mixed { .. } => "POST /ingest + GET /status/{id}",
        }
    }
}

/// The requests one connection sends: one route, and its place in the bodies
/// or its random pick of paths.
pub struct Requests {
    route: Route,
    rng: Rng,
    next_body: usize,
}

enum Route {
    Ingest(Arc<Vec<Bytes>>),
    Get(Arc<Vec<String>>),
}

impl Requests {
    /// The requests of connection `index` of `workload`.
    pub fn new(workload: &Workload, index: u64) -> Self {
        let route = match workload {
            Workload::Ingest(bodies) => Route::Ingest(Arc::clone(bodies)),
            Workload::Get(paths) => Route::Get(Arc::clone(paths)),
            Workload::Mixed { bodies, .. } if index.is_multiple_of(2) => {
                Route::Ingest(Arc::clone(bodies))
            }
            Workload::Mixed { paths, .. } => Route::Get(Arc::clone(paths)),
        };
        Self {
            route,
            rng: Rng::new(index),
            // Connections start at different bodies, so that they do not all
            // send the same ids at once.
            next_body: index as usize * 7919,
        }
    }

    pub fn name(&self) -> &'static str {
        match self.route {
            Route::Ingest(_) => INGEST,
            Route::Get(_) => STATUS,
        }
    }

    pub fn is_ingest(&self) -> bool {
        matches!(self.route, Route::Ingest(_))
    }

    /// The next request: method, path, body.
    pub fn next(&mut self) -> (Method, &str, Option<Bytes>) {
        match &self.route {
            Route::Ingest(bodies) => {
                self.next_body = (self.next_body + 1) % bodies.len();
                (
                    Method::POST,
                    "/ingest",
                    Some(bodies[self.next_body].clone()),
                )
            }
            Route::Get(paths) => (
                Method::GET,
                paths[self.rng.below(paths.len() as u64) as usize].as_str(),
                None,
            ),
        }
    }
}

pub struct LoadSpec {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

pub struct LoadResult {
    pub name: &'static str,
    pub connections: usize,
    /// Successful answers completed in the measured window.
    pub ok: u64,
    /// Answers other than 200, and failed requests, in the whole run.
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub window: Duration,
    /// Latency of the measured successful requests, in microseconds.
    pub latency: Histogram<u64>,
    /// The same per route, when the workload mixes routes.
    pub routes: Vec<RouteResult>,
    pub client_cpu: Duration,
    pub server_cpu: Duration,
    /// CPU time of the whole machine in the window (all processes, interrupts).
    pub machine_cpu: Duration,
}

/// One route's share of a mixed load.
pub struct RouteResult {
    pub name: &'static str,
    pub connections: usize,
    pub ok: u64,
    pub latency: Histogram<u64>,
}

impl RouteResult {
    pub fn per_second(&self, window: Duration) -> f64 {
        self.ok as f64 / window.as_secs_f64()
    }

    pub fn p(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(quantile))
    }
}

impl LoadResult {
    /// CPU the rest of the machine used in the window, in cores: other
    /// processes (a build, say) and interrupts (loopback networking).
    pub fn other_cores(&self) -> f64 {
        let other = self
            .machine_cpu
            .saturating_sub(self.server_cpu)
            .saturating_sub(self.client_cpu);
        other.as_secs_f64() / self.window.as_secs_f64()
    }

    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    pub fn p(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(quantile))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.latency.max())
    }

    pub fn print(&self) {
        println!(
            "  {}: {} connections, {:.1} s measured",
            self.name,
            self.connections,
            self.window.as_secs_f64()
        );
        println!(
            "    throughput  {} req/s ({} answers, {} errors)",
            thousands(self.per_second() as u64),
            thousands(self.ok),
            self.errors
        );
        println!(
            "    latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            ms(self.p(0.50)),
            ms(self.p(0.90)),
            ms(self.p(0.99)),
            ms(self.p(0.999)),
            ms(self.max())
        );
        if self.routes.len() > 1 {
            for route in &self.routes {
                println!(
                    "    {:<16}  {} connections, {} req/s, p50 {}  p99 {}  max {}",
                    route.name,
                    route.connections,
                    thousands(route.per_second(self.window) as u64),
                    ms(route.p(0.50)),
                    ms(route.p(0.99)),
                    ms(Duration::from_micros(route.latency.max()))
                );
            }
        }
        let secs = self.window.as_secs_f64();
        println!(
            "    CPU         server {:.2} cores, load generator {:.2} cores, rest of the machine {:.2} cores (of {})",
            self.server_cpu.as_secs_f64() / secs,
            self.client_cpu.as_secs_f64() / secs,
            self.other_cores(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        if self.other_cores() > 0.25 {
            println!(
                "    warning: other work on the machine took {:.2} cores during this run; its figures are low",
                self.other_cores()
            );
        }
        for error in &self.first_errors {
            println!("    error: {error}");
        }
    }
}

/// Runs `workload` against the server with `spec.connections` connections.
pub async fn run(
    server: &impl Target,
    workload: Workload,
    spec: &LoadSpec,
) -> anyhow::Result<LoadResult> {
    let addr = server.addr();
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let until = measure_from + spec.duration;
    let mut tasks = Vec::with_capacity(spec.connections);
    for index in 0..spec.connections {
        tasks.push(tokio::spawn(drive(
            addr,
            Requests::new(&workload, index as u64),
            measure_from,
            until,
        )));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let (client_cpu_0, server_cpu_0, machine_0) =
        (cpu_time_of("self"), server.cpu_time(), machine_busy_time());
    tokio::time::sleep_until(until.into()).await;
    let (client_cpu_1, server_cpu_1, machine_1) =
        (cpu_time_of("self"), server.cpu_time(), machine_busy_time());

    let mut result = LoadResult {
        name: workload.name(),
        connections: spec.connections,
        ok: 0,
        errors: 0,
        first_errors: Vec::new(),
        window: spec.duration,
        latency: new_histogram(),
        routes: Vec::new(),
        client_cpu: client_cpu_1.saturating_sub(client_cpu_0),
        server_cpu: server_cpu_1.saturating_sub(server_cpu_0),
        machine_cpu: machine_1.saturating_sub(machine_0),
    };
    for task in tasks {
        let one = task.await.context("a load connection panicked")??;
        result.ok += one.ok;
        result.errors += one.errors;
        result.latency.add(&one.latency)?;
        match result.routes.iter_mut().find(|r| r.name == one.route) {
            Some(route) => {
                route.connections += 1;
                route.ok += one.ok;
                route.latency.add(&one.latency)?;
            }
            None => result.routes.push(RouteResult {
                name: one.route,
                connections: 1,
                ok: one.ok,
                latency: one.latency.clone(),
            }),
        }
        for error in one.first_errors {
            if result.first_errors.len() < 5 {
                result.first_errors.push(error);
            }
        }
    }
    Ok(result)
}

struct ConnectionResult {
    route: &'static str,
    ok: u64,
    errors: u64,
    first_errors: Vec<String>,
    latency: Histogram<u64>,
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

async fn drive(
    addr: SocketAddr,
    mut requests: Requests,
    measure_from: Instant,
    until: Instant,
) -> anyhow::Result<ConnectionResult> {
    let mut out = ConnectionResult {
        route: requests.name(),
        ok: 0,
        errors: 0,
        first_errors: Vec::new(),
        latency: new_histogram(),
    };
    let mut connection = None;
    while Instant::now() < until {
        let conn = match &mut connection {
            Some(conn) => conn,
            None => match Connection::open(addr).await {
                Ok(conn) => connection.insert(conn),
                Err(error) => {
                    out.note_error(format!("{error:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (method, path, body) = requests.next();
        let sent = Instant::now();
        // A request still unanswered 30 s after the end is a failure.
        let answer = tokio::time::timeout(
            until.saturating_duration_since(sent) + Duration::from_secs(30),
            conn.request(method, path, body),
        )
        .await;
        let done = Instant::now();
        if done > until {
            break;
        }
        match answer {
            Ok(Ok((StatusCode::OK, _))) => {
                if sent >= measure_from {
                    out.ok += 1;
                    let micros = done.duration_since(sent).as_micros() as u64;
                    out.latency.saturating_record(micros.max(1));
                }
            }
            Ok(Ok((status, body))) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                out.note_error(format!("{path} answered {status}: {text}"));
            }
            Ok(Err(error)) => {
                out.note_error(format!("{path}: {error:#}"));
                connection = None;
            }
            Err(_) => {
                out.note_error(format!("{path}: no answer within 30 s of the end"));
                connection = None;
            }
        }
    }
    Ok(out)
}

impl ConnectionResult {
    fn note_error(&mut self, message: String) {
        self.errors += 1;
        if self.first_errors.len() < 2 {
            self.first_errors.push(message);
        }
    }
}

/// splitmix64: enough randomness for ids and priorities, and reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The largest id the contract allows.
const MAX_ID: u64 = 1_000_000_007;
const PRIORITIES: [&str; 3] = ["HIGH", "MEDIUM", "LOW"];

/// A `POST /ingest` body of `count` random ids; `priority` or a random one.
pub fn ingest_body(rng: &mut Rng, count: usize, priority: Option<&str>) -> Bytes {
    let mut body = String::with_capacity(count * 11 + 40);
    body.push_str("{\"ids\":[");
    for i in 0..count {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&(1 + rng.below(MAX_ID)).to_string());
    }
    let priority = priority.unwrap_or(PRIORITIES[rng.below(3) as usize]);
    body.push_str("],\"priority\":\"");
    body.push_str(priority);
    body.push_str("\"}");
    Bytes::from(body)
}

/// Many small ingest bodies with random priorities, for the load.
pub fn ingest_bodies(seed: u64, count: usize, ids_each: usize) -> Arc<Vec<Bytes>> {
    let mut rng = Rng::new(seed);
    Arc::new(
        (0..count)
            .map(|_| ingest_body(&mut rng, ids_each, None))
            .collect(),
    )
}

/// Creates `count` ingestions of `ids_each` ids over `connections` connections;
/// their ids.
pub async fn create_ingestions(
    addr: SocketAddr,
    count: usize,
    ids_each: usize,
    connections: usize,
) -> anyhow::Result<Vec<String>> {
    let connections = connections.clamp(1, count.max(1));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let share = count / connections + usize::from(c < count % connections);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(1_000 + c as u64);
            let mut conn = Connection::open(addr).await?;
            let mut ids = Vec::with_capacity(share);
            for _ in 0..share {
                ids.push(conn.ingest(ingest_body(&mut rng, ids_each, None)).await?);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.extend(task.await??);
    }
    Ok(ids)
}

/// Formats a duration in milliseconds, to the microsecond.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// 1234567 as "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
    }

    #[test]
    fn bodies_are_valid_requests() {
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            let body = ingest_body(&mut rng, 10, None);
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let ids = value["ids"].as_array().unwrap();
            assert_eq!(ids.len(), 10);
            assert!(
                ids.iter()
                    .all(|id| (1..=MAX_ID).contains(&id.as_u64().unwrap()))
            );
            assert!(PRIORITIES.contains(&value["priority"].as_str().unwrap()));
        }
    }

    #[test]
    fn below_stays_below() {
        let mut rng = Rng::new(9);
        assert!((0..10_000).all(|_| rng.below(7) < 7));
    }
}
