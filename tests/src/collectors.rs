//! Real audit collectors for the forwarding suites: rsyslog (imtcp plain and with its gtls
//! driver, imrelp plain and over TLS with client certificates, imudp) and syslog-ng (its
//! syslog() source over TLS), on loopback, with certificates made by the test. Each input
//! writes what it received twice: as the collector writes syslog lines, and as its own
//! parsers (RFC 5424 structured data, JSON) understood it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::harness::{free_port, wait_until, Reaped};

/// A CA, the collector's certificate (`collector.test` and 127.0.0.1), Passerelle's client
/// certificate (`passerelle.test`), and another CA that signed neither.
pub struct Pki {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let ca = |name: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).expect("CA");
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("Passerelle test SOC CA");
        let (other, _) = ca("Another CA");
        let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose, ip: bool| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
            if ip {
                params
                    .subject_alt_names
                    .push(SanType::IpAddress([127, 0, 0, 1].into()));
            }
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![purpose];
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("leaf");
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) =
            leaf("collector.test", ExtendedKeyUsagePurpose::ServerAuth, true);
        let (client_pem, client_key) = leaf(
            "passerelle.test",
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        );
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write PKI file");
            path
        };
        Pki {
            ca: write("ca.pem", &ca_cert.pem()),
            other_ca: write("other-ca.pem", &other.pem()),
            server_cert: write("collector.pem", &server_pem),
            server_key: write("collector.key", &server_key),
            client_cert: write("passerelle.pem", &client_pem),
            client_key: write("passerelle.key", &client_key),
        }
    }
}

/// One of rsyslog's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// imtcp, plain.
    Tcp,
    /// imtcp with the gtls driver (RFC 5425).
    Tls,
    /// imrelp, plain.
    Relp,
    /// imrelp over TLS, asking for a client certificate from our CA.
    RelpTls,
    /// imudp on ::1.
    Udp6,
}

impl Input {
    fn name(self) -> &'static str {
        match self {
            Input::Tcp => "tcp",
            Input::Tls => "tls",
            Input::Relp => "relp",
            Input::RelpTls => "relp-tls",
            Input::Udp6 => "udp6",
        }
    }
}

/// An rsyslogd with one or more inputs, each on its own port and files.
pub struct Rsyslog {
    dir: TempDir,
    pub ports: Vec<(Input, u16)>,
    child: Option<Reaped>,
}

impl Rsyslog {
    pub async fn start(inputs: &[Input], pki: &Pki) -> Rsyslog {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = inputs.iter().map(|&i| (i, free_port())).collect();
        let mut rsyslog = Rsyslog {
            dir,
            ports,
            child: None,
        };
        rsyslog.write_conf(pki);
        rsyslog.restart().await;
        rsyslog
    }

