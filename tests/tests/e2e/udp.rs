//! The visio's UDP routed through the jump host: `passerelle firewall` loaded into real
//! nftables in network namespaces (a workstation, the jump host, the outside with UDP echo
//! peers), addresses from 198.18.0.0/15 only.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use passerelle_tests::harness::{passerelle_bin, passerelle_ok, wait_until_blocking, Reaped};
use passerelle_tests::netns::{self, Netns};

/// The workstation, the jump host and the outside, with the ruleset of `config` loaded in
/// the jump host and echo peers outside.
/// The echo peer ends before the namespaces go: fields drop in order.
struct Site {
    _echo: Reaped,
    ws: Netns,
    jump: Netns,
    out: Netns,
    dir: tempfile::TempDir,
    config: PathBuf,
}

const CONFIG: &str = r#"profile = "none"
[clients]
allow = ["198.18.0.0/26"]
[[flows]]
id = "media"
ips = ["198.19.0.2"]
udp_ports = [3478]
dscp = "AF41"
source = "test: the visio's media"
"#;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/udp.py")
}

impl Site {
    /// `None` (said on stderr) where namespaces are not permitted.
    fn build(config: &str) -> Option<Site> {
        if let Some(why) = netns::unavailable() {
            passerelle_tests::harness::skip(&why);
            return None;
        }
        let ws = Netns::new("ws");
        let jump = Netns::new("jump");
        let out = Netns::new("out");
        let (ws_if, _) = ws.link(&jump, "198.18.0.2/24", "198.18.0.1/24");
        ws.sh(&format!("ip addr add 198.18.0.66/24 dev {ws_if}"));
        ws.sh("ip route add default via 198.18.0.1");
        let (_, out_if) = jump.link(&out, "198.19.0.1/24", "198.19.0.2/24");
        out.sh(&format!("ip addr add 198.19.0.3/24 dev {out_if}"));
        jump.sh("sysctl -qw net.ipv4.ip_forward=1");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("echo.log");
        let mut echo = Reaped::spawn(
            out.command("python3")
                .arg(script())
                .args([
                    "echo",
                    "198.19.0.2:3478",
                    "198.19.0.2:9999",
                    "198.19.0.3:3478",
                ])
                .arg(&log)
                .stdout(Stdio::piped()),
        )
        .unwrap();
        let mut ready = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(echo.0.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready");
        let path = dir.path().join("passerelle.toml");
        std::fs::write(&path, config).unwrap();
        let site = Site {
            ws,
            jump,
            out,
            dir,
            _echo: echo,
            config: path,
        };
        site.apply();
        Some(site)
    }

    /// Renders the ruleset and loads it in the jump host.
    fn apply(&self) {
        self.apply_with(&[]);
    }

    /// Renders the ruleset with `extra` arguments (`--input`) and loads it in the jump host.
    fn apply_with(&self, extra: &[&str]) {
        let rules = self.dir.path().join("passerelle.nft");
        let mut args = vec![
            OsStr::new("firewall"),
            OsStr::new("--config"),
            self.config.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let out = passerelle_ok(args);
        std::fs::write(&rules, &out.stdout).unwrap();
        self.jump.sh(&format!("nft -f {}", rules.display()));
    }

    /// Sends from the workstation's `src` (source port `port`) and returns the answer.
    fn exchange(&self, src: &str, port: u16, dst: &str, payload: &str) -> String {
        let out = self
            .ws
            .command("python3")
            .arg(script())
            .args([
                "send",
                src,
                dst,
                payload,
                "--port",
                &port.to_string(),
                "--wait",
                "5",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Sends without waiting for an answer (one that should be dropped).
    fn send(&self, src: &str, dst: &str, payload: &str) {
        let status = self
            .ws
            .command("python3")
            .arg(script())
            .args(["send", src, dst, payload])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// (packets, bytes) of a named counter of the table.
    fn counter(&self, name: &str) -> (u64, u64) {
        let text = self
            .jump
            .sh(&format!("nft list counter inet passerelle {name}"));
        let field = |key: &str| {
            text.split_whitespace()
                .skip_while(|w| *w != key)
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("packets"), field("bytes"))
    }

    fn echo_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("echo.log")).unwrap_or_default()
    }
}

#[test]
fn the_ruleset_routes_exactly_the_udp_flows_and_survives_reapplying() {
    let Some(site) = Site::build(CONFIG) else {
        return;
    };
    // The flow: answered, masqueraded (the outside has no route to the workstations), marked.
    let answer = site.exchange("198.18.0.2", 40000, "198.19.0.2:3478", "one");
    assert!(
        answer.starts_with("to 198.19.0.2:3478 from 198.19.0.1:")
            && answer.ends_with("tos 0x88: one"),
        "{answer}\n{}\n{}\n{}\n{}\n{}",
        site.echo_log(),
        site.jump.sh("cat /proc/sys/net/ipv4/conf/*/rp_filter | tr '\n' ' '; nft list ruleset | grep -c chain; ip neigh; ip -s link"),
        site.jump.sh("nft list ruleset; ip addr; ip route"),
        site.ws.sh("ip addr; ip route"),
        site.out.sh("ip addr; ip route")
    );
    let nat_port = answer
        .split(':')
        .nth(2)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let (packets, _) = site.counter("udp_media");
    assert_eq!(packets, 2, "the request and its answer");

    // Another port, another address, a workstation outside clients.allow: dropped, counted.
    site.send("198.18.0.2", "198.19.0.2:9999", "other-port");
    site.send("198.18.0.2", "198.19.0.3:3478", "other-address");
    site.send("198.18.0.66", "198.19.0.2:3478", "not-a-client");
    wait_until_blocking(Duration::from_secs(10), || {
        let refused = site.counter("refused");
        match refused.0 >= 3 {
            true => Ok(()),
            false => Err(format!("refused counter: {refused:?}")),
        }
    });
    // The refused counter saw all three: none reached the outside.
    let log = site.echo_log();
    for payload in ["other-port", "other-address", "not-a-client"] {
        assert!(!log.contains(payload), "{payload} went through:\n{log}");
    }

    // Loading the ruleset again replaces the table; the flow in progress keeps its mapping.
    site.apply();
    let again = site.exchange("198.18.0.2", 40000, "198.19.0.2:3478", "two");
    assert!(again.ends_with("tos 0x88: two"), "{again}");
    assert_eq!(
        again
            .split(':')
            .nth(2)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap(),
        nat_port,
        "the same conntrack entry carried it"
    );
    assert_eq!(
        site.counter("udp_media").0,
        2,
        "the counters restart with the table"
    );

    // doctor, in the jump host: forwarding on and the table the one rendered now; then the
    // flow table changes and the loaded table no longer matches it.
    let doctor = || -> Vec<serde_json::Value> {
        let out = site
            .jump
            .command(passerelle_bin().to_str().unwrap())
            .args(["doctor", "--json", "--config"])
            .arg(&site.config)
            .output()
            .unwrap();
        let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        checks.into_iter().filter(|c| c["check"] == "udp").collect()
    };
    let state = |checks: &[serde_json::Value], target: &str| {
        checks
            .iter()
            .find(|c| c["target"] == target)
            .map(|c| c["state"].clone())
    };
    let udp = doctor();
    assert_eq!(
        state(&udp, "table inet passerelle"),
        Some("pass".into()),
        "{udp:#?}"
    );
    assert_eq!(
        state(&udp, "ip forwarding"),
        Some("pass".into()),
        "{udp:#?}"
    );
    std::fs::write(&site.config, CONFIG.replace("[3478]", "[3478, 3479]")).unwrap();
    let udp = doctor();
    assert_eq!(
        state(&udp, "table inet passerelle"),
        Some("fail".into()),
        "{udp:#?}"
    );
}

/// `firewall --input` loaded into nftables in the jump host: the proxy port answers the
/// workstations of `clients.allow` only, the admin port the addresses of `admin.allow` only.
#[test]
fn the_input_rules_admit_the_workstations_to_the_proxy_and_the_admins_to_the_admin_port() {
    let config = format!(
        "{CONFIG}[listen]\nproxy = [\"198.18.0.1:3128\"]\nadmin = \"198.18.0.1:9090\"\n\
         [admin]\nallow = [\"198.18.0.66/32\"]\n"
    );
    let Some(site) = Site::build(&config) else {
        return;
    };
    let log = site.dir.path().join("passerelle.log");
    let mut gateway = Reaped::spawn(
        site.jump
            .command(passerelle_bin().to_str().unwrap())
            .args(["run", "--config"])
            .arg(&site.config)
            .env("PASSERELLE__AUDIT__SINK", "file")
            .env(
                "PASSERELLE__AUDIT__PATH",
                site.dir.path().join("audit.jsonl"),
            )
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    wait_until_blocking(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Ok(Some(status)) = gateway.0.try_wait() {
            panic!("passerelle exited ({status}): {text}");
        }
        match text.contains("admin on") {
            true => Ok(()),
            false => Err(format!("passerelle did not start: {text}")),
        }
    });
    site.apply_with(&["--input"]);
    // A TCP connection from `src` to the jump host's `port`: "open", or nothing when the
    // SYN was dropped.
    let reach = |src: &str, port: u16| {
        let out = site
            .ws
            .command("python3")
            .args([
                "-c",
                "import socket, sys\n\
                 s = socket.socket(); s.settimeout(2); s.bind((sys.argv[1], 0))\n\
                 try:\n    s.connect(('198.18.0.1', int(sys.argv[2]))); print('open')\n\
                 except OSError as e:\n    print(type(e).__name__)\n",
                src,
                &port.to_string(),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        reach("198.18.0.2", 3128),
        "open",
        "a workstation reaches the proxy"
    );
    assert_eq!(
        reach("198.18.0.66", 3128),
        "TimeoutError",
        "a non-client is dropped"
    );
    assert_eq!(
        reach("198.18.0.66", 9090),
        "open",
        "an admin reaches the admin port"
    );
    assert_eq!(
        reach("198.18.0.2", 9090),
        "TimeoutError",
        "a workstation is kept off it"
    );
    let ruleset = site.jump.sh("nft list chain inet passerelle input");
    assert!(ruleset.contains("tcp dport 9090"), "{ruleset}");
}

/// With `udp.audit`, Passerelle in the jump host follows conntrack and NFLOG: a record per
/// routed flow (client, address, port, flow, bytes each way, duration) when it ends, a deny
/// record per refused attempt, and the flow in the metrics.
#[test]
fn the_routed_flows_and_the_refusals_are_audited() {
    let config = format!("{CONFIG}[udp]\naudit = true\n");
    let Some(site) = Site::build(&config) else {
        return;
    };
    // Counters on the entries, and UDP entries that end within seconds.
    site.jump.sh(
        "sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_udp_timeout=1 \
         net.netfilter.nf_conntrack_udp_timeout_stream=2",
    );
    // conntrack-tools reads the same kernel events as the gateway, with its own parser: what
    // the gateway records must be what conntrack -E prints.
    let events = site.dir.path().join("conntrack-events.txt");
    let _conntrack = Reaped::spawn(
        site.jump
            .command("conntrack")
            .args(["-E", "-e", "DESTROY", "-p", "udp", "-o", "id"])
            .stdout(std::fs::File::create(&events).unwrap())
            .stderr(Stdio::null()),
    )
    .expect("conntrack runs (scripts/install-test-deps installs it)");
    // Subscribed once a netfilter netlink socket (protocol 12) with groups shows in the
    // namespace.
    wait_until_blocking(Duration::from_secs(20), || {
        let sockets = site.jump.sh("cat /proc/net/netlink");
        let subscribed = sockets.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"12") && f.get(3).is_some_and(|g| *g != "00000000")
        });
        match subscribed {
            true => Ok(()),
            false => Err(format!("conntrack -E is not subscribed yet:\n{sockets}")),
        }
    });
    let audit = site.dir.path().join("audit.jsonl");
    let log = site.dir.path().join("passerelle.log");
    let mut gateway = Reaped::spawn(
        site.jump
            .command(passerelle_bin().to_str().unwrap())
            .args(["run", "--config"])
            .arg(&site.config)
            .env("PASSERELLE__LISTEN__PROXY", "127.0.0.1:0")
            .env("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")
            .env("PASSERELLE__AUDIT__SINK", "file")
            .env("PASSERELLE__AUDIT__PATH", &audit)
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    wait_until_blocking(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Ok(Some(status)) = gateway.0.try_wait() {
            panic!("passerelle exited ({status}): {text}");
        }
        match text.contains("listening on") {
            true => Ok(()),
            false => Err(format!("passerelle did not start: {text}")),
        }
    });
    let answer = site.exchange("198.18.0.2", 40100, "198.19.0.2:3478", "audited");
    assert!(answer.ends_with(": audited"), "{answer}");
    site.send("198.18.0.2", "198.19.0.2:9999", "refused");

    let records = |within: Duration, done: &dyn Fn(&[serde_json::Value]) -> bool| {
        wait_until_blocking(within, || {
            let records = passerelle_tests::harness::read_audit(&audit);
            match done(&records) {
                true => Ok(records),
                false => Err(format!("records so far: {records:#?}")),
            }
        })
    };
    let all = records(Duration::from_secs(90), &|r| {
        r.iter()
            .any(|e| e["decision"] == "allow" && e["event"] == "udp")
            && r.iter()
                .any(|e| e["decision"] == "deny" && e["event"] == "udp")
    });
    drop(gateway);
    let flow = all.iter().find(|e| e["decision"] == "allow").unwrap();
    assert_eq!(flow["scheme"], "udp");
    assert_eq!(flow["client"], "198.18.0.2:40100");
    assert_eq!(flow["host"], "198.19.0.2");
    assert_eq!(flow["port"], 3478);
    assert_eq!(flow["flow"], "media");
    assert!(flow["bytes_up"].as_u64().unwrap() >= 7 + 28, "{flow}");
    assert!(
        flow["bytes_down"].as_u64().unwrap() > flow["bytes_up"].as_u64().unwrap(),
        "{flow}"
    );
    assert!(flow["duration_ms"].as_u64().unwrap() > 0, "{flow}");
    // The same entry's end as conntrack -E printed it: original tuple, then the reply's, each
    // with its packets and bytes.
    let destroyed = wait_until_blocking(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("src=198.18.0.2") && l.contains("sport=40100"))
            .map(str::to_string)
            .ok_or_else(|| format!("no DESTROY event for the flow in: {text}"))
    });
    let fields = |key: &str| -> Vec<String> {
        destroyed
            .split_whitespace()
            .filter_map(|w| w.strip_prefix(&format!("{key}=")).map(str::to_string))
            .collect()
    };
    assert_eq!(fields("dst")[0], "198.19.0.2", "{destroyed}");
    assert_eq!(fields("dport")[0], "3478", "{destroyed}");
    assert_eq!(
        fields("bytes"),
        vec![
            flow["bytes_up"].as_u64().unwrap().to_string(),
            flow["bytes_down"].as_u64().unwrap().to_string()
        ],
        "the record's bytes are not the kernel's, as conntrack reads them: {destroyed}\n{flow}"
    );
    let refused = all.iter().find(|e| e["decision"] == "deny").unwrap();
    assert_eq!(refused["reason"], "no_flow");
    assert_eq!(refused["host"], "198.19.0.2");
    assert_eq!(refused["port"], 9999);
    assert_eq!(refused["scheme"], "udp");
    assert!(
        refused["client"]
            .as_str()
            .unwrap()
            .starts_with("198.18.0.2:"),
        "{refused}"
    );
}
