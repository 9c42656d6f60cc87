//! The benchmark's load generator and origin, on loopback only. `bench/run` starts the
//! origin and each proxy, then runs the workloads against each and prints the table.
//! Every loop is bounded in count and time.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "Passerelle's benchmark load generator (see bench/run)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the origins: HTTP (100-byte answers), bulk (sends N bytes on request), echo.
    Origin {
        #[arg(long)]
        http: SocketAddr,
        #[arg(long)]
        bulk: SocketAddr,
        #[arg(long)]
        echo: SocketAddr,
    },
    /// W1: forwarded GETs over keep-alive connections for a fixed time.
    W1 {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// W2: bulk download through CONNECT tunnels (or a raw TCP relay with --raw).
    W2 {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1)]
        tunnels: usize,
        /// Bytes in all, split across the tunnels.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        /// The proxy is a plain TCP relay to the target (HAProxy): no CONNECT.
        #[arg(long)]
        raw: bool,
    },
    /// W3: new connection + CONNECT + one small request + close, concurrently, fixed time.
    W3 {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// W4: open N idle tunnels, measure the proxy's RSS per tunnel, then probe each.
    W4 {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 2000)]
        tunnels: usize,
    },
}

#[derive(clap::Args)]
struct Common {
    /// The proxy (host:port); omit to go direct.
    #[arg(long)]
    proxy: Option<SocketAddr>,
    /// The origin the workload talks to.
    #[arg(long)]
    target: SocketAddr,
    /// The proxy's pid, for CPU time and RSS from /proc.
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Serialize, Default)]
struct Result {
    ops: u64,
    errors: u64,
    seconds: f64,
    per_second: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    mb_per_second: Option<f64>,
    cpu_us_per_op: Option<f64>,
    kib_per_tunnel: Option<f64>,
    alive: Option<u64>,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Origin { http, bulk, echo } => {
                origin(http, bulk, echo).await;
                None
            }
            Command::W1 {
                common,
                connections,
                seconds,
            } => Some(w1(&common, connections, seconds).await),
            Command::W2 {
                common,
                tunnels,
                bytes,
                raw,
            } => Some(w2(&common, tunnels, bytes, raw).await),
            Command::W3 {
                common,
                concurrency,
                seconds,
            } => Some(w3(&common, concurrency, seconds).await),
            Command::W4 { common, tunnels } => Some(w4(&common, tunnels).await),
        }
    });
    if let Some(result) = result {
        println!("{}", serde_json::to_string(&result).expect("json"));
    }
}

