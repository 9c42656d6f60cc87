//! Running Passerelle for a test (in-process, or the real binary), driving curl, and
//! reading the audit log it wrote.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Once;
use std::time::{Duration, Instant};

use passerelle_gateway::Gateway;
use serde_json::Value;
use tempfile::TempDir;

/// A gateway started in this process on 127.0.0.1:0, auditing to a file.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub dir: TempDir,
    pub audit_path: PathBuf,
    gateway: Option<Gateway>,
}

impl TestGateway {
    /// `toml` is a configuration file's text; the listener and the audit file are set by
    /// environment overrides (which the loader treats like an operator's).
    pub async fn start(toml: &str) -> TestGateway {
        Self::start_with_env(toml, &[]).await
    }

    pub async fn start_with_env(toml: &str, env: &[(&str, &str)]) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let audit_path = dir.path().join("audit.jsonl");
        let config =
            load_config(toml, &dir, env).unwrap_or_else(|e| panic!("test config rejected: {e}"));
        let gateway = Gateway::start(config).await.expect("gateway starts");
        TestGateway {
            addr: gateway.proxy_addrs()[0],
            dir,
            audit_path,
            gateway: Some(gateway),
        }
    }

    pub fn proxy(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }

    /// Waits (bounded) until the audit file holds at least `n` records, and returns them.
    pub async fn records(&self, n: usize) -> Vec<Value> {
        wait_records(&self.audit_path, n).await
    }

    /// The last record for `host`, waiting (bounded) for it to appear.
    pub async fn record_for(&self, host: &str) -> Value {
        wait_until(Duration::from_secs(10), || async {
            read_audit(&self.audit_path)
                .into_iter()
                .rev()
                .find(|r| r["host"] == host)
                .ok_or_else(|| format!("no audit record for {host}"))
        })
        .await
    }

    /// The record of the request curl made (by its `X-Passerelle-Request-Id`), waiting
    /// (bounded) for it to be written: never an older record of the same host.
    pub async fn record_of(&self, answer: &Curl) -> Value {
        let id = answer
            .request_id()
            .unwrap_or_else(|| panic!("no X-Passerelle-Request-Id in the answer: {answer:?}"));
        record_with_id(&self.audit_path, &id).await
    }

    /// The `n`-th record (1-based) for `host`, waiting (bounded) for it to be written.
    pub async fn nth_record_for(&self, host: &str, n: usize) -> Value {
        wait_until(Duration::from_secs(10), || async {
            let mut found: Vec<Value> = read_audit(&self.audit_path)
                .into_iter()
                .filter(|r| r["host"] == host)
                .collect();
            if found.len() >= n {
                Ok(found.swap_remove(n - 1))
            } else {
                Err(format!(
                    "only {} audit records for {host}, waited for {n}",
                    found.len()
                ))
            }
        })
        .await
    }

    /// Graceful shutdown; every record, flushed.
    pub async fn stop(self) -> Vec<Value> {
        let path = self.audit_path.clone();
        let _dir = self.shutdown().await;
        read_audit(&path)
    }

    /// Graceful shutdown; the returned directory keeps the audit file until dropped.
    pub async fn shutdown(mut self) -> TempDir {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await.expect("clean shutdown");
        }
        self.dir
    }
}

/// Loads a test configuration from `toml`, listening on 127.0.0.1:0 and auditing to
/// `dir/audit.jsonl`, with `env` added to the environment the loader sees.
pub fn load_config(
    toml: &str,
    dir: &TempDir,
    env: &[(&str, &str)],
) -> Result<passerelle_config::Config, passerelle_config::ConfigError> {
    let audit_path = dir.path().join("audit.jsonl");
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert("PASSERELLE__LISTEN__PROXY".into(), "127.0.0.1:0".into());
    vars.insert("PASSERELLE__AUDIT__SINK".into(), "file".into());
    vars.insert(
        "PASSERELLE__AUDIT__PATH".into(),
        audit_path.display().to_string(),
    );
    for (k, v) in env {
        vars.insert(k.to_string(), v.to_string());
    }
    passerelle_config::load_str(Some(toml), None, &vars)
}

