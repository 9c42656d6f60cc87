//! QoS: the DSCP of a marked flow on the wire, both ways, for a forwarded request and a
//! tunnel; an unmarked flow stays best effort; a reload's new mark applies to new connections.
//! Counted by nftables in a network namespace of the test's own (the gateway, curl and the
//! origins on its loopback).

use std::process::Stdio;
use std::time::Duration;

use passerelle_tests::harness::{passerelle_bin, wait_until_blocking, Reaped};
use passerelle_tests::netns::{self, Netns};

const CONFIG: &str = r#"profile = "none"
[[flows]]
id = "visio"
hosts = ["visio.test"]
ports = [18001]
dscp = "AF41"
[[flows]]
id = "plain"
hosts = ["plain.test"]
ports = [18002]
[resolve]
connect_to = ["visio.test:18001=127.0.0.1:18001", "plain.test:18002=127.0.0.1:18002"]
"#;

/// Packets that carry data, by direction and DSCP, counted on the namespace's output hook
/// (the handshake and pure ACKs go before the gateway knows the flow).
const COUNTERS: &str = r#"table inet qos {
	counter to_origin_34 {}
	counter to_origin_46 {}
	counter to_origin_0 {}
	counter to_client_34 {}
	counter to_client_46 {}
	counter to_client_0 {}
	chain out {
		type filter hook output priority filter; policy accept;
		tcp dport { 18001, 18002 } ip length > 64 ip dscp 34 counter name to_origin_34
		tcp sport 3128 ip length > 64 ip dscp 34 counter name to_client_34
		tcp dport { 18001, 18002 } ip length > 64 ip dscp 46 counter name to_origin_46
		tcp sport 3128 ip length > 64 ip dscp 46 counter name to_client_46
		tcp dport { 18001, 18002 } ip length > 64 ip dscp 0 counter name to_origin_0
		tcp sport 3128 ip length > 64 ip dscp 0 counter name to_client_0
	}
}
"#;

/// The processes end (killed and reaped) before the namespace goes: fields drop in order.
struct Running {
    gateway: Reaped,
    _origins: Vec<Reaped>,
    ns: Netns,
    dir: tempfile::TempDir,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("passerelle.log")).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, times: usize) {
        wait_until_blocking(Duration::from_secs(30), || {
            let log = self.log();
            match log.matches(needle).count() >= times {
                true => Ok(()),
                false => Err(format!("no {needle:?}:\n{log}")),
            }
        })
    }

    fn curl(&self, args: &[&str]) -> String {
        let out = self
            .ns
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["-x", "http://127.0.0.1:3128"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Packets counted since the last call, by counter.
    fn counted(&self) -> std::collections::BTreeMap<String, u64> {
        let text = self
            .ns
            .sh("nft list counters table inet qos && nft reset counters table inet qos >/dev/null");
        let mut out = std::collections::BTreeMap::new();
        let mut name = String::new();
        for word in text.split_whitespace().collect::<Vec<_>>().windows(2) {
            match word {
                ["counter", n] => name = n.to_string(),
                ["packets", n] => {
                    out.insert(name.clone(), n.parse().unwrap_or(0));
                }
                _ => {}
            }
        }
        out
    }
}

fn start() -> Option<Running> {
    if let Some(why) = netns::unavailable() {
        passerelle_tests::harness::skip(&why);
        return None;
    }
    let ns = Netns::new("qos");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("qos.nft");
    std::fs::write(&rules, COUNTERS).unwrap();
    ns.sh(&format!("nft -f {}", rules.display()));
    let mut origins = Vec::new();
    for port in ["18001", "18002"] {
        origins.push(
            Reaped::spawn(
                ns.command("python3")
                    .args(["-m", "http.server", "--bind", "127.0.0.1", port])
                    .current_dir(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .unwrap(),
        );
    }
    let config = dir.path().join("passerelle.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let gateway = Reaped::spawn(
        ns.command(passerelle_bin().to_str().unwrap())
            .args(["run", "--config"])
            .arg(&config)
            .env("PASSERELLE__AUDIT__SINK", "file")
            .env("PASSERELLE__AUDIT__PATH", dir.path().join("audit.jsonl"))
            .stderr(std::fs::File::create(dir.path().join("passerelle.log")).unwrap()),
    )
    .unwrap();
    let running = Running {
        ns,
        gateway,
        _origins: origins,
        dir,
    };
    running.wait_log("listening on", 1);
    for port in ["18001", "18002"] {
        wait_until_blocking(Duration::from_secs(20), || {
            let listening = running
                .ns
                .command("bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            match listening {
                true => Ok(()),
                false => Err(format!("the origin on {port} did not start")),
            }
        });
    }
    Some(running)
}

#[test]
fn a_marked_flow_carries_its_dscp_both_ways_and_a_reload_changes_it() {
    let Some(site) = start() else {
        return;
    };
    site.counted();
    // A forwarded request of the marked flow: AF41 (34) toward the origin and the client.
    assert_eq!(site.curl(&["http://visio.test:18001/"]), "200");
    let c = site.counted();
    assert!(c["to_origin_34"] > 0 && c["to_client_34"] > 0, "{c:?}");
    assert_eq!((c["to_origin_0"], c["to_client_0"]), (0, 0), "{c:?}");

    // A tunnel of the marked flow.
    assert_eq!(site.curl(&["-p", "http://visio.test:18001/"]), "200");
    let c = site.counted();
    assert!(c["to_origin_34"] > 0 && c["to_client_34"] > 0, "{c:?}");
    assert_eq!((c["to_origin_0"], c["to_client_0"]), (0, 0), "{c:?}");

    // The unmarked flow: best effort both ways.
    assert_eq!(site.curl(&["http://plain.test:18002/"]), "200");
    assert_eq!(site.curl(&["-p", "http://plain.test:18002/"]), "200");
    let c = site.counted();
    assert!(c["to_origin_0"] > 0 && c["to_client_0"] > 0, "{c:?}");
    assert_eq!((c["to_origin_34"], c["to_client_34"]), (0, 0), "{c:?}");

    // A reload marks the flow EF (46) from its next connection on.
    let config = site.dir.path().join("passerelle.toml");
    std::fs::write(
        &config,
        format!("{CONFIG}[qos]\ndscp = {{ visio = \"EF\" }}\n"),
    )
    .unwrap();
    site.ns.sh(&format!("kill -HUP {}", site.gateway.0.id()));
    site.wait_log("reload.accepted", 1);
    site.counted();
    assert_eq!(site.curl(&["-p", "http://visio.test:18001/"]), "200");
    let c = site.counted();
    assert!(c["to_origin_46"] > 0 && c["to_client_46"] > 0, "{c:?}");
    assert_eq!(c["to_origin_34"] + c["to_client_34"], 0, "{c:?}");
}