    /// rsyslog running `deploy/collectors/rsyslog-passerelle.conf` as shipped, but for its
    /// paths, its port (on loopback) and the SIEM's address (`siem`: a TLS syslog listener
    /// with the collector's certificate).
    pub async fn deployed(pki: &Pki, siem: u16) -> Rsyslog {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let port = free_port();
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/collectors/rsyslog-passerelle.conf"),
        )
        .expect("the shipped rsyslog configuration");
        std::fs::create_dir_all(d.join("spool")).expect("spool dir");
        let conf = replace_all(
            &shipped,
            &[
                ("/var/spool/rsyslog", &d.join("spool").display().to_string()),
                ("/etc/rsyslog.d/tls/ca.pem", &pki.ca.display().to_string()),
                (
                    "/etc/rsyslog.d/tls/collector.pem",
                    &pki.server_cert.display().to_string(),
                ),
                (
                    "/etc/rsyslog.d/tls/collector.key",
                    &pki.server_key.display().to_string(),
                ),
                (
                    "port=\"2514\"",
                    &format!("address=\"127.0.0.1\" port=\"{port}\""),
                ),
                ("passerelle.chu.local", "passerelle.test"),
                (
                    "/var/log/passerelle",
                    &d.join("hosts").display().to_string(),
                ),
                (
                    "target=\"siem.chu.local\" port=\"6514\"",
                    &format!("target=\"127.0.0.1\" port=\"{siem}\""),
                ),
                (
                    "streamDriverPermittedPeers=\"siem.chu.local\"",
                    "streamDriverPermittedPeers=\"collector.test\"",
                ),
            ],
        );
        std::fs::write(d.join("rsyslog.conf"), conf).expect("write rsyslog.conf");
        let mut rsyslog = Rsyslog {
            dir,
            ports: vec![(Input::RelpTls, port)],
            child: None,
        };
        rsyslog.restart().await;
        rsyslog
    }

    /// The files a deployed collector keeps, one per jump host.
    pub fn host_files(&self) -> Vec<PathBuf> {
        host_files(&self.dir.path().join("hosts"))
    }

    fn write_conf(&self, pki: &Pki) {
        let d = self.dir.path().display();
        let mut conf = format!(
            "global(workDirectory=\"{d}\" maxMessageSize=\"64k\"\n  \
               defaultNetstreamDriverCAFile=\"{ca}\" defaultNetstreamDriverCertFile=\"{cert}\" \
               defaultNetstreamDriverKeyFile=\"{key}\")\n\
             module(load=\"mmjsonparse\")\nmodule(load=\"mmpstrucdata\")\n\
             template(name=\"parsed\" type=\"string\" string=\"%timegenerated:::date-rfc3339% %$!all-json%\\n\")\n",
            ca = pki.ca.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        );
        let kinds: Vec<Input> = self.ports.iter().map(|(i, _)| *i).collect();
        if kinds.iter().any(|k| matches!(k, Input::Tcp | Input::Tls)) {
            conf.push_str("module(load=\"imtcp\" maxSessions=\"50\")\n");
        }
        if kinds
            .iter()
            .any(|k| matches!(k, Input::Relp | Input::RelpTls))
        {
            conf.push_str("module(load=\"imrelp\")\n");
        }
        if kinds.contains(&Input::Udp6) {
            conf.push_str("module(load=\"imudp\")\n");
        }
        for (input, port) in &self.ports {
            let name = input.name();
            // A disk queue in front of the ruleset: what rsyslog acknowledged over RELP is on
            // disk, so a collector killed (SIGKILL) loses none of it.
            conf.push_str(&format!(
                "ruleset(name=\"{name}\" queue.type=\"Disk\" queue.filename=\"{name}-in\" \
                   queue.checkpointInterval=\"1\" queue.syncQueueFiles=\"on\") {{\n  \
                   action(type=\"omfile\" file=\"{d}/{name}.received.log\" template=\"RSYSLOG_SyslogProtocol23Format\")\n  \
                   action(type=\"mmpstrucdata\")\n  \
                   action(type=\"mmjsonparse\" cookie=\"\")\n  \
                   action(type=\"omfile\" file=\"{d}/{name}.parsed.log\" template=\"parsed\")\n}}\n"
            ));
            conf.push_str(&match input {
                Input::Tcp => format!(
                    "input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"{name}\")\n"
                ),
                Input::Tls => format!(
                    "input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"{name}\" \
                       streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\")\n"
                ),
                Input::Relp => format!(
                    "input(type=\"imrelp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"{name}\")\n"
                ),
                Input::RelpTls => format!(
                    "input(type=\"imrelp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"{name}\" tls=\"on\" \
                       tls.caCert=\"{ca}\" tls.myCert=\"{cert}\" tls.myPrivKey=\"{key}\" \
                       tls.authMode=\"name\" tls.permittedPeer=[\"passerelle.test\"])\n",
                    ca = pki.ca.display(),
                    cert = pki.server_cert.display(),
                    key = pki.server_key.display(),
                ),
                Input::Udp6 => format!(
                    "input(type=\"imudp\" address=\"::1\" port=\"{port}\" ruleset=\"{name}\")\n"
                ),
            });
        }
        std::fs::write(self.dir.path().join("rsyslog.conf"), conf).expect("write rsyslog.conf");
    }

    /// Starts rsyslogd (again, after [`Rsyslog::kill`]) on the same ports, and waits until
    /// each TCP input accepts connections.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "rsyslog is running");
        let d = self.dir.path();
        let mut cmd = Command::new("/usr/sbin/rsyslogd");
        cmd.arg("-n")
            .arg("-f")
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(d.join("rsyslog.log"))
                    .expect("log file"),
            );
        let mut child = Reaped::spawn(&mut cmd).expect("rsyslogd starts");
        for (input, port) in &self.ports {
            if *input == Input::Udp6 {
                continue;
            }
            listening(&mut child, *port, &d.join("rsyslog.log")).await;
        }
        self.child = Some(child);
    }

    pub fn port(&self, input: Input) -> u16 {
        self.ports
            .iter()
            .find(|(i, _)| *i == input)
            .map(|(_, p)| *p)
            .expect("an input of that kind")
    }

    /// SIGKILL: what it had not written is gone with it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::harness::kill_group(&mut child.0);
        }
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").0.id();
        let ok = Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }

    /// The file of syslog lines as rsyslog wrote them for `input`.
    pub fn received_path(&self, input: Input) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.received.log", input.name()))
    }

    pub fn received(&self, input: Input) -> Vec<String> {
        std::fs::read_to_string(self.received_path(input))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// What rsyslog's parsers made of each message: when it was received, and the JSON of its
    /// structured data (`rfc5424-sd`) and of its message.
    pub fn parsed(&self, input: Input) -> Vec<(String, Value)> {
        parsed_lines(&self.dir.path().join(format!("{}.parsed.log", input.name())))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslog.log")).unwrap_or_default()
    }
}