/// Waits (bounded) for the record with request id `id` in the audit file at `path`.
pub async fn record_with_id(path: &Path, id: &str) -> Value {
    wait_until(Duration::from_secs(10), || async {
        read_audit(path)
            .into_iter()
            .find(|r| r["id"] == id)
            .ok_or_else(|| format!("no audit record with id {id}"))
    })
    .await
}

/// Waits (bounded) until the audit file at `path` holds at least `n` records.
pub async fn wait_records(path: &Path, n: usize) -> Vec<Value> {
    wait_until(Duration::from_secs(20), || async {
        let records = read_audit(path);
        match records.len() >= n {
            true => Ok(records),
            false => Err(format!(
                "{} audit records, waited for {n}: {records:?}",
                records.len()
            )),
        }
    })
    .await
}

/// The audit's records at `path`, but the writer's own (`start`, `rotate`): what requests,
/// refusals and reloads left. [`read_audit_all`] keeps every line.
pub fn read_audit(path: &Path) -> Vec<Value> {
    read_audit_all(path)
        .into_iter()
        .filter(|r| r["event"] != "start" && r["event"] != "rotate")
        .collect()
}

/// Every record at `path`, in order: whole lines only (a line the writer is still writing
/// is not a record yet).
pub fn read_audit_all(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// What curl reported.
#[derive(Debug)]
pub struct Curl {
    /// The final HTTP status (0 when none).
    pub status: u16,
    /// The proxy's answer to CONNECT (0 when there was no CONNECT).
    pub connect_status: u16,
    pub body: String,
    pub stderr: String,
    pub exit: i32,
    /// Every response head curl received, the proxy's answer to CONNECT included.
    pub heads: String,
}

impl Curl {
    /// The gateway's request id (`X-Passerelle-Request-Id`) of the last answer that carried
    /// one: the forwarded answer, or the answer to CONNECT.
    pub fn request_id(&self) -> Option<String> {
        self.heads
            .lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("x-passerelle-request-id")
                    .then(|| value.trim().to_string())
            })
            .next_back()
    }
}

