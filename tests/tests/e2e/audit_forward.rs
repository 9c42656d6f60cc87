//! The audit beyond the jump host, against real collectors: rsyslog (TLS syslog, RELP over
//! TLS with a client certificate, plain TCP, UDP over IPv6) and syslog-ng (TLS syslog), fed
//! by the real binary; faults (a collector killed, stopped, away while Passerelle restarts);
//! the SOC schemas checked against their published field lists; tampering named by the
//! anchors the collector holds and by the forward-secure key.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use passerelle_tests::collectors::{Input, Pki, Rsyslog, SyslogNg};
use passerelle_tests::harness::{
    curl, passerelle_bin, pipelined_statuses, read_audit_all, wait_until, Running,
};
use passerelle_tests::schemas::{Ecs, Ocsf};
use serde_json::Value;

/// A forwarder's `[[audit.forward]]` table (after the limits the load needs).
fn forward(to: &str, format: &str, extra: &str) -> String {
    format!("[[audit.forward]]\nto = \"{to}\"\nformat = \"{format}\"\n{extra}\n")
}

/// The loads here come from one client: no per-client rate limit in the way.
const LIMITS: &str = "[limits]\nrequests_per_second = 100000\nburst = 100000\n";

fn tls(pki: &Pki, name: &str, client: bool) -> String {
    let mut s = format!(
        "ca_file = \"{}\"\nserver_name = \"{name}\"\n",
        pki.ca.display()
    );
    if client {
        s.push_str(&format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.client_cert.display(),
            pki.client_key.display()
        ));
    }
    s
}

fn spool(dir: &Path, name: &str) -> String {
    format!("spool_dir = \"{}\"\n", dir.join(name).display())
}

fn proxy_addr(running: &Running) -> SocketAddr {
    running
        .proxy()
        .trim_start_matches("http://")
        .parse()
        .expect("proxy address")
}

/// `n` refused requests on one connection: `n` records.
async fn records_through(running: &Running, n: usize, tag: &str) {
    let request =
        format!("GET http://nowhere.invalid/{tag} HTTP/1.1\r\nHost: nowhere.invalid\r\n\r\n");
    let statuses = pipelined_statuses(proxy_addr(running), request.as_bytes(), n).await;
    assert!(statuses.iter().all(|&s| s == 403), "{statuses:?}");
}