/// Waits until the collector accepts connections on `port`; a collector that exited fails
/// the test with its log.
async fn listening(child: &mut Reaped, port: u16, log: &Path) {
    wait_until(Duration::from_secs(20), || {
        let exited = child.0.try_wait().ok().flatten();
        let log = std::fs::read_to_string(log).unwrap_or_default();
        async move {
            if let Some(status) = exited {
                panic!("the collector exited ({status}):\n{log}");
            }
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "the collector does not listen on {port}: {e}\n{log}"
                )),
            }
        }
    })
    .await;
}

/// `text` with each `(from, to)` replaced; a `from` not found is a shipped file that changed
/// under the test.
fn replace_all(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in pairs {
        assert!(
            out.contains(from),
            "{from:?} is no longer in the shipped configuration"
        );
        out = out.replace(from, to);
    }
    out
}

fn host_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn parsed_lines(path: &Path) -> Vec<(String, Value)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (at, json) = l.split_once(' ')?;
            Some((at.to_string(), serde_json::from_str(json).ok()?))
        })
        .collect()
}

/// syslog-ng with its syslog() source over TLS (octet-counted RFC 5424), unpacked by
/// scripts/install-test-deps where the package would conflict with rsyslog.
pub struct SyslogNg {
    dir: TempDir,
    pub port: u16,
    _child: Reaped,
}

const SYSLOG_NG: &str = "/opt/passerelle-test-peers/syslog-ng";

impl SyslogNg {
    pub async fn start_tls(pki: &Pki) -> SyslogNg {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let port = free_port();
        let conf = format!(
            "@version: 3.38\n\
             options {{ keep-hostname(yes); stats_freq(0); }};\n\
             source s {{ syslog(ip(\"127.0.0.1\") port({port}) transport(\"tls\") \
               tls(key-file(\"{key}\") cert-file(\"{cert}\") ca-file(\"{ca}\") peer-verify(optional-untrusted))); }};\n\
             parser p {{ json-parser(prefix(\".json.\")); }};\n\
             destination received {{ file(\"{d}/received.log\" template(\"$ISODATE $HOST $PROGRAM $MSGID $SDATA $MSG\\n\")); }};\n\
             destination parsed {{ file(\"{d}/parsed.log\" template(\"$R_ISODATE $(format-json --scope rfc5424 --scope dot-nv-pairs)\\n\")); }};\n\
             log {{ source(s); destination(received); parser(p); destination(parsed); }};\n",
            key = pki.server_key.display(),
            cert = pki.server_cert.display(),
            ca = pki.ca.display(),
            d = d.display(),
        );
        SyslogNg::run(dir, port, &conf).await
    }