/// Runs curl with `args` (always bounded by --max-time), capturing body, codes and heads.
pub async fn curl(args: &[&str]) -> Curl {
    let heads = tempfile::NamedTempFile::new().expect("a temporary file");
    let out = tokio::process::Command::new("curl")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .args([
            "-q",
            "-D",
            heads.path().to_str().expect("a UTF-8 temporary path"),
            "-sS",
            "--max-time",
            "60",
            "-w",
            "\n%{http_code} %{http_connect}",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("curl runs (apt-get install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, codes) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut codes = codes.split_whitespace().map(|c| c.parse().unwrap_or(0));
    Curl {
        status: codes.next().unwrap_or(0),
        connect_status: codes.next().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        exit: out.status.code().unwrap_or(-1),
        heads: std::fs::read_to_string(heads.path()).unwrap_or_default(),
    }
}

/// Runs the `passerelle` binary with `args` and returns what it printed, failing the test with
/// its output when it does not exit 0.
pub fn passerelle_ok<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let out = std::process::Command::new(passerelle_bin())
        .args(&args)
        .output()
        .expect("the passerelle binary runs");
    assert!(
        out.status.success(),
        "passerelle {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `passerelle` binary of this workspace, built on first use if `cargo test` did not.
pub fn passerelle_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    // The benchmark runs the peers with its release build.
    if let Some(bin) = std::env::var_os("PASSERELLE_BIN") {
        return PathBuf::from(bin);
    }
    let bin = target.join("debug/passerelle");
    BUILD.call_once(|| {
        // Without the variables cargo sets for a running test: build scripts (ring's) track
        // some of them, and a changed value would rebuild half the tree.
        let test_vars = std::env::vars_os().filter_map(|(k, _)| {
            let name = k.to_str()?;
            let set_for_tests = name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_")
                || matches!(
                    name,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                );
            set_for_tests.then_some(k)
        });
        let mut command = std::process::Command::new(env!("CARGO"));
        for name in test_vars {
            command.env_remove(name);
        }
        let status = command
            // The same command as scripts/test: the same features, so nothing rebuilds.
            .args(["build", "-q", "--workspace", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build runs");
        assert!(status.success(), "building the passerelle binary failed");
    });
    bin
}

/// `io` (a read from a socket, say), failing the test when it has not finished within 30 s: a
/// peer that stops answering fails the test with a message instead of hanging the suite.
pub async fn bounded<F: std::future::Future>(io: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(30), io).await {
        Ok(out) => out,
        Err(_) => panic!("no answer within 30 s"),
    }
}

/// How often a wait looks again at what it waits for.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it gives a value, for at most `within`, then fails the test with what
/// `check` said of the last state: how every suite waits on an event it can observe (a port
/// open, a log line, a record, a metric), never on a fixed delay.
pub async fn wait_until<T, F, Fut>(within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) => assert!(Instant::now() < deadline, "waited {within:?}: {state}"),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for the tests that run outside a runtime (the network-namespace suites).
pub fn wait_until_blocking<T>(within: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(state) => assert!(Instant::now() < deadline, "waited {within:?}: {state}"),
        }
        std::thread::sleep(POLL);
    }
}

/// Waits (bounded) until something accepts TCP connections at `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    wait_until(Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("nothing listens on {addr}: {e}"))
    })
    .await
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A site flow `origin.test` on `port`, reached through `connect_to` at `addr`.
pub fn origin_flow(id: &str, host: &str, port: u16, addr: SocketAddr) -> String {
    format!(
        "[[flows]]\nid = \"{id}\"\nhosts = [\"{host}\"]\nports = [{port}]\n\n[resolve]\nconnect_to = [\"{host}:{port}={addr}\"]\n"
    )
}

/// Sends raw bytes to `addr` and reads the answer: the head and, when it says
/// `Content-Length`, the body; or whatever came before the peer closed (empty when it
/// closed without a word). Bounded by a few seconds.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    if s.write_all(request).await.is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if out.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `request` `n` times on one connection, all at once (pipelined), and returns the
/// statuses of the answers in order: `n` requests within a few milliseconds whatever the
/// machine's load (the rate-limit tests need that, where separate curl runs take a second).
/// Each answer must say its `Content-Length`, as the gateway's own do.
pub async fn pipelined_statuses(addr: SocketAddr, request: &[u8], n: usize) -> Vec<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&request.repeat(n)).await.unwrap();
    let mut data = Vec::new();
    let mut statuses = Vec::new();
    let mut buf = [0u8; 16384];
    while statuses.len() < n {
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            let read = bounded(s.read(&mut buf)).await.unwrap();
            assert!(
                read > 0,
                "closed after {} answers: {statuses:?}",
                statuses.len()
            );
            data.extend_from_slice(&buf[..read]);
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("an answer with its content-length");
        if data.len() < end + 4 + length {
            let read = bounded(s.read(&mut buf)).await.unwrap();
            assert!(read > 0, "closed inside an answer");
            data.extend_from_slice(&buf[..read]);
            continue;
        }
        statuses.push(head[9..12].parse().expect("a status"));
        data.drain(..end + 4 + length);
    }
    statuses
}

/// The binary, with its config file and audit file in `dir`, listening on a fresh port. It runs
/// in a process group of its own, killed (and reaped) when this is dropped: a failing test
/// leaves nothing behind, wrappers' children included.
pub struct Running {
    child: Reaped,
    pub port: u16,
    pub audit: PathBuf,
}