/// The local records: (run, seq) → chain.
fn local_places(dir: &Path) -> Vec<(String, u64, String)> {
    read_audit_all(&dir.join("audit.jsonl"))
        .iter()
        .map(|r| {
            (
                r["run"].as_str().unwrap().to_string(),
                r["seq"].as_u64().unwrap(),
                r["chain"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// (run, seq, chain) from rsyslog's parse of a message's structured data.
fn sd_place(parsed: &Value) -> (String, u64, String) {
    let sd = &parsed["rfc5424-sd"]["passerelle@32473"];
    (
        sd["run"].as_str().unwrap_or_default().to_string(),
        sd["seq"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
        sd["chain"].as_str().unwrap_or_default().to_string(),
    )
}

/// `passerelle audit verify ... --json`: exit code and the JSON verdicts.
fn verify(args: &[&str]) -> (i32, Value) {
    let out = Command::new(passerelle_bin())
        .args(["audit", "verify", "--json"])
        .args(args)
        .output()
        .expect("passerelle runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

fn verify_text(args: &[&str]) -> (i32, String) {
    let out = Command::new(passerelle_bin())
        .args(["audit", "verify"])
        .args(args)
        .output()
        .expect("passerelle runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

async fn status_json(admin: &str) -> Value {
    serde_json::from_str(&curl(&[&format!("{admin}/status.json")]).await.body).expect("JSON")
}

#[tokio::test]
async fn every_collector_gets_every_record_whole_in_order_and_in_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let rsyslog =
        Rsyslog::start(&[Input::Tls, Input::RelpTls, Input::Tcp, Input::Udp6], &pki).await;
    let syslog_ng = SyslogNg::start_tls(&pki).await;
    let toml = [
        forward(
            &format!("tls:127.0.0.1:{}", rsyslog.port(Input::Tls)),
            "json",
            &(tls(&pki, "collector.test", false) + &spool(d, "tls")),
        ),
        forward(
            &format!("relp+tls:127.0.0.1:{}", rsyslog.port(Input::RelpTls)),
            "ecs",
            &(tls(&pki, "collector.test", true) + &spool(d, "relp")),
        ),
        forward(
            &format!("tcp:127.0.0.1:{}", rsyslog.port(Input::Tcp)),
            "ocsf",
            &spool(d, "tcp"),
        ),
        forward(
            &format!("udp:[::1]:{}", rsyslog.port(Input::Udp6)),
            "squid",
            "",
        ),
        forward(
            &format!("tls:127.0.0.1:{}", syslog_ng.port),
            "json",
            &(tls(&pki, "collector.test", false) + &spool(d, "syslog-ng")),
        ),
    ]
    .concat();
    let running = Running::start(d, &toml).await;
    records_through(&running, 30, "plain").await;
    // Text a client chose, with what could split a line, a field or a structured-data value.
    let hostile = "GET http://nowhere.invalid/a%22b]c\\d{\"seq\":1}\u{2028}x\"]%0A HTTP/1.1\r\nHost: nowhere.invalid\r\n\r\n";
    let answer =
        passerelle_tests::harness::raw_exchange(proxy_addr(&running), hostile.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    records_through(&running, 10, "after").await;
    assert_eq!(running.stop().await, 0);
    let local = local_places(d);
    let records = read_audit_all(&d.join("audit.jsonl"));
    assert!(local.len() >= 42, "{}", local.len());
    let n = local.len();

    wait_until(Duration::from_secs(30), || {
        let counts = [
            rsyslog.parsed(Input::Tls).len(),
            rsyslog.parsed(Input::RelpTls).len(),
            rsyslog.parsed(Input::Tcp).len(),
            rsyslog.parsed(Input::Udp6).len(),
            syslog_ng.parsed().len(),
        ];
        let log = rsyslog.log();
        async move {
            if counts.iter().all(|&c| c >= n) {
                Ok(())
            } else {
                Err(format!("collected {counts:?} of {n}; rsyslog says:\n{log}"))
            }
        }
    })
    .await;

    // Every record, once, in order, its place in the chain in the structured data that the
    // collector's own RFC 5424 parser read.
    for input in [Input::Tls, Input::RelpTls, Input::Tcp, Input::Udp6] {
        let got: Vec<_> = rsyslog
            .parsed(input)
            .iter()
            .map(|(_, p)| sd_place(p))
            .collect();
        assert_eq!(got, local, "{input:?}");
        for line in rsyslog.received(input) {
            assert!(
                line.starts_with("<134>1 ") || line.starts_with("<132>1 "),
                "{input:?}: {line}"
            );
            assert!(line.contains(" passerelle ") && line.contains(" audit [passerelle@32473 "));
        }
    }
    // JSON: the record itself, as rsyslog's JSON parser read it.
    for ((_, parsed), record) in rsyslog.parsed(Input::Tls).iter().zip(&records) {
        let mut parsed = parsed.clone();
        parsed.as_object_mut().unwrap().remove("rfc5424-sd");
        assert_eq!(&parsed, record);
    }
    let hostile_record = records
        .iter()
        .find(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/a%22b]c"))
        })
        .expect("the hostile request's record");
    assert!(hostile_record["path"].as_str().unwrap().contains('"'));
    // ECS, field by field against ECS 9.4.0's list.
    let ecs = Ecs::load();
    for ((_, parsed), record) in rsyslog.parsed(Input::RelpTls).iter().zip(&records) {
        let mut doc = parsed.clone();
        doc.as_object_mut().unwrap().remove("rfc5424-sd");
        let problems = ecs.check(&doc);
        assert!(problems.is_empty(), "{problems:#?}\n{doc:#}");
        assert_eq!(doc["ecs"]["version"], "9.4.0");
        assert_eq!(doc["event"]["sequence"], record["seq"]);
        assert_eq!(doc["passerelle"]["chain"], record["chain"]);
        assert_eq!(doc["passerelle"]["run"], record["run"]);
        assert_eq!(doc["passerelle"]["schema"], "passerelle/2");
        assert_eq!(doc["@timestamp"], record["ts"]);
        if record["event"] == "request" {
            assert_eq!(doc["event"]["outcome"], "failure");
            assert_eq!(doc["event"]["reason"], record["reason"]);
            assert_eq!(doc["http"]["request"]["method"], record["method"]);
            assert_eq!(doc["destination"]["domain"], record["host"]);
            assert_eq!(doc["http"]["response"]["status_code"], record["status"]);
            let client: SocketAddr = record["client"].as_str().unwrap().parse().unwrap();
            assert_eq!(doc["source"]["ip"], client.ip().to_string());
            assert_eq!(doc["source"]["port"], client.port());
        }
        if record == hostile_record {
            assert_eq!(
                doc["url"]["path"].as_str().unwrap(),
                record["path"].as_str().unwrap()
            );
        }
    }
    // OCSF HTTP Activity, attribute by attribute against OCSF 1.8.0.
    let ocsf = Ocsf::load();
    assert_eq!(ocsf.version(), "1.8.0");
    for ((_, parsed), record) in rsyslog.parsed(Input::Tcp).iter().zip(&records) {
        let mut doc = parsed.clone();
        doc.as_object_mut().unwrap().remove("rfc5424-sd");
        let problems = ocsf.check(&doc);
        assert!(problems.is_empty(), "{problems:#?}\n{doc:#}");
        assert_eq!(doc["metadata"]["version"], "1.8.0");
        assert_eq!(doc["metadata"]["sequence"], record["seq"]);
        assert_eq!(doc["unmapped"]["passerelle"]["chain"], record["chain"]);
        if record["event"] == "request" {
            assert_eq!(doc["activity_id"], 3, "GET");
            assert_eq!(doc["disposition_id"], 2, "Blocked");
            assert_eq!(doc["http_response"]["code"], record["status"]);
            assert_eq!(doc["dst_endpoint"]["hostname"], record["host"]);
            assert_eq!(doc["status_code"], record["reason"]);
        }
    }
    // Squid's line, as before: ten fields, none split.
    for line in rsyslog.received(Input::Udp6) {
        let message = line.split("] ").nth(1).expect("a message after the SD");
        assert_eq!(
            message.split(' ').filter(|f| !f.is_empty()).count(),
            10,
            "{message}"
        );
    }
    // syslog-ng: its own parsers (structured data, JSON) read the same places.
    let got: Vec<_> = syslog_ng
        .parsed()
        .iter()
        .map(|(_, p)| {
            let json = &p["_json"];
            let sd = &p["_SDATA"]["passerelle@32473"];
            assert_eq!(sd["chain"], json["chain"], "{p}");
            (
                sd["run"].as_str().unwrap_or_default().to_string(),
                sd["seq"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0),
                json["chain"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(got, local, "syslog-ng");
    // The anchors each collector holds confirm every local record.
    let audit = d.join("audit.jsonl");
    for collected in [
        rsyslog.received_path(Input::Tls),
        rsyslog.received_path(Input::RelpTls),
        rsyslog.received_path(Input::Udp6),
        syslog_ng.received_path(),
    ] {
        let (code, v) = verify(&[
            audit.to_str().unwrap(),
            "--anchors",
            collected.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{v:#}");
        assert_eq!(v["anchors"]["confirmed"], n as u64, "{v:#}");
        assert_eq!(v["anchors"]["never_forwarded"], Value::Array(vec![]));
    }
}

#[tokio::test]
async fn a_collector_with_another_name_or_another_ca_is_refused_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let rsyslog = Rsyslog::start(&[Input::Tls], &pki).await;
    let to = format!("tls:127.0.0.1:{}", rsyslog.port(Input::Tls));
    let other_ca = format!(
        "ca_file = \"{}\"\nserver_name = \"collector.test\"\n",
        pki.other_ca.display()
    );
    let toml = format!(
        "{}{}",
        forward(
            &to,
            "json",
            &(tls(&pki, "someone-else.test", false) + &spool(d, "name"))
        ),
        forward(&to, "json", &(other_ca + &spool(d, "ca"))),
    );
    let running = Running::with_env(d, &toml, &[("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")])
        .start()
        .await;
    records_through(&running, 3, "x").await;
    let admin = running.admin().await;
    let errors = wait_until(Duration::from_secs(20), || async {
        let status = status_json(&admin).await;
        let errors: Vec<String> = status["forwarders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["last_error"].as_str().unwrap_or_default().to_string())
            .collect();
        // Each error said, and every record (the start and three requests) waiting for it.
        let waiting = status["forwarders"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["waiting"].as_u64() >= Some(4));
        if errors.iter().all(|e| !e.is_empty()) && waiting {
            Ok((errors, status))
        } else {
            Err(format!("no error said yet: {status:#}"))
        }
    })
    .await;
    let (errors, status) = errors;
    assert!(errors[0].contains("not valid for name"), "{errors:?}");
    assert!(errors[0].contains("someone-else.test"), "{errors:?}");
    assert!(errors[1].contains("UnknownIssuer"), "{errors:?}");
    for f in status["forwarders"].as_array().unwrap() {
        assert_eq!(f["connected"], false, "{f}");
    }
    assert!(rsyslog.received(Input::Tls).is_empty());
    // doctor says the same, with what to do.
    let out = Command::new(passerelle_bin())
        .args(["doctor", "--json", "--config"])
        .arg(d.join("passerelle.toml"))
        .env("PASSERELLE__AUDIT__PATH", d.join("doctor-audit.jsonl"))
        .output()
        .unwrap();
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let forwarding: Vec<&Value> = checks
        .iter()
        .filter(|c| c["check"] == "audit-forward" && c["state"] == "fail")
        .collect();
    assert_eq!(forwarding.len(), 2, "{checks:#?}");
    assert!(forwarding[0]["detail"]
        .as_str()
        .unwrap()
        .contains("not valid for name"));
    assert!(forwarding[0]["hint"]
        .as_str()
        .unwrap()
        .contains("server_name"));
    assert!(!out.status.success());
    running.stop().await;
}

/// Waits until the collector holds every local (run, seq) with its chain value; returns how
/// many times each arrived and the longest delay between a record's time and its reception.
async fn wait_all_collected(rsyslog: &Rsyslog, input: Input, dir: &Path) -> (usize, usize, f64) {
    wait_until(Duration::from_secs(90), || {
        let local = local_places(dir);
        let parsed = rsyslog.parsed(input);
        let log = rsyslog.log();
        async move {
            let held: HashSet<(String, u64, String)> =
                parsed.iter().map(|(_, p)| sd_place(p)).collect();
            let missing: Vec<_> = local.iter().filter(|p| !held.contains(*p)).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} of {} records not at the collector, first {:?}; rsyslog:\n{log}",
                    missing.len(),
                    local.len(),
                    missing.first()
                ))
            }
        }
    })
    .await;
    let local = local_places(dir);
    let records = read_audit_all(&dir.join("audit.jsonl"));
    let times: HashMap<(String, u64), &str> = records
        .iter()
        .map(|r| {
            (
                (
                    r["run"].as_str().unwrap().to_string(),
                    r["seq"].as_u64().unwrap(),
                ),
                r["ts"].as_str().unwrap(),
            )
        })
        .collect();
    let parsed = rsyslog.parsed(input);
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    let mut longest = 0f64;
    for (at, p) in &parsed {
        let (run, seq, _) = sd_place(p);
        if let Some(ts) = times.get(&(run.clone(), seq)) {
            let sent = humantime::parse_rfc3339_weak(ts).unwrap();
            let got = humantime::parse_rfc3339_weak(&at[..26]).unwrap_or(sent);
            let delay = got.duration_since(sent).map_or(0.0, |d| d.as_secs_f64());
            longest = longest.max(delay);
        }
        *seen.entry((run, seq)).or_default() += 1;
    }
    let duplicates = seen.values().map(|&c| c - 1).sum();
    (local.len(), duplicates, longest)
}

#[tokio::test]
async fn relp_loses_nothing_when_the_collector_dies_stops_or_passerelle_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let mut rsyslog = Rsyslog::start(&[Input::RelpTls], &pki).await;
    let toml = forward(
        &format!("relp+tls:127.0.0.1:{}", rsyslog.port(Input::RelpTls)),
        "json",
        &(tls(&pki, "collector.test", true) + &spool(d, "relp")),
    );
    let admin_env = [("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")];
    let toml = format!("{LIMITS}{toml}");
    let running = Running::with_env(d, &toml, &admin_env).start().await;
    records_through(&running, 150, "a").await;
    // Killed under load, back after a pause.
    rsyslog.kill();
    records_through(&running, 150, "b").await;
    rsyslog.restart().await;
    records_through(&running, 150, "c").await;
    // Stopped: takes nothing, acknowledges nothing; then goes on.
    rsyslog.signal("STOP");
    records_through(&running, 150, "d").await;
    rsyslog.signal("CONT");
    records_through(&running, 150, "e").await;
    // Away while Passerelle itself restarts with records waiting in the spool.
    rsyslog.kill();
    records_through(&running, 150, "f").await;
    let log_before = running.log();
    assert_eq!(running.stop().await, 0);
    let standing = passerelle_gateway::audit::forward::spool_on_disk(&d.join("relp")).unwrap();
    assert!(standing.waiting >= 150, "{standing:?}\n{log_before}");
    let running = Running::with_env(d, &toml, &admin_env).start().await;
    records_through(&running, 150, "g").await;
    rsyslog.restart().await;
    let (records, duplicates, longest) = wait_all_collected(&rsyslog, Input::RelpTls, d).await;
    eprintln!(
        "RELP accounting: {records} records, all at the collector, {duplicates} received twice, longest delay {longest:.1} s"
    );
    // None altered, the local files intact, nothing missing, nothing left unforwarded.
    let admin = running.admin().await;
    wait_until(Duration::from_secs(30), || async {
        let s = status_json(&admin).await;
        match s["forwarders"][0]["waiting"].as_u64() {
            Some(0) => Ok(()),
            _ => Err(format!("still waiting: {s:#}")),
        }
    })
    .await;
    assert_eq!(running.stop().await, 0);
    let audit = d.join("audit.jsonl");
    let collected = rsyslog.received_path(Input::RelpTls);
    let (code, v) = verify(&[
        audit.to_str().unwrap(),
        "--anchors",
        collected.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["problem"], Value::Null);
    assert_eq!(
        v["anchors"]["missing_at_collector"],
        Value::Array(vec![]),
        "{v:#}"
    );
    assert_eq!(
        v["anchors"]["never_forwarded"],
        Value::Array(vec![]),
        "{v:#}"
    );
    let runs: HashSet<String> = local_places(d).into_iter().map(|(r, _, _)| r).collect();
    assert_eq!(runs.len(), 2);
}

#[tokio::test]
async fn plain_tcp_syslog_loses_what_a_killed_collector_held_and_the_anchors_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let mut rsyslog = Rsyslog::start(&[Input::Tcp], &pki).await;
    let toml = forward(
        &format!("tcp:127.0.0.1:{}", rsyslog.port(Input::Tcp)),
        "json",
        &spool(d, "tcp"),
    );
    let running = Running::with_env(d, &toml, &[("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")])
        .start()
        .await;
    let admin = running.admin().await;
    let delivered = |n: u64| {
        let admin = admin.clone();
        async move {
            wait_until(Duration::from_secs(30), || async {
                let s = status_json(&admin).await;
                let f = &s["forwarders"][0];
                if f["delivered"].as_u64() >= Some(n) && f["waiting"] == 0 {
                    Ok(())
                } else {
                    Err(format!("not delivered yet: {f}"))
                }
            })
            .await
        }
    };
    records_through(&running, 20, "a").await;
    delivered(21).await;
    wait_until(Duration::from_secs(20), || {
        let got = rsyslog.parsed(Input::Tcp).len();
        async move {
            if got >= 21 {
                Ok(())
            } else {
                Err(format!("{got} received"))
            }
        }
    })
    .await;
    // Stopped, the collector leaves what comes in its socket; killed, it takes it along. For
    // plain syslog, written to the socket is delivered: nothing says otherwise.
    rsyslog.signal("STOP");
    records_through(&running, 20, "b").await;
    delivered(41).await;
    rsyslog.kill();
    rsyslog.restart().await;
    records_through(&running, 20, "c").await;
    // 60 requests (the start record aside).
    passerelle_tests::harness::wait_records(&d.join("audit.jsonl"), 60).await;
    let local = local_places(d);
    wait_until(Duration::from_secs(60), || {
        let parsed = rsyslog.parsed(Input::Tcp);
        let last = local.last().cloned();
        let logs = format!("{}\n{}", running.log(), rsyslog.log());
        async move {
            let held: HashSet<_> = parsed.iter().map(|(_, p)| sd_place(p)).collect();
            if last.as_ref().is_some_and(|l| held.contains(l)) {
                Ok(())
            } else {
                Err(format!(
                    "{} received, waiting for {last:?}\n{logs}",
                    held.len()
                ))
            }
        }
    })
    .await;
    assert_eq!(running.stop().await, 0);
    let local = local_places(d);
    let held: HashSet<_> = rsyslog
        .parsed(Input::Tcp)
        .iter()
        .map(|(_, p)| sd_place(p))
        .collect();
    let lost: Vec<u64> = local
        .iter()
        .filter(|p| !held.contains(*p))
        .map(|(_, seq, _)| *seq)
        .collect();
    assert!(!lost.is_empty(), "the killed collector took nothing along");
    // What was lost is what the stopped collector held: records of the second burst.
    assert!(lost.iter().all(|&s| (22..=41).contains(&s)), "{lost:?}");
    let audit = d.join("audit.jsonl");
    let collected = rsyslog.received_path(Input::Tcp);
    let (code, v) = verify(&[
        audit.to_str().unwrap(),
        "--anchors",
        collected.to_str().unwrap(),
    ]);
    // The files are intact; the anchors name exactly what the collector lacks.
    assert_eq!(code, 0, "{v:#}");
    let named: Vec<u64> = v["anchors"]["missing_at_collector"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["from"].as_u64().unwrap()..=s["to"].as_u64().unwrap())
        .collect();
    assert_eq!(named, lost, "{v:#}");
    let (_, text) = verify_text(&[
        audit.to_str().unwrap(),
        "--anchors",
        collected.to_str().unwrap(),
    ]);
    assert!(
        text.contains(&format!("missing at the collector: {} records", lost.len())),
        "{text}"
    );
}

#[tokio::test]
async fn tampering_after_forwarding_is_named_by_the_anchors_the_collector_holds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let rsyslog = Rsyslog::start(&[Input::Tls], &pki).await;
    let toml = forward(
        &format!("tls:127.0.0.1:{}", rsyslog.port(Input::Tls)),
        "ecs",
        &(tls(&pki, "collector.test", false) + &spool(d, "tls")),
    );
    let running = Running::start(d, &toml).await;
    records_through(&running, 12, "t").await;
    assert_eq!(running.stop().await, 0);
    let n = local_places(d).len();
    wait_until(Duration::from_secs(20), || {
        let got = rsyslog.parsed(Input::Tls).len();
        async move {
            if got >= n {
                Ok(())
            } else {
                Err(format!("{got} of {n}"))
            }
        }
    })
    .await;
    let collected = rsyslog.received_path(Input::Tls);
    let tamper = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/audit/tamper.py");
    for (op, seq, kind) in [
        ("edit", 5, "rewritten"),
        ("remove", 7, "removed"),
        ("truncate", 10, "truncated"),
    ] {
        let copy = d.join(format!("{op}.jsonl"));
        std::fs::copy(d.join("audit.jsonl"), &copy).unwrap();
        let ok = Command::new("python3")
            .arg(&tamper)
            .arg(&copy)
            .args([op, &seq.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        // Keyless, recomputed: the file alone holds (a removal leaves a gap in seq), and
        // says what it cannot know.
        let (code, text) = verify_text(&[copy.to_str().unwrap()]);
        if op == "remove" {
            assert_eq!(code, 1, "{op}: {text}");
            assert!(text.contains("1 record(s) are missing"), "{text}");
        } else {
            assert_eq!(code, 0, "{op}: {text}");
        }
        assert!(text.contains("cannot know: no key"), "{text}");
        // The collector's anchors name the record.
        let (code, v) = verify(&[
            copy.to_str().unwrap(),
            "--anchors",
            collected.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{op}: {v:#}");
        let problem = &v["anchors"]["problem"];
        assert_eq!(problem["kind"], kind, "{op}: {v:#}");
        assert_eq!(problem["seq"], seq, "{op}: {v:#}");
    }
}

#[tokio::test]
async fn a_forward_secure_key_names_a_record_re_signed_with_a_later_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key_file = d.join("audit.key");
    let out = Command::new(passerelle_bin())
        .args(["audit", "keygen"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let initial = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(initial.starts_with("v1:"), "{initial}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("printed once"));
    let toml = format!("[audit]\nkey_file = \"{}\"\n", key_file.display());
    // A first run now (epoch 0), a second one ten minutes later (epoch 10, by the clock).
    let running = Running::start(d, &toml).await;
    records_through(&running, 5, "early").await;
    assert_eq!(running.stop().await, 0);
    let running = Running::with_env(d, &toml, &[])
        .clock_offset("+10m")
        .start()
        .await;
    records_through(&running, 5, "late").await;
    assert_eq!(running.stop().await, 0);
    let records = read_audit_all(&d.join("audit.jsonl"));
    let epochs: Vec<u64> = records
        .iter()
        .map(|r| r["key_epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs.first(), Some(&0));
    assert!(epochs.last().unwrap() >= &10, "{epochs:?}");
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    assert!(
        !key_text.contains("epoch 0\n"),
        "the key file still holds epoch 0"
    );
    let audit = d.join("audit.jsonl");
    let (code, text) = verify_text(&[audit.to_str().unwrap(), "--key", &initial]);
    assert_eq!(code, 0, "{text}");

    // The intruder takes the key file (epoch 10+) and rewrites record 3 (epoch 0), re-signing
    // everything after it so that the chain holds.
    let copy = d.join("forged.jsonl");
    std::fs::copy(&audit, &copy).unwrap();
    let tamper = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/audit/tamper.py");
    let ok = Command::new("python3")
        .arg(&tamper)
        .arg(&copy)
        .args(["edit", "3", "--key-file"])
        .arg(&key_file)
        .status()
        .unwrap();
    assert!(ok.success());
    let (code, v) = verify(&[copy.to_str().unwrap(), "--key", &initial]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["problem"]["kind"], "resigned", "{v:#}");
    assert_eq!(v["problem"]["seq"], 3, "{v:#}");
    // The key file alone (the intruder's key) carries the origin too: the late signature shows.
    let (code, v) = verify(&[
        copy.to_str().unwrap(),
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["problem"]["kind"], "resigned", "{v:#}");
    // But what came before its epoch it cannot check, and says so: a record of epoch 0 edited
    // in place (its chain value left as it was) passes with the key file, not with the
    // initial key.
    let edited = d.join("edited.jsonl");
    let text = std::fs::read_to_string(&audit).unwrap();
    let second = text.lines().nth(1).unwrap();
    let changed = second.replacen("\"path\":\"/early\"", "\"path\":\"/nothing-to-see\"", 1);
    assert_ne!(second, changed);
    std::fs::write(&edited, text.replacen(second, &changed, 1)).unwrap();
    let (code, text) = verify_text(&[
        edited.to_str().unwrap(),
        "--key-file",
        key_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("were not checked"), "{text}");
    assert!(
        text.contains("the initial key (--key) checks them all"),
        "{text}"
    );
    let (code, v) = verify(&[edited.to_str().unwrap(), "--key", &initial]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["problem"]["kind"], "edited", "{v:#}");
    assert_eq!(v["problem"]["seq"], 2, "{v:#}");
    // Without a key: a keyed chain does not hold, and verify says what it needs.
    let (code, text) = verify_text(&[audit.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("forward-secure key"), "{text}");
}

#[tokio::test]
async fn a_full_spool_says_so_and_refuses_or_drops_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    let mut rsyslog = Rsyslog::start(&[Input::Relp, Input::Tcp], &pki).await;
    rsyslog.kill();
    let toml = [
        forward(
            &format!("relp:127.0.0.1:{}", rsyslog.port(Input::Relp)),
            "json",
            &(spool(d, "refuse") + "spool_max = \"1MiB\"\non_full = \"refuse_new\"\n"),
        ),
        forward(
            &format!("tcp:127.0.0.1:{}", rsyslog.port(Input::Tcp)),
            "json",
            &(spool(d, "drop") + "spool_max = \"1MiB\"\non_full = \"drop_oldest\"\n"),
        ),
    ]
    .concat();
    let toml = format!("{LIMITS}{toml}");
    let running = Running::with_env(d, &toml, &[("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")])
        .start()
        .await;
    let admin = running.admin().await;
    // About 1.3 KiB a message: 1 MiB is full after some 800 records.
    for burst in 0..6 {
        records_through(&running, 300, &format!("{burst}-{}", "x".repeat(600))).await;
    }
    let status = wait_until(Duration::from_secs(30), || async {
        let s = status_json(&admin).await;
        let f = &s["forwarders"];
        if f[0]["refused"].as_u64() > Some(0) && f[1]["dropped"].as_u64() > Some(0) {
            Ok(s)
        } else {
            Err(format!("{f:#}"))
        }
    })
    .await;
    for f in status["forwarders"].as_array().unwrap() {
        assert!(f["spool_bytes"].as_u64().unwrap() <= 1 << 20, "{f}");
    }
    // Said in the local record (written with the batch after the one that filled the
    // spool), in the log and in the metrics.
    let audit = d.join("audit.jsonl");
    wait_until(Duration::from_secs(20), || {
        let records = read_audit_all(&audit);
        async move {
            let notes: Vec<&Value> = records.iter().filter(|r| r["event"] == "forward").collect();
            let refused = notes.iter().any(|r| {
                r["forwarder"].as_str().unwrap().starts_with("relp:")
                    && r["detail"].as_str().unwrap().contains("refuse_new")
            });
            let dropped = notes.iter().any(|r| {
                r["forwarder"].as_str().unwrap().starts_with("tcp:")
                    && r["detail"]
                        .as_str()
                        .unwrap()
                        .contains("oldest records waiting were dropped")
            });
            if refused && dropped {
                Ok(())
            } else {
                Err(format!("{notes:#?}"))
            }
        }
    })
    .await;
    assert!(running.log().contains("audit.forward.spool_full"));
    let metrics = curl(&[&format!("{admin}/metrics")]).await.body;
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("passerelle_audit_forward_not_forwarded_total{")
                && l.contains("why=\"spool_full_refused\"")
                && l.contains("relp:")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!refused.ends_with(" 0"), "{refused}");
    // The collector back: what waited goes, and the refusing spool says it has room again.
    rsyslog.restart().await;
    wait_until(Duration::from_secs(60), || async {
        let s = status_json(&admin).await;
        let f = &s["forwarders"];
        if f[0]["waiting"] == 0 && f[1]["waiting"] == 0 {
            Ok(())
        } else {
            Err(format!("{f:#}"))
        }
    })
    .await;
    records_through(&running, 1, "after").await;
    wait_until(Duration::from_secs(20), || async {
        let records = read_audit_all(&d.join("audit.jsonl"));
        if records.iter().any(|r| {
            r["event"] == "forward" && r["detail"].as_str().unwrap().contains("room again")
        }) {
            Ok(())
        } else {
            Err("no room-again record".to_string())
        }
    })
    .await;
    assert_eq!(running.stop().await, 0);
}

#[tokio::test]
async fn the_shipped_collector_configurations_keep_the_anchors_and_feed_the_siem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(d);
    // The SIEM's TLS syslog input, for both collectors to feed.
    let siem = Rsyslog::start(&[Input::Tls], &pki).await;
    let rsyslog = Rsyslog::deployed(&pki, siem.port(Input::Tls)).await;
    let syslog_ng = SyslogNg::deployed(&pki, siem.port(Input::Tls)).await;
    let toml = [
        forward(
            &format!("relp+tls:127.0.0.1:{}", rsyslog.port(Input::RelpTls)),
            "json",
            &(tls(&pki, "collector.test", true) + &spool(d, "rsyslog")),
        ),
        forward(
            &format!("tls:127.0.0.1:{}", syslog_ng.port),
            "ecs",
            &(tls(&pki, "collector.test", true) + &spool(d, "syslog-ng")),
        ),
    ]
    .concat();
    let running = Running::start(d, &toml).await;
    records_through(&running, 20, "soc").await;
    assert_eq!(running.stop().await, 0);
    let local = local_places(d);
    let n = local.len();
    let audit = d.join("audit.jsonl");
    for (name, files) in [
        (
            "rsyslog",
            Box::new(|| rsyslog.host_files()) as Box<dyn Fn() -> Vec<std::path::PathBuf>>,
        ),
        ("syslog-ng", Box::new(|| syslog_ng.host_files())),
    ] {
        // One file for this jump host, holding every record: the anchors check them all.
        let file = wait_until(Duration::from_secs(30), || {
            let files = files();
            async move {
                let held = files
                    .first()
                    .map(|f| {
                        std::fs::read_to_string(f)
                            .unwrap_or_default()
                            .lines()
                            .count()
                    })
                    .unwrap_or(0);
                if files.len() == 1 && held >= n {
                    Ok(files[0].clone())
                } else {
                    Err(format!("{name}: {files:?} with {held} of {n} records"))
                }
            }
        })
        .await;
        let (code, v) = verify(&[audit.to_str().unwrap(), "--anchors", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{name}: {v:#}");
        assert_eq!(v["anchors"]["confirmed"], n as u64, "{name}: {v:#}");
    }
    // And the SIEM has every record from each, its place in the chain readable there too.
    wait_until(Duration::from_secs(60), || {
        let parsed = siem.parsed(Input::Tls);
        let logs = format!("{}\n{}", rsyslog.log(), syslog_ng.log());
        let local = local.clone();
        async move {
            let mut count: HashMap<(String, u64, String), usize> = HashMap::new();
            for (_, p) in &parsed {
                *count.entry(sd_place(p)).or_default() += 1;
            }
            if local
                .iter()
                .all(|p| count.get(p).copied().unwrap_or(0) >= 2)
            {
                Ok(())
            } else {
                Err(format!(
                    "the SIEM has {} messages of {}\n{logs}",
                    parsed.len(),
                    2 * local.len()
                ))
            }
        }
    })
    .await;
}

#[test]
fn the_security_guide_shows_the_shipped_collector_configurations() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    for file in ["rsyslog-passerelle.conf", "syslog-ng-passerelle.conf"] {
        let text = std::fs::read_to_string(root.join("deploy/collectors").join(file)).unwrap();
        assert!(
            readme.contains(text.trim_end()),
            "the security guide's copy of deploy/collectors/{file} differs from the file"
        );
    }
}