async fn origin(http: SocketAddr, bulk: SocketAddr, echo: SocketAddr) {
    let http = TcpListener::bind(http).await.expect("bind http");
    let bulk = TcpListener::bind(bulk).await.expect("bind bulk");
    let echo = TcpListener::bind(echo).await.expect("bind echo");
    let body = Bytes::from(vec![b'x'; 100]);
    tokio::spawn(async move {
        while let Ok((s, _)) = http.accept().await {
            let _ = s.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = bulk.accept().await {
            tokio::spawn(async move {
                let Ok(n) = s.read_u64().await else { return };
                let chunk = vec![0u8; 256 * 1024];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    if s.write_all(&chunk[..k]).await.is_err() {
                        return;
                    }
                    left -= k as u64;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    while let Ok((mut s, _)) = echo.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Opens a connection to the target: directly, or through the proxy with CONNECT.
async fn open(common: &Common, connect: bool) -> std::io::Result<TcpStream> {
    let Some(proxy) = common.proxy else {
        let s = TcpStream::connect(common.target).await?;
        s.set_nodelay(true)?;
        return Ok(s);
    };
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    if connect {
        let t = common.target;
        s.write_all(format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n").as_bytes())
            .await?;
        let head = read_head(&mut s, &mut Vec::new()).await?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(std::io::Error::other(format!(
                "CONNECT refused: {}",
                head.lines().next().unwrap_or("")
            )));
        }
    }
    Ok(s)
}

/// Reads a response head; bytes after it stay in `buf`.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Ok(head);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

async fn w1(common: &Common, connections: usize, seconds: f64) -> Result {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let cpu = CpuClock::start(common.pid);
    let errors = Arc::new(AtomicU64::new(0));
    let target = common.target;
    let request = match common.proxy {
        Some(_) => format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        None => format!("GET / HTTP/1.1\r\nHost: {target}\r\n\r\n"),
    };
    let mut tasks = Vec::new();
    let started = Instant::now();
    for _ in 0..connections {
        let request = request.clone();
        let errors = errors.clone();
        let common = Common {
            proxy: common.proxy,
            target,
            pid: None,
        };
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let Ok(mut s) = open(&common, false).await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return latencies;
            };
            let mut buf = Vec::with_capacity(8192);
            while Instant::now() < deadline && latencies.len() < 10_000_000 {
                let t = Instant::now();
                let ok = async {
                    s.write_all(request.as_bytes()).await?;
                    let head = read_head(&mut s, &mut buf).await?;
                    let len = content_length(&head);
                    let mut chunk = [0u8; 4096];
                    while buf.len() < len {
                        let n = s.read(&mut chunk).await?;
                        if n == 0 {
                            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    buf.drain(..len);
                    Ok::<_, std::io::Error>(head.starts_with("HTTP/1.1 200"))
                }
                .await;
                match ok {
                    Ok(true) => latencies.push(t.elapsed().as_micros() as u32),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    finish(all, errors.load(Ordering::Relaxed), started.elapsed(), cpu)
}

async fn w2(common: &Common, tunnels: usize, bytes: u64, raw: bool) -> Result {
    let cpu = CpuClock::start(common.pid);
    let each = bytes / tunnels as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..tunnels {
        let common = Common {
            proxy: common.proxy,
            target: common.target,
            pid: None,
        };
        tasks.push(tokio::spawn(async move {
            let mut s = open(&common, !raw).await?;
            s.write_u64(each).await?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            let deadline = Instant::now() + Duration::from_secs(120);
            while got < each && Instant::now() < deadline {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            Ok::<u64, std::io::Error>(got)
        }));
    }
    let mut moved = 0u64;
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(n)) if n == each => moved += n,
            _ => errors += 1,
        }
    }
    let elapsed = started.elapsed();
    let mb = moved as f64 / 1e6;
    Result {
        ops: moved,
        errors,
        seconds: elapsed.as_secs_f64(),
        per_second: mb / elapsed.as_secs_f64(),
        mb_per_second: Some(mb / elapsed.as_secs_f64()),
        // CPU per megabyte moved.
        cpu_us_per_op: cpu.us_per(mb),
        ..Result::default()
    }
}

async fn w3(common: &Common, concurrency: usize, seconds: f64) -> Result {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let cpu = CpuClock::start(common.pid);
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let errors = errors.clone();
        let common = Common {
            proxy: common.proxy,
            target: common.target,
            pid: None,
        };
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline && latencies.len() < 1_000_000 {
                let t = Instant::now();
                let ok = async {
                    let mut s = open(&common, true).await?;
                    s.write_all(b"GET / HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
                        .await?;
                    let mut out = Vec::with_capacity(256);
                    s.read_to_end(&mut out).await?;
                    Ok::<_, std::io::Error>(out.starts_with(b"HTTP/1.1 200"))
                }
                .await;
                match ok {
                    Ok(true) => latencies.push(t.elapsed().as_micros() as u32),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    finish(all, errors.load(Ordering::Relaxed), started.elapsed(), cpu)
}

async fn w4(common: &Common, tunnels: usize) -> Result {
    let before = rss_kib(common.pid);
    let started = Instant::now();
    let mut open_tunnels = Vec::with_capacity(tunnels);
    let mut errors = 0;
    for _ in 0..tunnels {
        match tokio::time::timeout(Duration::from_secs(5), open(common, true)).await {
            Ok(Ok(s)) => open_tunnels.push(s),
            _ => errors += 1,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(common.pid);
    let alive = Arc::new(AtomicU64::new(0));
    let mut probes = Vec::new();
    for mut s in open_tunnels {
        let alive = alive.clone();
        probes.push(tokio::spawn(async move {
            let mut b = [0u8; 1];
            let probe = async {
                s.write_all(b"p").await?;
                s.read_exact(&mut b).await?;
                Ok::<_, std::io::Error>(b[0] == b'p')
            };
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(10), probe).await {
                alive.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for p in probes {
        let _ = p.await;
    }
    let mut result = Result {
        ops: tunnels as u64,
        errors,
        seconds: started.elapsed().as_secs_f64(),
        alive: Some(alive.load(Ordering::Relaxed)),
        ..Result::default()
    };
    if let (Some(b), Some(a)) = (before, after) {
        result.kib_per_tunnel = Some((a as f64 - b as f64) / tunnels as f64);
    }
    result
}

fn finish(mut latencies: Vec<u32>, errors: u64, elapsed: Duration, cpu: CpuClock) -> Result {
    latencies.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        if latencies.is_empty() {
            None
        } else {
            let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
            Some(latencies[i] as f64 / 1000.0)
        }
    };
    let ops = latencies.len() as u64;
    Result {
        ops,
        errors,
        seconds: elapsed.as_secs_f64(),
        per_second: ops as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_us_per_op: cpu.us_per(ops as f64),
        ..Result::default()
    }
}

/// The proxy's CPU time (user + system) from /proc, across a workload.
struct CpuClock {
    pid: Option<u32>,
    start: Option<u64>,
}

impl CpuClock {
    fn start(pid: Option<u32>) -> CpuClock {
        CpuClock {
            pid,
            start: pid.and_then(cpu_ticks),
        }
    }

    fn us_per(&self, ops: f64) -> Option<f64> {
        let end = cpu_ticks(self.pid?)?;
        let ticks = end.checked_sub(self.start?)?;
        // USER_HZ is 100 on Linux.
        (ops > 0.0).then(|| ticks as f64 * 10_000.0 / ops)
    }
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
