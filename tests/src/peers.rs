//! The parent proxies the upstream suites run against, as real processes on 127.0.0.1:
//! Squid with Basic authentication (`basic_ncsa_auth`), and `peers/ntlm_parent.py`, which
//! verifies NTLMv2 with pyspnego. `scripts/install-test-deps` installs both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{free_port, wait_listening};

/// Kills the process when dropped, so a failing test leaves nothing behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The NTLM parent. `users` are `(DOMAIN, user, password)`; `map` sends CONNECT targets
/// (`host:port`) to local addresses.
pub struct NtlmParent {
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
    _child: Reaped,
}

impl NtlmParent {
    pub async fn start(
        users: &[(&str, &str, &str)],
        map: &[(&str, SocketAddr)],
        offer_basic: bool,
    ) -> NtlmParent {
        NtlmParent::start_on(free_port(), users, map, offer_basic).await
    }

    /// [`NtlmParent::start`] with extra command-line flags (faults to inject).
    pub async fn start_with(
        users: &[(&str, &str, &str)],
        map: &[(&str, SocketAddr)],
        flags: &[&str],
    ) -> NtlmParent {
        NtlmParent::launch(free_port(), users, map, flags).await
    }

    /// [`NtlmParent::start`] on a given port (to bring a parent back where it was).
    pub async fn start_on(
        port: u16,
        users: &[(&str, &str, &str)],
        map: &[(&str, SocketAddr)],
        offer_basic: bool,
    ) -> NtlmParent {
        let flags: &[&str] = if offer_basic { &["--offer-basic"] } else { &[] };
        NtlmParent::launch(port, users, map, flags).await
    }

    async fn launch(
        port: u16,
        users: &[(&str, &str, &str)],
        map: &[(&str, SocketAddr)],
        flags: &[&str],
    ) -> NtlmParent {
        let dir = tempfile::tempdir().expect("temp dir");
        let users_file = dir.path().join("users");
        let lines: Vec<String> = users
            .iter()
            .map(|(d, u, p)| format!("{d}:{u}:{p}"))
            .collect();
        std::fs::write(&users_file, lines.join("\n") + "\n").expect("users file");
        let log = dir.path().join("parent.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/ntlm_parent.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args(["--port", &port.to_string(), "--log"])
            .arg(&log)
            .env("NTLM_USER_FILE", &users_file)
            .env("LM_COMPAT_LEVEL", "5")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (target, addr) in map {
            cmd.args(["--map", &format!("{target}={addr}")]);
        }
        cmd.args(flags);
        let child = Reaped(
            cmd.spawn()
                .expect("python3 runs (scripts/install-test-deps installs pyspnego)"),
        );
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_listening(addr).await;
        NtlmParent {
            addr,
            log,
            _dir: dir,
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the parent logged.
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == event).count()
    }
}

/// How a [`Squid`] authenticates its clients.
pub enum SquidAuth<'a> {
    /// `basic_ncsa_auth` with these `(user, password)`.
    Basic(&'a [(&'a str, &'a str)]),
    /// `ntlm_fake_auth`: any NTLM handshake passes (for what Squid does around it, such as
    /// the 64 KiB body stall after a 407).
    FakeNtlm,
}

/// Squid as an authenticating parent; `hosts` are names its resolver maps to 127.0.0.1 (no
/// query leaves the machine).
pub struct Squid {
    pub addr: SocketAddr,
    dir: TempDir,
    _child: Reaped,
}

impl Squid {
    /// Squid demanding Basic authentication from `users` (`(user, password)`).
    pub async fn start(users: &[(&str, &str)], hosts: &[&str]) -> Squid {
        Squid::with_auth(SquidAuth::Basic(users), hosts).await
    }

    pub async fn with_auth(auth: SquidAuth<'_>, hosts: &[&str]) -> Squid {
        let squid = ["/usr/sbin/squid", "/usr/bin/squid"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("squid is installed (scripts/install-test-deps)");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        // Squid drops to its own user: it must read and write here.
        set_mode(d, 0o777);
        let auth_param = match auth {
            SquidAuth::Basic(users) => {
                let helper = "/usr/lib/squid/basic_ncsa_auth";
                assert!(Path::new(helper).exists(), "{helper} is missing");
                let mut passwd = String::new();
                for (user, password) in users {
                    let out = Command::new("openssl")
                        .args(["passwd", "-apr1", password])
                        .output()
                        .expect("openssl runs");
                    passwd.push_str(&format!("{user}:{}", String::from_utf8_lossy(&out.stdout)));
                }
                write_world_readable(&d.join("passwd"), &passwd);
                format!(
                    "auth_param basic program {helper} {d}/passwd\n\
                     auth_param basic realm passerelle-test\n\
                     auth_param basic credentialsttl 1 second\n",
                    d = d.display()
                )
            }
            SquidAuth::FakeNtlm => {
                let helper = "/usr/lib/squid/ntlm_fake_auth";
                assert!(Path::new(helper).exists(), "{helper} is missing");
                format!("auth_param ntlm program {helper}\nauth_param ntlm children 4\n")
            }
        };
        let hosts_text: String = hosts.iter().map(|h| format!("127.0.0.1 {h}\n")).collect();
        write_world_readable(&d.join("hosts"), &hosts_text);
        let port = free_port();
        let conf = format!(
            "http_port 127.0.0.1:{port}\n\
             pid_filename {d}/squid.pid\n\
             cache_log {d}/cache.log\n\
             access_log stdio:{d}/access.log\n\
             coredump_dir {d}\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             netdb_filename none\n\
             pinger_enable off\n\
             hosts_file {d}/hosts\n\
             dns_nameservers 127.0.0.1\n\
             shutdown_lifetime 0 seconds\n\
             {auth_param}\
             acl authed proxy_auth REQUIRED\n\
             http_access allow authed\n\
             http_access deny all\n",
            d = d.display()
        );
        write_world_readable(&d.join("squid.conf"), &conf);
        let child = Command::new(squid)
            .args(["-N", "-f"])
            .arg(d.join("squid.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("squid starts");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "squid did not listen; cache.log:\n{}",
                std::fs::read_to_string(d.join("cache.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Squid {
            addr,
            dir,
            _child: Reaped(child),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Squid's access.log lines so far.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn write_world_readable(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    set_mode(path, 0o644);
}