    /// syslog-ng running `deploy/collectors/syslog-ng-passerelle.conf` as shipped, but for its
    /// paths, its port (on loopback) and the SIEM's port (`siem`: a TLS syslog listener on
    /// 127.0.0.1 with the collector's certificate).
    pub async fn deployed(pki: &Pki, siem: u16) -> SyslogNg {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let port = free_port();
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/collectors/syslog-ng-passerelle.conf"),
        )
        .expect("the shipped syslog-ng configuration");
        std::fs::create_dir_all(d.join("buffer")).expect("buffer dir");
        let conf = replace_all(
            &shipped,
            &[
                ("/etc/syslog-ng/tls/ca.pem", &pki.ca.display().to_string()),
                (
                    "/etc/syslog-ng/tls/collector.pem",
                    &pki.server_cert.display().to_string(),
                ),
                (
                    "/etc/syslog-ng/tls/collector.key",
                    &pki.server_key.display().to_string(),
                ),
                (
                    "syslog(port(6514)",
                    &format!("syslog(ip(\"127.0.0.1\") port({port})"),
                ),
                (
                    "/var/log/passerelle",
                    &d.join("hosts").display().to_string(),
                ),
                (
                    "syslog(\"siem.chu.local\" port(6514)",
                    &format!("syslog(\"127.0.0.1\" port({siem})"),
                ),
                (
                    "/var/lib/syslog-ng",
                    &d.join("buffer").display().to_string(),
                ),
            ],
        );
        SyslogNg::run(dir, port, &conf).await
    }

    async fn run(dir: TempDir, port: u16, conf: &str) -> SyslogNg {
        let root = Path::new(SYSLOG_NG);
        assert!(
            root.join("usr/sbin/syslog-ng").exists(),
            "syslog-ng is unpacked in {SYSLOG_NG} (scripts/install-test-deps)"
        );
        let d = dir.path();
        std::fs::write(d.join("syslog-ng.conf"), conf).expect("write syslog-ng.conf");
        let mut cmd = Command::new(root.join("usr/sbin/syslog-ng"));
        cmd.env("LD_LIBRARY_PATH", root.join("usr/lib/syslog-ng"))
            .arg("-F")
            .arg("--no-caps")
            .arg("-f")
            .arg(d.join("syslog-ng.conf"))
            .arg(format!(
                "--module-path={}",
                root.join("usr/lib/syslog-ng/3.38").display()
            ))
            .arg(format!("--persist-file={}", d.join("persist").display()))
            .arg(format!("--control={}", d.join("ctl").display()))
            .arg(format!("--pidfile={}", d.join("pid").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("syslog-ng.log")).expect("log"));
        let mut child = Reaped::spawn(&mut cmd).expect("syslog-ng starts");
        listening(&mut child, port, &d.join("syslog-ng.log")).await;
        SyslogNg {
            dir,
            port,
            _child: child,
        }
    }

    /// The files a deployed collector keeps, one per jump host.
    pub fn host_files(&self) -> Vec<PathBuf> {
        host_files(&self.dir.path().join("hosts"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("syslog-ng.log")).unwrap_or_default()
    }

    pub fn received_path(&self) -> PathBuf {
        self.dir.path().join("received.log")
    }

    /// What syslog-ng's parsers made of each message: its `.SDATA.*` and `.json.*`.
    pub fn parsed(&self) -> Vec<(String, Value)> {
        parsed_lines(&self.dir.path().join("parsed.log"))
    }
}