/// Kills `child`'s process group (it was started as its leader) and reaps `child`.
pub fn kill_group(child: &mut std::process::Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// A child process started in a process group of its own, killed with its group and reaped
/// when dropped.
pub struct Reaped(pub std::process::Child);

impl Reaped {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut std::process::Command) -> std::io::Result<Reaped> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).spawn().map(Reaped)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        kill_group(&mut self.0);
    }
}

/// How to launch [`Running`]: extra environment, optionally a private resolver or a wrapper
/// command. Its stderr goes to `dir/stderr.log` ([`Running::log`]).
pub struct Launch {
    dir: PathBuf,
    toml: String,
    env: Vec<(String, String)>,
    hosts: Option<Vec<(String, std::net::IpAddr)>>,
    clock_offset: Option<String>,
}

impl Launch {
    /// Runs the binary with a resolver that answers only `hosts` ([`with_closed_dns`]).
    pub fn closed_dns(mut self, hosts: &[(&str, std::net::IpAddr)]) -> Launch {
        self.hosts = Some(hosts.iter().map(|(h, ip)| (h.to_string(), *ip)).collect());
        self
    }

    /// Runs the binary with its clock moved by `offset` (libfaketime's syntax: `+2h`), through
    /// the preload alone: no `faketime` wrapper process, which would not pass signals on.
    pub fn clock_offset(mut self, offset: &str) -> Launch {
        self.clock_offset = Some(offset.to_string());
        self
    }

    /// Starts the binary on 127.0.0.1:0 and learns its port from its own first log line
    /// (never from a port chosen beforehand, which another test's process may take).
    pub async fn start(self) -> Running {
        let audit = self.dir.join("audit.jsonl");
        let file = self.dir.join("passerelle.toml");
        let log = self.dir.join("stderr.log");
        std::fs::write(&file, &self.toml).unwrap();
        let program: Vec<std::ffi::OsString> = vec![passerelle_bin().into()];
        let mut cmd = match &self.hosts {
            None => std::process::Command::new(&program[0]),
            Some(hosts) => with_closed_dns(&self.dir, hosts, &program),
        };
        if let Some(offset) = &self.clock_offset {
            cmd.env("LD_PRELOAD", libfaketime()).env("FAKETIME", offset);
        }
        cmd.args(["run", "--config"])
            .arg(&file)
            .env("PASSERELLE__LISTEN__PROXY", "127.0.0.1:0")
            .env("PASSERELLE__AUDIT__SINK", "file")
            .env("PASSERELLE__AUDIT__PATH", &audit)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = Reaped::spawn(&mut cmd).expect("the passerelle binary starts");
        let port = wait_until(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let port = logged_addr(&text, "listening on ").map(|a| a.port());
            if port.is_none() {
                if let Ok(Some(status)) = child.0.try_wait() {
                    panic!("passerelle exited ({status}) before listening:\n{text}");
                }
            }
            async move { port.ok_or_else(|| format!("passerelle did not start:\n{text}")) }
        })
        .await;
        Running { child, port, audit }
    }
}

/// `program` in a private mount namespace whose resolver answers only `hosts`: its own
/// `/etc/hosts`, an `/etc/nsswitch.conf` that asks nothing but that file (no DNS query is made
/// at all, to any address), and an empty `/etc/resolv.conf`. The files are written in `dir`.
/// The wrapper `exec`s the program: it keeps its process id and gets signals itself.
pub fn with_closed_dns(
    dir: &Path,
    hosts: &[(String, std::net::IpAddr)],
    program: &[std::ffi::OsString],
) -> std::process::Command {
    let hosts_file = dir.join("hosts");
    let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for (name, ip) in hosts {
        text.push_str(&format!("{ip} {name}\n"));
    }
    std::fs::write(&hosts_file, text).unwrap();
    let nsswitch = dir.join("nsswitch.conf");
    std::fs::write(
        &nsswitch,
        "passwd: files\ngroup: files\nhosts: files\nservices: files\nprotocols: files\n",
    )
    .unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind '{}' /etc/hosts && mount --bind '{}' /etc/nsswitch.conf && mount --bind '{}' /etc/resolv.conf && exec \"$0\" \"$@\"",
            hosts_file.display(),
            nsswitch.display(),
            resolv.display()
        ))
        .args(program);
    cmd
}

