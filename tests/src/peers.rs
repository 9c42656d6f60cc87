//! The parent proxies the upstream suites run against, as real processes on 127.0.0.1:
//! Squid with Basic authentication (`basic_ncsa_auth`), and `peers/ntlm_parent.py`, which
//! verifies NTLMv2 with pyspnego. `scripts/install-test-deps` installs both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{free_port, wait_until, Reaped};

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
        let flags: &[&str] = if offer_basic { &["--offer-basic"] } else { &[] };
        NtlmParent::start_with(users, map, flags).await
    }

    /// [`NtlmParent::start`] with extra command-line flags (faults to inject).
    pub async fn start_with(
        users: &[(&str, &str, &str)],
        map: &[(&str, SocketAddr)],
        flags: &[&str],
    ) -> NtlmParent {
        // A free port can be taken by another test's process before the parent binds it:
        // then another port.
        for _ in 0..3 {
            if let Some(parent) = NtlmParent::launch(free_port(), users, map, flags).await {
                return parent;
            }
        }
        panic!("the NTLM parent could not bind a port in three attempts");
    }

    /// The same parent demanding Negotiate: MIT's GSS acceptor (python-gssapi) with the key of
    /// `HTTP/<name>` made at `kdc`; its first answer after the handshake carries the final
    /// token as `final_token` says (`send`, `omit`, `garble`).
    pub async fn negotiate(
        kdc: &Kdc,
        name: &str,
        map: &[(&str, SocketAddr)],
        final_token: &str,
    ) -> NtlmParent {
        let keytab = kdc.dir().join(format!("http-{final_token}.keytab"));
        if !keytab.exists() {
            kdc.add_service(&format!("HTTP/{name}"), &keytab);
        }
        let keytab = keytab.display().to_string();
        let conf = kdc.krb5_conf.display().to_string();
        let flags = [
            "--negotiate",
            &keytab,
            "--krb5-config",
            &conf,
            "--final-token",
            final_token,
        ];
        NtlmParent::start_with(&[("X", "unused", "unused")], map, &flags).await
    }

    /// [`NtlmParent::start`] on a given port (to bring a parent back where it was).
    pub async fn start_on(
        port: u16,
        users: &[(&str, &str, &str)],
        map: &[(&str, SocketAddr)],
        offer_basic: bool,
    ) -> NtlmParent {
        let flags: &[&str] = if offer_basic { &["--offer-basic"] } else { &[] };
        NtlmParent::launch(port, users, map, flags)
            .await
            .unwrap_or_else(|| panic!("the NTLM parent could not bind port {port}"))
    }

    /// `None` when the parent exited before listening (its port was taken).
    async fn launch(
        port: u16,
        users: &[(&str, &str, &str)],
        map: &[(&str, SocketAddr)],
        flags: &[&str],
    ) -> Option<NtlmParent> {
        let dir = tempfile::tempdir().expect("temp dir");
        let users_file = dir.path().join("users");
        let lines: Vec<String> = users
            .iter()
            .map(|(d, u, p)| format!("{d}:{u}:{p}"))
            .collect();
        std::fs::write(&users_file, lines.join("\n") + "\n").expect("users file");
        let log = dir.path().join("parent.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/ntlm_parent.py");
        // Kerberos needs python-gssapi: python3's, or Debian's interpreter's.
        let python = if flags.contains(&"--negotiate")
            && !Command::new("python3")
                .args(["-c", "import gssapi"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let mut cmd = Command::new(python);
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
        let mut child = Reaped::spawn(&mut cmd)
            .expect("python3 runs (scripts/install-test-deps installs pyspnego)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // Ready when it logged that it listens (it binds before it logs): a connection that
        // succeeds could reach another test's process on that port.
        let listening = wait_until(Duration::from_secs(20), || {
            let started = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("\"listening\"");
            let exited = matches!(child.0.try_wait(), Ok(Some(_)));
            async move {
                match (started, exited) {
                    (true, _) => Ok(true),
                    (false, true) => Ok(false),
                    (false, false) => Err("the NTLM parent did not start".to_string()),
                }
            }
        })
        .await;
        listening.then(|| NtlmParent {
            addr,
            log,
            _dir: dir,
            _child: child,
        })
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
    /// `negotiate_kerberos_auth` with the service keytab of `kdc` for `HTTP/<name>`.
    Negotiate { kdc: &'a Kdc, name: &'a str },
    /// Negotiate as above, and NTLM (`ntlm_fake_auth`) offered beside it.
    NegotiateAndNtlm { kdc: &'a Kdc, name: &'a str },
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
        Squid::denying(auth, hosts, &[]).await
    }

    /// Squid authenticating as `auth` that refuses the destinations `denied` with a 407 after
    /// accepting the credentials: `http_access deny <denied> authed`, an access line ending with
    /// an authentication ACL, as sites write them.
    pub async fn denying(auth: SquidAuth<'_>, hosts: &[&str], denied: &[&str]) -> Squid {
        Squid::refusing(auth, hosts, denied, true).await
    }

    /// Squid refusing the destinations `denied` with a 403 before any authentication
    /// (`http_access deny <denied>`, the other way sites write it).
    pub async fn forbidding(auth: SquidAuth<'_>, hosts: &[&str], denied: &[&str]) -> Squid {
        Squid::refusing(auth, hosts, denied, false).await
    }

    async fn refusing(
        auth: SquidAuth<'_>,
        hosts: &[&str],
        denied: &[&str],
        after_authentication: bool,
    ) -> Squid {
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
            SquidAuth::FakeNtlm => fake_ntlm(),
            SquidAuth::Negotiate { kdc, name } => negotiate(kdc, name, d),
            SquidAuth::NegotiateAndNtlm { kdc, name } => {
                format!("{}{}", negotiate(kdc, name, d), fake_ntlm())
            }
        };
        let krb5_config = match &auth {
            SquidAuth::Negotiate { kdc, .. } | SquidAuth::NegotiateAndNtlm { kdc, .. } => {
                Some(kdc.krb5_conf.clone())
            }
            _ => None,
        };
        let hosts_text: String = hosts.iter().map(|h| format!("127.0.0.1 {h}\n")).collect();
        write_world_readable(&d.join("hosts"), &hosts_text);
        // A port taken between free_port() and Squid's bind makes Squid exit: then again,
        // on another port.
        let mut attempts = 0;
        let (addr, child) = loop {
            attempts += 1;
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
                 visible_hostname passerelle-test-squid\n\
                 dns_nameservers 127.0.0.1\n\
                 shutdown_lifetime 0 seconds\n\
                 {auth_param}\
                 acl authed proxy_auth REQUIRED\n\
                 {deny}\
                 http_access allow authed\n\
                 http_access deny all\n",
                d = d.display(),
                deny = if denied.is_empty() {
                    String::new()
                } else {
                    format!(
                        "acl denied_dst dstdomain {}\nhttp_access deny denied_dst{}\n",
                        denied.join(" "),
                        if after_authentication { " authed" } else { "" }
                    )
                },
            );
            write_world_readable(&d.join("squid.conf"), &conf);
            let mut cmd = Command::new(squid);
            cmd.args(["-N", "-f"])
                .arg(d.join("squid.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(conf) = &krb5_config {
                cmd.env("KRB5_CONFIG", conf);
            }
            let mut child = Reaped::spawn(&mut cmd).expect("squid starts");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            // Ready when *this* Squid says it accepts on the port (a connection succeeding
            // could reach another test's process that took it); false when it exited.
            let accepting = "Accepting HTTP Socket connections at conn";
            let ours = format!("local=127.0.0.1:{port} ");
            let listening = wait_until(Duration::from_secs(30), || {
                let log = std::fs::read_to_string(d.join("cache.log")).unwrap_or_default();
                let state = if log
                    .lines()
                    .any(|l| l.contains(accepting) && l.contains(&ours))
                {
                    Ok(true)
                } else if child.0.try_wait().ok().flatten().is_some() {
                    Ok(false)
                } else {
                    Err(format!(
                        "squid does not listen on {port} yet; cache.log:\n{log}"
                    ))
                };
                async move { state }
            })
            .await;
            if listening {
                break (addr, child);
            }
            let log = std::fs::read_to_string(d.join("cache.log")).unwrap_or_default();
            assert!(attempts < 3, "squid did not listen; cache.log:\n{log}");
            eprintln!("squid exited at start (attempt {attempts}); cache.log:\n{log}");
        };
        Squid {
            addr,
            dir,
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Squid's cache.log: its own and its helpers' messages.
    pub fn cache_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cache.log")).unwrap_or_default()
    }

    /// Waits (bounded) for an access.log line (Squid writes one when a transaction ends).
    pub async fn wait_access(&self, found: impl Fn(&str) -> bool) -> String {
        crate::harness::wait_until(Duration::from_secs(20), || async {
            let log = self.access_log();
            log.iter()
                .find(|l| found(l))
                .cloned()
                .ok_or_else(|| format!("no such line in Squid's access.log: {log:?}"))
        })
        .await
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

fn fake_ntlm() -> String {
    let helper = "/usr/lib/squid/ntlm_fake_auth";
    assert!(Path::new(helper).exists(), "{helper} is missing");
    format!("auth_param ntlm program {helper}\nauth_param ntlm children 4\n")
}

/// Squid's Kerberos acceptor, with a keytab for `HTTP/<name>` it can read.
fn negotiate(kdc: &Kdc, name: &str, dir: &Path) -> String {
    let helper = "/usr/lib/squid/negotiate_kerberos_auth";
    assert!(Path::new(helper).exists(), "{helper} is missing");
    let keytab = dir.join("http.keytab");
    kdc.add_service(&format!("HTTP/{name}"), &keytab);
    set_mode(&keytab, 0o644);
    format!(
        "auth_param negotiate program {helper} -k {} -s GSS_C_NO_NAME\n\
         auth_param negotiate children 4\n\
         auth_param negotiate keep_alive on\n",
        keytab.display()
    )
}

/// The realm every Kerberos test uses.
pub const REALM: &str = "PASSERELLE.TEST";

/// A real MIT Kerberos KDC on 127.0.0.1, provisioned for one test: its own database, realm
/// [`REALM`], a `krb5.conf` for the clients (Passerelle, curl, Squid's helper; names are not
/// canonicalised, as the README tells sites to configure), and its log to count what reached it.
pub struct Kdc {
    pub port: u16,
    pub krb5_conf: PathBuf,
    dir: TempDir,
    _child: Reaped,
}

impl Kdc {
    pub async fn start() -> Kdc {
        for tool in [
            "/usr/sbin/krb5kdc",
            "/usr/sbin/kdb5_util",
            "/usr/sbin/kadmin.local",
        ] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing (scripts/install-test-deps installs krb5-kdc and krb5-admin-server)"
            );
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let krb5_conf = d.join("krb5.conf");
        std::fs::write(d.join("kadm5.acl"), "").expect("acl");
        let mut attempts = 0;
        let (port, child) = loop {
            attempts += 1;
            let port = free_port();
            std::fs::write(
                d.join("kdc.conf"),
                format!(
                    "[kdcdefaults]\n  kdc_listen = 127.0.0.1:{port}\n  kdc_tcp_listen = 127.0.0.1:{port}\n\
                     [realms]\n  {REALM} = {{\n    database_name = {d}/principal\n    key_stash_file = {d}/stash\n    acl_file = {d}/kadm5.acl\n    max_life = 10h\n    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal\n  }}\n\
                     [logging]\n  kdc = FILE:{d}/kdc.log\n",
                    d = d.display()
                ),
            )
            .expect("kdc.conf");
            std::fs::write(&krb5_conf, krb5_conf_text(port, true)).expect("krb5.conf");
            let kdc = |cmd: &mut Command| {
                cmd.env("KRB5_KDC_PROFILE", d.join("kdc.conf"))
                    .env("KRB5_CONFIG", &krb5_conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            };
            if !d.join("principal").exists() {
                let mut create = Command::new("kdb5_util");
                create.args(["create", "-s", "-r", REALM, "-P", "master-key-for-tests"]);
                kdc(&mut create);
                assert!(
                    create.status().expect("kdb5_util runs").success(),
                    "kdb5_util create failed"
                );
            }
            let _ = std::fs::remove_file(d.join("kdc.log"));
            let mut daemon = Command::new("krb5kdc");
            daemon.args(["-n", "-P"]).arg(d.join("krb5kdc.pid"));
            kdc(&mut daemon);
            let mut child = Reaped::spawn(&mut daemon).expect("krb5kdc starts");
            // Ready when its own log says so; a KDC that could not bind says so and exits.
            let up = wait_until(Duration::from_secs(20), || {
                let log = std::fs::read_to_string(d.join("kdc.log")).unwrap_or_default();
                let state = if log.contains("commencing operation") {
                    Ok(true)
                } else if child.0.try_wait().ok().flatten().is_some() {
                    Ok(false)
                } else {
                    Err(format!("the KDC is not up yet; kdc.log:\n{log}"))
                };
                async move { state }
            })
            .await;
            if up {
                break (port, child);
            }
            let log = std::fs::read_to_string(d.join("kdc.log")).unwrap_or_default();
            assert!(attempts < 3, "the KDC did not start:\n{log}");
        };
        Kdc {
            port,
            krb5_conf,
            dir,
            _child: child,
        }
    }

    /// A user principal that must pre-authenticate (as every AD account does), so that a
    /// wrong password is a `PREAUTH_FAILED` the KDC logs.
    pub fn add_user(&self, name: &str, password: &str) {
        self.admin(&format!("addprinc +requires_preauth -pw {password} {name}"));
    }

    /// Runs a `kadmin.local` query against this KDC's database (`modprinc …`, `getprinc …`),
    /// returning what it printed.
    pub fn admin(&self, query: &str) -> String {
        let out = Command::new("kadmin.local")
            .args(["-q", query])
            .env("KRB5_KDC_PROFILE", self.dir.path().join("kdc.conf"))
            .env("KRB5_CONFIG", &self.krb5_conf)
            .output()
            .expect("kadmin.local runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // kadmin.local exits 0 on most failures and says "... while ..." instead.
        assert!(
            out.status.success() && !stderr.contains("while "),
            "kadmin.local -q {query:?}: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A user principal with a random key, written to a client keytab at `keytab`.
    pub fn add_keytab_user(&self, name: &str, keytab: &Path) {
        self.admin(&format!("addprinc +requires_preauth -randkey {name}"));
        self.admin(&format!("ktadd -k {} {name}", keytab.display()));
    }

    /// A lockout policy on `name`, as a domain has: `maxfailure` bad passwords within 30 minutes
    /// lock the account for an hour.
    pub fn lockout(&self, name: &str, maxfailure: u32) {
        self.admin(&format!(
            "addpol -maxfailure {maxfailure} -failurecountinterval \"30 minutes\" -lockoutduration \"1 hour\" lockout-{name}"
        ));
        self.admin(&format!("modprinc -policy lockout-{name} {name}"));
    }

    /// The KDC's count of `name`'s failed attempts, and whether it is locked, as `getprinc`
    /// prints them.
    pub fn failures(&self, name: &str) -> (u32, bool) {
        let text = self.admin(&format!("getprinc {name}"));
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix("Failed password attempts: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        // A locked principal shows its lockout in getprinc's "Last failed authentication" and
        // refuses kinit; the count reaching the policy's maximum is the lock.
        let policy_max = text
            .lines()
            .find_map(|l| l.strip_prefix("Policy: "))
            .map(|p| self.admin(&format!("getpol {}", p.trim())))
            .and_then(|pol| {
                pol.lines()
                    .find_map(|l| l.strip_prefix("Maximum password failures before lockout: "))
                    .and_then(|n| n.trim().parse::<u32>().ok())
            })
            .unwrap_or(0);
        (count, policy_max > 0 && count >= policy_max)
    }

    /// Gives `name` a new random key (a password changed at the domain): keytabs made before
    /// are stale.
    pub fn rotate_key(&self, name: &str) {
        self.admin(&format!("cpw -randkey {name}"));
    }

    /// Writes `name`'s current key to `keytab` without changing it (what `adcli`, `msktutil`
    /// or an administrator's `ktadd -norandkey` leaves after a rotation).
    pub fn export_key(&self, name: &str, keytab: &Path) {
        self.admin(&format!("ktadd -k {} -norandkey {name}", keytab.display()));
    }

    /// Stops the KDC answering (SIGSTOP) or lets it answer again (SIGCONT).
    pub fn pause(&self, paused: bool) {
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &self._child.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// A service principal (`HTTP/parent.test`) and its keytab.
    pub fn add_service(&self, principal: &str, keytab: &Path) {
        self.admin(&format!("addprinc -randkey {principal}"));
        self.admin(&format!("ktadd -k {} {principal}", keytab.display()));
    }

    /// A `krb5.conf` for this KDC where the client does not correct its clock from the KDC's
    /// (`kdc_timesync = 0`): a skewed clock then shows.
    pub fn strict_clock_conf(&self) -> PathBuf {
        let path = self.dir.path().join("krb5-strict.conf");
        std::fs::write(&path, krb5_conf_text(self.port, false)).expect("krb5.conf");
        path
    }

    /// A `krb5.conf` pointing at a KDC that is not there.
    pub fn unreachable_conf(&self) -> PathBuf {
        let path = self.dir.path().join("krb5-unreachable.conf");
        let closed = free_port();
        std::fs::write(&path, krb5_conf_text(closed, true)).expect("krb5.conf");
        path
    }

    /// The KDC's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kdc.log")).unwrap_or_default()
    }

    /// Pre-authentication failures the KDC saw (each counts toward an AD lockout).
    pub fn preauth_failures(&self) -> usize {
        self.log().matches("PREAUTH_FAILED").count()
    }

    /// Service tickets issued for `principal` (`HTTP/parent.test`).
    pub fn tickets_issued_for(&self, principal: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("TGS_REQ")
                    && l.contains("ISSUE")
                    && l.contains(&format!("for {principal}@"))
            })
            .count()
    }

    /// Initial tickets (AS exchanges) issued to `principal` (`svc-covotem`).
    pub fn tgts_issued_to(&self, principal: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("AS_REQ") && l.contains("ISSUE") && l.contains(&format!(" {principal}@"))
            })
            .count()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn krb5_conf_text(port: u16, timesync: bool) -> String {
    format!(
        "[libdefaults]\n  default_realm = {REALM}\n  dns_lookup_kdc = false\n  dns_lookup_realm = false\n  \
         rdns = false\n  dns_canonicalize_hostname = false\n  kdc_timesync = {}\n  max_retries = 1\n\
         [realms]\n  {REALM} = {{\n    kdc = 127.0.0.1:{port}\n  }}\n\
         [domain_realm]\n  .test = {REALM}\n",
        u8::from(timesync)
    )
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn write_world_readable(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    set_mode(path, 0o644);
}