/// libfaketime's preload library, for [`Launch::clock_offset`].
pub fn libfaketime() -> PathBuf {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/lib64/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("libfaketime is installed (scripts/install-test-deps installs faketime)")
}

/// A suite that cannot run on this machine (no network namespaces, say) calls this and
/// returns: the skip is counted by `scripts/test` (`N skipped` in its closing line), and is a
/// failure where `PASSERELLE_TESTS_NO_SKIP=1` (CI, where every suite must run).
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(
        std::env::var_os("PASSERELLE_TESTS_NO_SKIP").is_none(),
        "{test} cannot run here and PASSERELLE_TESTS_NO_SKIP forbids skipping it: {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    if let Some(file) = std::env::var_os("PASSERELLE_TEST_SKIPS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// The first `ip:port` after `marker` in a log.
fn logged_addr(text: &str, marker: &str) -> Option<SocketAddr> {
    text.split(marker).nth(1).and_then(|rest| {
        rest.split(|c: char| c.is_whitespace() || c == ';' || c == ',')
            .next()
            .and_then(|a| a.parse().ok())
    })
}

impl Running {
    pub async fn start(dir: &Path, toml: &str) -> Running {
        Running::with_env(dir, toml, &[]).start().await
    }

    /// A launch with extra environment variables; see [`Launch`].
    pub fn with_env(dir: &Path, toml: &str, env: &[(&str, &str)]) -> Launch {
        Launch {
            dir: dir.to_path_buf(),
            toml: toml.to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            hosts: None,
            clock_offset: None,
        }
    }

    pub fn proxy(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The admin listener's base URL, from the binary's first log line (launch it with
    /// `PASSERELLE__LISTEN__ADMIN=127.0.0.1:0`).
    pub async fn admin(&self) -> String {
        let text = self.log();
        match logged_addr(&text, "admin on ") {
            Some(addr) => format!("http://{addr}"),
            None => panic!("no admin listener in the log:\n{text}"),
        }
    }

    /// Waits (bounded) until the binary's log contains `needle` (`reload.refused`).
    pub async fn wait_log(&self, needle: &str) {
        wait_until(Duration::from_secs(20), || async {
            let log = self.log();
            match log.contains(needle) {
                true => Ok(()),
                false => Err(format!("no {needle:?} in the log:\n{log}")),
            }
        })
        .await
    }

    /// What the binary wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.audit.with_file_name("stderr.log")).unwrap_or_default()
    }

    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args(["-s", name, &self.child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// SIGTERM, then the exit code.
    pub async fn stop(self) -> i32 {
        self.signal("TERM");
        self.wait().await
    }

    /// The exit code, waiting up to 10 s.
    pub async fn wait(mut self) -> i32 {
        // Not wait_until: a binary that does not stop is killed before the test fails.
        for _ in 0..500 {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            tokio::time::sleep(POLL).await;
        }
        kill_group(&mut self.child.0);
        panic!("passerelle did not stop within 10 s");
    }
}

/// A metric's value from the Prometheus text at `admin` (`http://ip:port`), e.g.
/// `metric(admin, "passerelle_tunnels_active")` or with labels in the name as exposed.
pub async fn metric(admin: &str, series: &str) -> Option<f64> {
    let text = curl(&[&format!("{admin}/metrics")]).await.body;
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits (bounded) until `series` at `admin` equals `value`.
pub async fn wait_metric(admin: &str, series: &str, value: f64) {
    wait_until(Duration::from_secs(20), || async {
        match metric(admin, series).await {
            Some(now) if now == value => Ok(()),
            now => Err(format!("{series} stayed at {now:?}, waited for {value}")),
        }
    })
    .await
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all ours), to
/// play a client with another address.
pub async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(from), 0).into())?;
    socket.connect(to).await
}
