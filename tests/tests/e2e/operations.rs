//! Operating it: the admin endpoint (metrics, health, PAC evaluated in node, flows,
//! reload), Squid-format and syslog audit, reopening on SIGUSR1, and `passerelle report`.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use passerelle_tests::browser;
use passerelle_tests::harness::{
    bounded, curl, free_port, passerelle_bin, passerelle_ok, raw_exchange, read_audit,
    wait_listening, wait_until, Running, TestGateway,
};
use passerelle_tests::origin::{closed_port, HttpOrigin, TlsOrigin};
use passerelle_tests::peers::NtlmParent;

async fn with_admin(config: &str, extra_env: &[(&str, &str)]) -> (TestGateway, String) {
    let mut env = vec![("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")];
    env.extend_from_slice(extra_env);
    let gw = TestGateway::start_with_env(config, &env).await;
    let admin = format!(
        "http://{}",
        gw.gateway().admin_addr().expect("admin listener")
    );
    (gw, admin)
}

fn site(origin: &HttpOrigin) -> String {
    format!("[[flows]]\nid = \"site\"\nhosts = [\"site.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"site.test:80={}\"]\n", origin.addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_health_and_flows() {
    let origin = HttpOrigin::start().await;
    let (gw, admin) = with_admin(&site(&origin), &[]).await;
    assert_eq!(
        curl(&["-x", &gw.proxy(), "http://site.test/x"])
            .await
            .status,
        200
    );
    assert_eq!(
        curl(&["-x", &gw.proxy(), "http://evil.example/"])
            .await
            .status,
        403
    );
    gw.records(2).await;

    let m = curl(&[&format!("{admin}/metrics")]).await;
    assert_eq!(m.status, 200);
    for line in [
        "passerelle_requests_total{kind=\"forward\",decision=\"allow\",route=\"direct\",flow=\"site\"} 1",
        "passerelle_requests_total{kind=\"forward\",decision=\"deny\",route=\"none\",flow=\"none\"} 1",
        "passerelle_request_errors_total{reason=\"no_flow\"} 1",
        "passerelle_tunnels_active 0",
        "passerelle_reloads_total{result=\"accepted\"} 0",
        "# TYPE passerelle_transferred_bytes_total counter",
    ] {
        assert!(m.body.contains(line), "missing {line:?} in:\n{}", m.body);
    }
    assert!(
        m.body
            .contains("passerelle_transferred_bytes_total{flow=\"site\",direction=\"down\"}"),
        "{}",
        m.body
    );
    assert!(
        !m.body.contains("evil.example") && !m.body.contains("127.0.0.1"),
        "unbounded labels:\n{}",
        m.body
    );

    assert_eq!(curl(&[&format!("{admin}/healthz")]).await.body, "ok\n");
    // The admin port given as the proxy by mistake: it says where the proxy is.
    for url in ["http://site.test/x", "https://site.test/"] {
        let wrong = curl(&["-x", &admin, "-D", "-", url]).await;
        let shown = format!("{}{}", wrong.heads, wrong.body);
        assert!(shown.contains("400"), "{url}: {wrong:?}");
        if url.starts_with("http:") {
            assert!(
                wrong.body.contains("not the proxy: set the proxy to"),
                "{}",
                wrong.body
            );
            assert!(wrong.body.contains(&gw.addr.to_string()), "{}", wrong.body);
        }
    }
    assert_eq!(curl(&[&format!("{admin}/readyz")]).await.status, 200);
    let flows: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("{admin}/flows")]).await.body).unwrap();
    let ids: Vec<&str> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"tlm-prod") && ids.contains(&"site"),
        "{ids:?}"
    );
    assert_eq!(flows["routing"]["default"], "direct");

    let unconfirmed = curl(&["-X", "POST", &format!("{admin}/reload")]).await;
    assert_eq!(unconfirmed.status, 403, "{unconfirmed:?}");
    // The endpoint answers once the reload is decided, with its outcome.
    let url = format!("{admin}/reload");
    let asked =
        tokio::spawn(
            async move { curl(&["-X", "POST", "-H", "X-Passerelle-Reload: 1", &url]).await },
        );
    let request = tokio::time::timeout(Duration::from_secs(5), gw.gateway().reload_requested())
        .await
        .expect("reload requested");
    assert!(request.by.ip().is_loopback());
    let _ = request
        .answer
        .send(Err("flows[0].ports[0]: 70000 is not a port".into()));
    let refused = asked.await.unwrap();
    assert_eq!(refused.status, 422, "{refused:?}");
    assert!(
        refused.body.contains("the running configuration stays"),
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("70000 is not a port"),
        "{}",
        refused.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_parent() {
    let parent = NtlmParent::start(&[("CHU", "svc", "right")], &[], false).await;
    let config = format!(
        "[[flows]]\nid = \"site\"\nhosts = [\"site.test\"]\nports = [80]\n[[upstream]]\nurl = \"{}\"\nauth = \"ntlm\"\nuser = 'CHU\\svc'\npassword_env = \"PW\"\n",
        parent.url()
    );
    let (gw, admin) = with_admin(&config, &[("PW", "wrong")]).await;
    assert_eq!(curl(&[&format!("{admin}/readyz")]).await.status, 200);
    assert_eq!(
        curl(&["-x", &gw.proxy(), "http://site.test/"]).await.status,
        502
    );
    let ready = curl(&[&format!("{admin}/readyz")]).await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(
        ready
            .body
            .contains("the gateway's account CHU\\svc was refused"),
        "{}",
        ready.body
    );
    let m = curl(&[&format!("{admin}/metrics")]).await.body;
    assert!(
        m.contains(&format!(
            "passerelle_parent_up{{parent=\"{}\",state=\"backoff\"}} 1",
            parent.url()
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "passerelle_parent_auth_failures_total{{parent=\"{}\"}} 1",
            parent.url()
        )),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pac_file_evaluated_by_chromium() {
    // A witness on 127.0.0.1 is both the proxy the PAC names and, through Chromium's resolver
    // rules, where the names meant to go DIRECT lead: each request's first line says which way
    // the browser's own PAC engine sent it.
    let witness = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = witness.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = witness.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = bounded(s.read(&mut buf)).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                log.lock().unwrap().push(head);
                let _ = s
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    let (gw, admin) = with_admin(
        &format!("[pac]\nproxy = \"127.0.0.1:{port}\"\ndirect = [\".chu.local\"]\n"),
        &[],
    )
    .await;
    // (URL, DIRECT?). Names that go DIRECT lead to the witness; the private addresses can only
    // be tried where no packet can leave (scripts/test's sandbox).
    let sandboxed = std::env::var_os("PASSERELLE_SANDBOX").is_some();
    let mut table = vec![
        (format!("http://localhost:{port}/localhost"), true),
        (format!("http://127.0.0.1:{port}/loopback"), true),
        (format!("http://intranet:{port}/plain-name"), true),
        (format!("http://pacs.chu.local:{port}/site-direct"), true),
        ("https://covotem.esante-centre.fr/".to_string(), false),
        ("https://www.esante-centre.fr/".to_string(), false),
        ("http://ocsp.sectigo.com/ocsp".to_string(), false),
        ("https://example.com/".to_string(), false),
        ("http://164.138.243.158/documented-ip".to_string(), false),
        ("http://172.32.0.1/not-private".to_string(), false),
        ("http://chu.local.evil.example/lookalike".to_string(), false),
    ];
    if sandboxed {
        for ip in ["10.1.2.3", "192.168.0.5", "172.20.0.1"] {
            table.push((format!("http://{ip}/private"), true));
        }
    }
    let page = gw.dir.path().join("page.html");
    let images: String = table
        .iter()
        .map(|(url, _)| format!("<img src=\"{url}\">\n"))
        .collect();
    std::fs::write(
        &page,
        format!("<!doctype html><title>pac</title>\n{images}"),
    )
    .unwrap();
    let net_log = gw.dir.path().join("netlog.json");
    let rules = format!(
        "MAP intranet 127.0.0.1:{port}, MAP pacs.chu.local 127.0.0.1:{port}, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"
    );
    browser::load_with_pac(
        &format!("file://{}", page.display()),
        &format!("{admin}/proxy.pac"),
        &rules,
        &net_log,
    )
    .await;
    let heads = seen.lock().unwrap().clone();
    // A PAC that resolves names (dnsResolve, or isInNet given a name) makes the browser ask its
    // resolver for an IPv4 address (an "A" request); loading pages asks for any family.
    let net_log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&net_log).unwrap()).unwrap();
    let resolver_request = &net_log["constants"]["logEventTypes"]["HOST_RESOLVER_MANAGER_REQUEST"];
    assert!(
        resolver_request.is_u64(),
        "Chromium's net log changed its event names"
    );
    let pac_lookups: Vec<&serde_json::Value> = net_log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| &e["type"] == resolver_request && e["params"]["dns_query_type"] == "A")
        .collect();
    let pac = curl(&[&format!("{admin}/proxy.pac")]).await.body;
    for (url, direct) in &table {
        let rest = url.split_once("://").unwrap().1;
        let (host, path) = rest.split_once('/').unwrap();
        let host_only = host.split(':').next().unwrap();
        let path = format!("/{path}");
        let proxied = heads.iter().any(|h| {
            h.starts_with(&format!("GET {url} "))
                || h.starts_with(&format!("CONNECT {host_only}:443 "))
        });
        let origin_form = heads.iter().any(|h| h.starts_with(&format!("GET {path} ")));
        if *direct {
            assert!(
                !proxied,
                "{url} went to the proxy; PAC:\n{pac}\nseen: {heads:#?}"
            );
            if !url.starts_with("http://1") {
                assert!(
                    origin_form,
                    "{url} did not go DIRECT; PAC:\n{pac}\nseen: {heads:#?}"
                );
            }
        } else {
            assert!(
                proxied,
                "{url} did not go to the proxy; PAC:\n{pac}\nseen: {heads:#?}"
            );
        }
    }
    assert!(
        pac_lookups.is_empty(),
        "the PAC made the workstation resolve names: {pac_lookups:#?}\n{pac}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn squid_format_lines() {
    let origin = HttpOrigin::start().await;
    let gw = TestGateway::start(&format!("{}[audit]\nformat = \"squid\"\n", site(&origin))).await;
    assert_eq!(
        curl(&["-x", &gw.proxy(), "http://site.test/page"])
            .await
            .status,
        200
    );
    assert_eq!(
        curl(&["-x", &gw.proxy(), "https://evil.example/"])
            .await
            .connect_status,
        403
    );
    let path = gw.audit_path.clone();
    let _dir = gw.shutdown().await;
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let f: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(f.len(), 10, "{}", lines[0]);
    assert!(
        f[0].contains('.')
            && f[0]
                .split('.')
                .all(|p| p.chars().all(|c| c.is_ascii_digit())),
        "{}",
        f[0]
    );
    assert_eq!(
        &f[2..],
        &[
            "127.0.0.1",
            "TCP_MISS/200",
            f[4],
            "GET",
            "http://site.test/page",
            "-",
            "HIER_DIRECT/site.test",
            "-"
        ]
    );
    assert!(f[4].parse::<u64>().unwrap() > 0);
    let d: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &d[3..],
        &[
            "TCP_DENIED/403",
            "0",
            "CONNECT",
            "evil.example:443",
            "-",
            "HIER_NONE/-",
            "-"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn syslog_over_udp_loopback() {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = format!("udp:{}", socket.local_addr().unwrap());
    let gw = TestGateway::start_with_env(
        "",
        &[
            ("PASSERELLE__AUDIT__SINK", "syslog"),
            ("PASSERELLE__AUDIT__SYSLOG", &target),
        ],
    )
    .await;
    assert_eq!(
        curl(&["-x", &gw.proxy(), "http://evil.example/"])
            .await
            .status,
        403
    );
    let mut buf = vec![0u8; 4096];
    // The run's first record (the chain's start) comes first: info, then the refusal.
    let start = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
            .await
            .expect("a datagram")
            .unwrap();
        let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
        if datagram.contains("\"event\":\"start\"") {
            break datagram;
        }
    };
    assert!(start.starts_with("<134>1 "), "local0.info: {start}");
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("a datagram")
        .unwrap();
    let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        datagram.starts_with("<132>1 "),
        "local0.warning for a refusal: {datagram}"
    );
    // Its place in the chain in the structured data, the record after it.
    assert!(
        datagram.contains(" passerelle ")
            && datagram.contains(" audit [passerelle@32473 schema=\"passerelle/2\" run=\"")
            && datagram.contains(" seq=\"2\" chain=\"")
            && datagram.contains("] {\"seq\":2,"),
        "{datagram}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&datagram[datagram.find('{').unwrap()..]).unwrap();
    assert_eq!(json["reason"], "no_flow");
}

#[tokio::test(flavor = "multi_thread")]
async fn logrotate_with_the_shipped_snippet_rotates_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(dir.path(), "").await;
    let audit = gw.audit.clone();
    curl(&["-x", &gw.proxy(), "http://first.example/"]).await;
    passerelle_tests::harness::wait_records(&audit, 1).await;
    // logrotate itself, with deploy/logrotate/passerelle: this test's file, and its
    // postrotate signalling this process instead of the systemd unit.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/logrotate/passerelle"),
    )
    .unwrap();
    assert!(
        shipped.contains("/var/log/passerelle/audit.jsonl {"),
        "{shipped}"
    );
    let snippet = shipped
        .replace(
            "/var/log/passerelle/audit.jsonl",
            &audit.display().to_string(),
        )
        .replace(
            "systemctl kill --kill-whom=main --signal=SIGUSR1 passerelle.service",
            &format!("kill -USR1 {}", gw.pid()),
        );
    let conf = dir.path().join("logrotate.conf");
    std::fs::write(&conf, snippet).unwrap();
    let rotate = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(dir.path().join("logrotate.state"))
        .arg(&conf)
        .output()
        .expect("logrotate runs (scripts/install-test-deps installs it)");
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    let rotated = dir.path().join("audit.jsonl.1");
    assert!(
        rotated.exists(),
        "logrotate did not rotate (delaycompress keeps .1 plain)"
    );
    // The new file begins with the writer's rotate record.
    wait_until(Duration::from_secs(10), || async {
        match passerelle_tests::harness::read_audit_all(&audit).is_empty() {
            true => Err("no new audit file after SIGUSR1".to_string()),
            false => Ok(()),
        }
    })
    .await;
    curl(&["-x", &gw.proxy(), "http://second.example/"]).await;
    assert_eq!(gw.stop().await, 0);
    let old = passerelle_tests::harness::read_audit_all(&rotated);
    assert_eq!(old.last().unwrap()["host"], "first.example");
    let fresh = passerelle_tests::harness::read_audit_all(&audit);
    assert_eq!(fresh[0]["event"], "rotate", "{fresh:?}");
    assert_eq!(fresh[0]["chain_from"], old.last().unwrap()["chain"]);
    assert_eq!(fresh[1]["host"], "second.example");
    assert_eq!(
        fresh[1]["seq"].as_u64(),
        old.last().unwrap()["seq"].as_u64().map(|s| s + 2),
        "seq goes on across files"
    );
    // The chain holds across the rotation, and only in the written order.
    let verify = |files: &[&Path]| {
        Command::new(passerelle_bin())
            .args(["audit", "verify"])
            .args(files)
            .output()
            .unwrap()
    };
    let out = verify(&[&rotated, &audit]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!verify(&[&audit, &rotated]).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn report_summarizes_for_the_security_team() {
    let origin = HttpOrigin::start().await;
    let gw = TestGateway::start(&site(&origin)).await;
    for _ in 0..3 {
        curl(&["-x", &gw.proxy(), "http://site.test/"]).await;
    }
    for _ in 0..2 {
        curl(&["-x", &gw.proxy(), "https://evil.example/"]).await;
    }
    curl(&["-x", &gw.proxy(), "http://covotem.esante-centre.fr:22/"]).await;
    let path = gw.audit_path.clone();
    let _dir = gw.shutdown().await;
    let out = passerelle_ok([OsStr::new("report"), OsStr::new("--json"), path.as_os_str()]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["records"], 6);
    assert_eq!(r["denied"], 3);
    assert_eq!(r["flows"]["site"]["requests"], 3);
    assert_eq!(
        r["top_denied_targets"][0],
        serde_json::json!(["evil.example:443", 2])
    );
    assert_eq!(
        r["top_denied_clients"][0],
        serde_json::json!(["127.0.0.1", 3])
    );
    assert_eq!(r["seq_gaps"], 0);
    assert_eq!(r["reasons"][0], serde_json::json!(["no_flow", 2]));
    let html = path.with_extension("html");
    let text = passerelle_ok([
        OsStr::new("report"),
        OsStr::new("--html"),
        html.as_os_str(),
        path.as_os_str(),
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with("audit chain intact: 7 records in 1 file(s)"),
        "{text}"
    );
    assert!(
        text.contains("6 records, 3 refused") && text.contains("evil.example:443"),
        "{text}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("id=\"per-hour\"") && page.contains("evil.example:443"));
    // Filtered to a client that made no request: nothing.
    let filter = ["report", "--json", "--client", "10.9.9.9", "--since", "1h"];
    let out = passerelle_ok(filter.iter().map(OsStr::new).chain([path.as_os_str()]));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["records"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ha_pair_behind_haproxy_survives_losing_one_instance() {
    let origin = HttpOrigin::start().await;
    // HAProxy connects from 127.0.0.1 and says who the workstation is (PROXY v2); the
    // workstation is 127.0.0.2.
    let ha = format!(
        "{}[listen]\nproxy_protocol_from = [\"127.0.0.1/32\"]\n",
        site(&origin)
    );
    let (gw1, admin1) = with_admin(&ha, &[]).await;
    let (gw2, admin2) = with_admin(&ha, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin_port = |a: &str| a.rsplit(':').next().unwrap().to_string();
    let cfg = format!(
        "global\n    maxconn 1000\ndefaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    option redispatch\n    retries 3\n\
         frontend proxy\n    bind 127.0.0.1:{port}\n    default_backend passerelles\n\
         backend passerelles\n    balance roundrobin\n    option httpchk GET /readyz\n    http-check expect status 200\n    default-server inter 200ms fall 1 rise 2\n\
         \x20   server gw1 {} send-proxy-v2 check port {}\n    server gw2 {} send-proxy-v2 check port {}\n",
        gw1.addr, admin_port(&admin1), gw2.addr, admin_port(&admin2)
    );
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let _haproxy = passerelle_tests::harness::Reaped::spawn(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("haproxy runs (scripts/install-test-deps installs it)");
    wait_listening(([127, 0, 0, 1], port).into()).await;
    let front = format!("http://127.0.0.1:{port}");
    let mut ok = 0;
    for i in 0..20 {
        if curl(&[
            "--interface",
            "127.0.0.2",
            "-x",
            &front,
            &format!("http://site.test/before/{i}"),
        ])
        .await
        .status
            == 200
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 20);
    let audit1 = gw1.audit_path.clone();
    let _dir1 = gw1.shutdown().await;
    for i in 0..20 {
        if curl(&[
            "--interface",
            "127.0.0.2",
            "-x",
            &front,
            &format!("http://site.test/after/{i}"),
        ])
        .await
        .status
            == 200
        {
            ok += 1;
        }
    }
    assert_eq!(
        ok, 40,
        "clients stopped getting through when one instance went away"
    );
    let audit2 = gw2.audit_path.clone();
    let _dir2 = gw2.shutdown().await;
    let (first, second) = (read_audit(&audit1), read_audit(&audit2));
    assert!(
        !first.is_empty() && !second.is_empty(),
        "both instances served: {} / {}",
        first.len(),
        second.len()
    );
    let served = first
        .iter()
        .chain(&second)
        .filter(|r| r["status"] == 200)
        .count();
    assert_eq!(
        served, 40,
        "the two audit logs together account for every request"
    );
    assert!(
        first
            .iter()
            .chain(&second)
            .all(|r| r["client"].as_str().unwrap().starts_with("127.0.0.2:")),
        "the audit names HAProxy, not the workstation: {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_is_required_from_balancers_and_refused_from_others() {
    let origin = HttpOrigin::start().await;
    let gw = TestGateway::start(&format!(
        "{}[listen]\nproxy_protocol_from = [\"127.0.0.1/32\"]\n[clients]\nallow = [\"10.20.30.0/24\"]\n",
        site(&origin)
    ))
    .await;
    let request =
        "GET http://site.test/ok HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n";
    // v1 and v2 headers naming an allowed workstation.
    let v1 = format!("PROXY TCP4 10.20.30.4 127.0.0.1 51000 3128\r\n{request}");
    let answer = raw_exchange(gw.addr, v1.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[10, 20, 30, 5, 127, 0, 0, 1]);
    v2.extend_from_slice(&51001u16.to_be_bytes());
    v2.extend_from_slice(&3128u16.to_be_bytes());
    v2.extend_from_slice(request.as_bytes());
    let answer = raw_exchange(gw.addr, &v2).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A workstation outside clients.allow, named by the header: refused like any other.
    let outside = format!("PROXY TCP4 192.0.2.9 127.0.0.1 51002 3128\r\n{request}");
    assert_eq!(raw_exchange(gw.addr, outside.as_bytes()).await, "");
    // No header from the balancer: refused.
    assert_eq!(raw_exchange(gw.addr, request.as_bytes()).await, "");
    let records = gw.stop().await;
    let clients: Vec<&str> = records
        .iter()
        .map(|r| r["client"].as_str().unwrap())
        .collect();
    assert_eq!(
        clients,
        [
            "10.20.30.4:51000",
            "10.20.30.5:51001",
            "192.0.2.9:51002",
            clients[3]
        ],
        "{records:?}"
    );
    assert_eq!(records[2]["reason"], "client_not_allowed");
    assert_eq!(records[3]["reason"], "proxy_protocol");
    assert!(clients[3].starts_with("127.0.0.1:"));

    // Malformed headers from the balancer: closed without an answer, each audited.
    let gw = TestGateway::start(&format!(
        "{}[listen]\nproxy_protocol_from = [\"127.0.0.1/32\"]\n[clients]\nallow = [\"10.20.30.0/24\"]\n",
        site(&origin)
    ))
    .await;
    // TCP over IPv4 needs 12 bytes of addresses and ports; this block says 4.
    let mut short_v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04".to_vec();
    short_v2.extend_from_slice(&[10, 20, 30, 5]);
    let mut bad_signature = b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c".to_vec();
    bad_signature.extend_from_slice(&[10, 20, 30, 5, 127, 0, 0, 1, 0xc7, 0x39, 0x0c, 0x38]);
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        (
            "an address that is not one",
            b"PROXY TCP4 10.20.30.999 127.0.0.1 51000 3128\r\n".to_vec(),
        ),
        (
            "a port that is not one",
            b"PROXY TCP4 10.20.30.4 127.0.0.1 99999 3128\r\n".to_vec(),
        ),
        (
            "a v1 line without its end",
            format!(
                "PROXY TCP4 10.20.30.4 127.0.0.1 51000 3128{}",
                " ".repeat(200)
            )
            .into_bytes(),
        ),
        (
            "a v1 family that is not one",
            b"PROXY TCP5 10.20.30.4 127.0.0.1 51000 3128\r\n".to_vec(),
        ),
        ("a v2 address block too short for its family", short_v2),
        ("a v2 signature off by one byte", bad_signature),
    ];
    for (what, header) in &malformed {
        let mut bytes = header.clone();
        bytes.extend_from_slice(request.as_bytes());
        assert_eq!(raw_exchange(gw.addr, &bytes).await, "", "{what}: answered");
    }
    let records = gw.stop().await;
    assert_eq!(records.len(), malformed.len(), "{records:#?}");
    for (record, (what, _)) in records.iter().zip(&malformed) {
        assert_eq!(record["reason"], "proxy_protocol", "{what}: {record}");
        assert!(
            record["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{what}: the record names the balancer it came from: {record}"
        );
    }

    // From a peer not in proxy_protocol_from, a PROXY header is a malformed request.
    let gw = TestGateway::start(&site(&origin)).await;
    let v1 = format!("PROXY TCP4 10.20.30.4 127.0.0.1 51000 3128\r\n{request}");
    let answer = raw_exchange(gw.addr, v1.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// The production flows' (host, port, kind of peer) as the doctor checks them.
const PRODUCTION: &[(&str, &[u16])] = &[
    ("www.esante-centre.fr", &[80, 443]),
    ("covotem.esante-centre.fr", &[80, 443]),
    ("crt.sectigo.com", &[80, 443]),
    ("ocsp.sectigo.com", &[80, 443]),
    ("visio-equinix2.covalia.fr", &[443, 8084]),
    ("visio-equinix3.covalia.fr", &[443, 8084]),
    ("signalement-equinix.covalia.fr", &[443]),
];

/// Where each production flow's host:port goes: port 80 to the HTTP origin, TLS ports to
/// the TLS origin, the visio ports to a raw TCP peer.
fn peer_for(
    host: &str,
    port: u16,
    http: &HttpOrigin,
    tls: &TlsOrigin,
    raw: std::net::SocketAddr,
) -> std::net::SocketAddr {
    match (host.starts_with("visio-"), port) {
        (true, _) => raw,
        (false, 80) => http.addr,
        _ => tls.addr,
    }
}

fn doctor(
    dir: &Path,
    config: &str,
    ca: &Path,
    env: &[(&str, &str)],
) -> (i32, serde_json::Value, String) {
    doctor_in(Command::new(passerelle_bin()), dir, config, ca, env)
}

fn doctor_in(
    mut command: Command,
    dir: &Path,
    config: &str,
    ca: &Path,
    env: &[(&str, &str)],
) -> (i32, serde_json::Value, String) {
    let file = dir.join("doctor.toml");
    std::fs::write(&file, config).unwrap();
    let out = command
        .args(["doctor", "--json", "--config"])
        .arg(&file)
        .arg("--ca-file")
        .arg(ca)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_every_flow_directly_and_through_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let hosts: Vec<&str> = PRODUCTION.iter().map(|(h, _)| *h).collect();
    let tls = TlsOrigin::start(&hosts, dir.path()).await;
    let http = HttpOrigin::start().await;
    let raw = passerelle_tests::origin::silent_peer().await;
    let entries: Vec<String> = PRODUCTION
        .iter()
        .flat_map(|(h, ports)| ports.iter().map(move |p| (*h, *p)))
        .map(|(h, p)| format!("\"{h}:{p}={}\"", peer_for(h, p, &http, &tls, raw)))
        .collect();
    let direct = format!("[resolve]\nconnect_to = [{}]\n", entries.join(", "));
    let (code, checks, stderr) = doctor(dir.path(), &direct, &tls.ca_pem, &[]);
    let failed: Vec<&serde_json::Value> = checks
        .as_array()
        .map(|a| a.iter().filter(|c| c["ok"] == false).collect())
        .unwrap_or_default();
    assert_eq!(code, 0, "{stderr}\n{failed:#?}");
    let kinds = |k: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["check"] == k)
            .count()
    };
    assert_eq!(kinds("tcp"), 13, "{checks:#}");
    assert_eq!(kinds("tls"), 5, "the visio ports are not TLS");
    assert_eq!(
        kinds("clock"),
        9,
        "TLS and port-80 flows answer with a Date"
    );
    // The two visio flows' UDP statements, then the jump host's table and forwarding.
    assert_eq!(kinds("udp"), 4);
    let states = |k: &str| -> Vec<String> {
        checks
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["check"] == k && c["target"].as_str().unwrap().ends_with("/udp"))
            .map(|c| c["state"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        states("udp"),
        ["info", "info"],
        "a statement, not a verdict"
    );
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "tls" && c["detail"].as_str().unwrap().contains("expires")),
        "{checks:#}"
    );

    // One flow unreachable: exit 1, a ✗ with a hint.
    let broken = direct.replace(
        &format!("crt.sectigo.com:443={}", tls.addr),
        &format!("crt.sectigo.com:443={}", closed_port()),
    );
    let (code, checks, _) = doctor(dir.path(), &broken, &tls.ca_pem, &[]);
    assert_eq!(code, 1);
    let bad: Vec<&serde_json::Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert!(
        bad[0]["target"]
            .as_str()
            .unwrap()
            .starts_with("crt.sectigo.com:443")
            && bad[0]["hint"].is_string(),
        "{bad:#?}"
    );

    // Through the NTLM parent: the parent is checked first, each flow is a tunnel through it.
    let map: Vec<(String, std::net::SocketAddr)> = PRODUCTION
        .iter()
        .flat_map(|(h, ports)| ports.iter().map(move |p| (*h, *p)))
        .map(|(h, p)| (format!("{h}:{p}"), peer_for(h, p, &http, &tls, raw)))
        .collect();
    let map: Vec<(&str, std::net::SocketAddr)> =
        map.iter().map(|(t, a)| (t.as_str(), *a)).collect();
    let parent = NtlmParent::start(&[("CHU", "svc", "Pa55")], &map, false).await;
    let upstream = format!(
        "[routing]\ndefault = \"upstream\"\nbypass_covotem_server = false\n[[upstream]]\nurl = \"{}\"\nauth = \"ntlm\"\nuser = 'CHU\\svc'\npassword_env = \"PW\"\n",
        parent.url()
    );
    let (code, checks, stderr) = doctor(dir.path(), &upstream, &tls.ca_pem, &[("PW", "Pa55")]);
    assert_eq!(code, 0, "{stderr}\n{checks:#}");
    assert_eq!(checks[0]["check"], "parent");
    assert!(
        checks[0]["detail"]
            .as_str()
            .unwrap()
            .contains("credentials accepted"),
        "{checks:#}"
    );
    let (code, checks, _) = doctor(dir.path(), &upstream, &tls.ca_pem, &[("PW", "wrong")]);
    assert_eq!(code, 1);
    assert_eq!(checks[0]["ok"], false);
    assert!(
        checks[0]["hint"].as_str().unwrap().contains("backs off"),
        "{checks:#}"
    );
    // The flows behind a parent that refused the gateway are not tried (each try would
    // count toward the account's lockout) and are said to be not checked, not failed.
    let tcp: Vec<&serde_json::Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "tcp")
        .collect();
    assert_eq!(tcp.len(), 13, "{checks:#}");
    assert!(tcp.iter().all(|c| c["state"] == "skipped"), "{tcp:#?}");

    // The parent refuses one destination by policy: the hint names its policy, not the
    // gateway's credentials nor the firewall.
    let refusing = NtlmParent::start(&[("CHU", "svc", "Pa55")], &map[1..], false).await;
    let refused = upstream.replace(&parent.url(), &refusing.url());
    let (code, checks, _) = doctor(dir.path(), &refused, &tls.ca_pem, &[("PW", "Pa55")]);
    assert_eq!(code, 1);
    let bad: Vec<&serde_json::Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .collect();
    assert!(!bad.is_empty(), "{checks:#}");
    assert!(
        bad.iter()
            .all(|c| c["hint"].as_str().unwrap().contains("policy")),
        "{bad:#?}"
    );
}

/// A jump host whose resolver answers nothing: one line says so, not one per flow; and a
/// server that sends no `Date` leaves the clock "not checked", not passed.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_says_a_dead_resolver_once_and_an_unchecked_clock_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("none.pem");
    std::fs::write(&ca, "").unwrap();
    let program = [passerelle_bin().into_os_string()];
    let command = passerelle_tests::harness::with_closed_dns(dir.path(), &[], &program);
    let (code, checks, stderr) = doctor_in(command, dir.path(), "", &ca, &[]);
    assert_eq!(code, 1, "{stderr}");
    let dns: Vec<&serde_json::Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "dns")
        .collect();
    assert_eq!(dns.len(), 1, "{dns:#?}");
    assert!(
        dns[0]["hint"]
            .as_str()
            .unwrap()
            .contains("resolves no name"),
        "{dns:#?}"
    );

    // A port-80 service that answers without a Date header.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = bounded(s.read(&mut buf)).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let config = format!(
        "profile = \"none\"\n[[flows]]\nid = \"plain\"\nhosts = [\"plain.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"plain.test:80={addr}\"]\n"
    );
    let (code, checks, stderr) = doctor(dir.path(), &config, &ca, &[]);
    let clock: Vec<&serde_json::Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "clock")
        .collect();
    assert_eq!(code, 0, "{stderr}{checks:#}");
    assert_eq!(clock.len(), 1, "{checks:#}");
    assert_eq!(clock[0]["state"], "skipped");
    assert!(clock[0]["detail"].as_str().unwrap().contains("no Date"));
}

#[tokio::test(flavor = "multi_thread")]
async fn syslog_over_a_local_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    let target = format!("unix:{}", path.display());
    let gw = TestGateway::start_with_env(
        "[audit]\nformat = \"squid\"\n",
        &[
            ("PASSERELLE__AUDIT__SINK", "syslog"),
            ("PASSERELLE__AUDIT__SYSLOG", &target),
        ],
    )
    .await;
    assert_eq!(
        curl(&["-x", &gw.proxy(), "https://evil.example/"])
            .await
            .connect_status,
        403
    );
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("a datagram")
        .unwrap();
    let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(datagram.starts_with("<132>1 "), "{datagram}");
    assert!(
        datagram.contains(" TCP_DENIED/403 0 CONNECT evil.example:443 "),
        "{datagram}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_chain_runs_across_restarts_and_shows_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("audit.key");
    std::fs::write(&key, b"sixteen bytes or more of key material").unwrap();
    let config = format!("[audit]\nkey_file = \"{}\"\n", key.display());
    // Two runs on the same file: the second continues the first's chain.
    for run in 0..2 {
        let gw = Running::start(dir.path(), &config).await;
        curl(&["-x", &gw.proxy(), &format!("http://refused-{run}.example/")]).await;
        passerelle_tests::harness::wait_records(&gw.audit, run + 1).await;
        assert_eq!(gw.stop().await, 0);
    }
    let audit = dir.path().join("audit.jsonl");
    let all = passerelle_tests::harness::read_audit_all(&audit);
    let starts: Vec<&serde_json::Value> = all.iter().filter(|r| r["event"] == "start").collect();
    assert_eq!(starts.len(), 2, "{all:?}");
    assert_eq!(starts[1]["chain_from"], all[1]["chain"], "{all:?}");
    let verify = |key: Option<&Path>| {
        let mut cmd = Command::new(passerelle_bin());
        cmd.args(["audit", "verify", "--json"]).arg(&audit);
        if let Some(key) = key {
            cmd.arg("--key-file").arg(key);
        }
        let out = cmd.output().unwrap();
        let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), verdict)
    };
    let (code, verdict) = verify(Some(&key));
    assert_eq!(code, Some(0), "{verdict}");
    assert_eq!(verdict["records"], 4);
    // The chain as written follows the README's arithmetic, redone by Python's hashlib/hmac.
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/audit");
    let independent = Command::new("python3")
        .arg(vectors.join("make-vectors.py"))
        .arg("--verify")
        .arg(&audit)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        independent.status.success(),
        "Python's HMAC-SHA-256 does not follow the chain: {}",
        String::from_utf8_lossy(&independent.stdout)
    );
    assert!(String::from_utf8_lossy(&independent.stdout).contains("4 records follow"));
    // Without the key, a keyed chain does not verify: forging it needs the key.
    assert_eq!(verify(None).0, Some(1));
    // An edited record is named, with its line.
    let text = std::fs::read_to_string(&audit).unwrap();
    std::fs::write(
        &audit,
        text.replacen("refused-0.example", "harmless.example", 1),
    )
    .unwrap();
    let (code, verdict) = verify(Some(&key));
    assert_eq!(code, Some(1));
    assert_eq!(verdict["problem"]["kind"], "edited", "{verdict}");
    assert_eq!(verdict["problem"]["line"], 2, "{verdict}");
    // report states the verdict at its top.
    let out = Command::new(passerelle_bin())
        .args(["report", "--key-file"])
        .arg(&key)
        .arg(&audit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("AUDIT CHAIN BROKEN at "), "{text}");
    // ... and in its exit code, for the scripts that run it.
    assert_eq!(out.status.code(), Some(1), "{text}");
}

/// Chains computed by Python's hashlib and hmac from the README's description
/// (`tests/data/audit/make-vectors.py`), kept as test data: `audit verify` finds them intact,
/// the keyed one only with its key, and names the record a test edits.
#[test]
fn chains_computed_elsewhere_verify() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/audit");
    let verify = |file: &Path, key: Option<&Path>| {
        let mut cmd = Command::new(passerelle_bin());
        cmd.args(["audit", "verify", "--json"]).arg(file);
        if let Some(key) = key {
            cmd.arg("--key-file").arg(key);
        }
        let out = cmd.output().unwrap();
        let verdict: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), verdict)
    };
    let plain = data.join("chain-sha256.jsonl");
    let keyed = data.join("chain-hmac.jsonl");
    let key = data.join("chain.key");
    let (code, verdict) = verify(&plain, None);
    assert_eq!(
        (code, verdict["records"].as_u64()),
        (Some(0), Some(4)),
        "{verdict}"
    );
    let (code, verdict) = verify(&keyed, Some(&key));
    assert_eq!(
        (code, verdict["records"].as_u64()),
        (Some(0), Some(4)),
        "{verdict}"
    );
    assert_eq!(
        verify(&keyed, None).0,
        Some(1),
        "a keyed chain verified without its key"
    );
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("edited.jsonl");
    let text = std::fs::read_to_string(&plain).unwrap();
    assert!(text.contains("\"bytes_down\":53211"));
    std::fs::write(
        &edited,
        text.replacen("\"bytes_down\":53211", "\"bytes_down\":5321", 1),
    )
    .unwrap();
    let (code, verdict) = verify(&edited, None);
    assert_eq!(code, Some(1));
    assert_eq!(verdict["problem"]["kind"], "edited", "{verdict}");
    assert_eq!(verdict["problem"]["seq"], 2, "{verdict}");
}

/// The status page, opened in Chromium as an administrator would: the scripts ran under the
/// page's own Content-Security-Policy without a console message, and the tables show the
/// traffic that went through, in the browser's language.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_in_chromium() {
    let origin = HttpOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A second flow whose server is down: allowed, then failed.
    let closed = passerelle_tests::harness::free_port();
    let config = format!(
        "[[flows]]\nid = \"site\"\nhosts = [\"site.test\"]\nports = [80]\n\
         [[flows]]\nid = \"broken\"\nhosts = [\"broken.test\"]\nports = [80]\n\
         [resolve]\nconnect_to = [\"site.test:80={}\", \"broken.test:80=127.0.0.1:{closed}\"]\n",
        origin.addr
    );
    let gw = Running::with_env(
        dir.path(),
        &config,
        &[("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")],
    )
    .start()
    .await;
    let admin = gw.admin().await;
    for _ in 0..2 {
        assert_eq!(
            curl(&["-x", &gw.proxy(), "http://site.test/"]).await.status,
            200
        );
    }
    assert_eq!(
        curl(&["-x", &gw.proxy(), "http://evil.example/"])
            .await
            .status,
        403
    );
    let failed = curl(&["-x", &gw.proxy(), "http://broken.test/"]).await;
    assert_eq!(failed.status, 502);
    let failed_id = failed.request_id().unwrap();
    let reload = curl(&[
        "-X",
        "POST",
        "-H",
        "X-Passerelle-Reload: 1",
        &format!("{admin}/reload"),
    ])
    .await;
    // Answered once decided: the new digest, or every problem with the old configuration kept.
    assert_eq!(reload.status, 200, "{reload:?}");
    assert!(
        reload
            .body
            .starts_with("reloaded: the configuration's digest is now "),
        "{}",
        reload.body
    );
    let file = dir.path().join("passerelle.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!("{good}\n[limits]\nconnect_timeout = \"soon\"\n"),
    )
    .unwrap();
    let refused = curl(&[
        "-X",
        "POST",
        "-H",
        "X-Passerelle-Reload: 1",
        &format!("{admin}/reload"),
    ])
    .await;
    assert_eq!(refused.status, 422, "{refused:?}");
    assert!(
        refused.body.contains("limits.connect_timeout"),
        "{}",
        refused.body
    );
    assert!(
        refused.body.contains("the running configuration stays"),
        "{}",
        refused.body
    );
    std::fs::write(&file, good).unwrap();
    // The reload is recorded once it ran: wait for it in the data the page draws.
    wait_until(Duration::from_secs(10), || async {
        let status: serde_json::Value =
            serde_json::from_str(&curl(&[&format!("{admin}/status.json")]).await.body).unwrap();
        match status["reloads"].as_array().is_some_and(|r| !r.is_empty()) {
            true => Ok(()),
            false => Err(format!("reload never recorded: {status}")),
        }
    })
    .await;

    let page = browser::render(&format!("{admin}/"), "en-US").await;
    assert!(page.console.is_empty(), "console: {:#?}", page.console);
    assert!(page.dom.contains("data-loaded=\"yes\""), "{}", page.dom);
    let row = |table: &str| -> String {
        let start = page.dom.find(&format!("id=\"{table}\"")).expect(table);
        let body = &page.dom[start..];
        body[body.find("<tbody>").unwrap()..body.find("</tbody>").unwrap()].to_string()
    };
    let flows = row("flows");
    assert!(
        flows.contains("<td>site</td><td class=\"num\">2</td><td class=\"num\">0</td>"),
        "{flows}"
    );
    let refusals = row("refusals");
    assert!(
        refusals.contains("evil.example:80") && refusals.contains("no_flow"),
        "{refusals}"
    );
    assert!(row("reloads").contains("accepted"));
    // The failure of an allowed request: its own list, its flow's count.
    let failures = row("failures");
    assert!(
        failures.contains("broken.test:80")
            && failures.contains("<td>broken</td>")
            && failures.contains("connect_failed")
            && failures.contains(&failed_id),
        "{failures}"
    );
    assert!(
        flows.contains("<td>broken</td><td class=\"num\">1</td><td class=\"num\">0</td><td class=\"num warn\">1</td>"),
        "{flows}"
    );
    assert!(page.dom.contains("<rect") && page.dom.contains("class=\"refused\""));
    assert!(page.dom.contains("Last refusals"));
    assert!(row("parents").contains("No parent proxy configured"));

    let french = browser::render(&format!("{admin}/"), "fr-FR").await;
    assert!(french.console.is_empty(), "console: {:#?}", french.console);
    assert!(french.dom.contains("<html lang=\"fr\"") && french.dom.contains("Derniers refus"));
    assert!(french.dom.contains("acceptée"));
    assert!(french.dom.contains("Derniers échecs"), "{}", french.dom);
    // Both languages fit 1,200 pixels without scrolling sideways, and the French page has no
    // English word left in its tables.
    for lang in ["fr-FR", "en-US"] {
        let narrow = browser::render_at(&format!("{admin}/"), lang, 1200).await;
        assert!(
            narrow.dom.contains("data-fits=\"yes\""),
            "{lang} is wider than 1200 px"
        );
    }
    for english in [">up<", ">none<", ">down<", ">allowed<"] {
        assert!(
            !french.dom.contains(english),
            "{english} on the French page"
        );
    }

    let png = dir.path().join("status.png");
    browser::screenshot(&format!("{admin}/"), "en-US", &png).await;
    let shot = std::fs::read(&png).unwrap();
    assert!(
        shot.starts_with(b"\x89PNG") && shot.len() > 10_000,
        "{} bytes",
        shot.len()
    );
    if let Ok(dir) = std::env::var("PASSERELLE_ARTIFACTS") {
        std::fs::copy(&png, Path::new(&dir).join("status.png")).unwrap();
    }
}

/// `passerelle report --html` opened in Chromium: a self-contained page that runs nothing
/// and logs nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_html_report_in_chromium() {
    let origin = HttpOrigin::start().await;
    let gw = TestGateway::start(&site(&origin)).await;
    curl(&["-x", &gw.proxy(), "http://site.test/"]).await;
    curl(&["-x", &gw.proxy(), "https://evil.example/"]).await;
    let path = gw.audit_path.clone();
    let dir = gw.shutdown().await;
    // In French (the default, as the pages') and in English: the period, the filters and the
    // time zone stated; a chart with its axis, hours and legend; sizes in human units; an
    // empty section says so.
    for (lang, words) in [
        (
            "fr",
            [
                "rapport d'audit",
                "Toutes les heures sont en UTC.",
                "heure (UTC)",
                "Rien sur cette période.",
                "Filtres: aucun",
            ],
        ),
        (
            "en",
            [
                "audit report",
                "All times are UTC.",
                "hour (UTC)",
                "Nothing in this period.",
                "Filters: none",
            ],
        ),
    ] {
        let html = dir.path().join(format!("report-{lang}.html"));
        passerelle_ok([
            OsStr::new("report"),
            OsStr::new("--lang"),
            OsStr::new(lang),
            OsStr::new("--html"),
            html.as_os_str(),
            path.as_os_str(),
        ]);
        let page = browser::render(&format!("file://{}", html.display()), "en-US").await;
        assert!(page.console.is_empty(), "console: {:#?}", page.console);
        assert!(page.dom.contains("evil.example:443") && page.dom.contains("id=\"per-hour\""));
        assert!(
            page.dom.contains(&format!("<html lang=\"{lang}\"")),
            "{}",
            page.dom
        );
        for word in words {
            assert!(
                page.dom.contains(word),
                "{lang}: no {word:?} in {}",
                page.dom
            );
        }
        assert!(page.dom.contains("class=\"legend\""));
        assert!(
            page.dom.contains(" B<") || page.dom.contains("KiB<"),
            "sizes in human units"
        );
    }
}

/// The capacity view follows a known load: three workstations in a visio against a 2 Mbit/s
/// uplink (over it, then within it when one leaves), and a flow's throughput that shows a
/// transfer and falls back to zero once the window has passed it.
#[tokio::test(flavor = "multi_thread")]
async fn the_capacity_view_follows_the_visios_and_the_throughput() {
    use passerelle_tests::harness::{connect_from, metric, wait_metric};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = HttpOrigin::start().await;
    let config = format!(
        "[clients]\nallow = [\"127.0.0.0/8\"]\n[site]\nuplink_mbit = 2\nworkstations = 3\n\
         [[flows]]\nid = \"media\"\nhosts = [\"media.test\"]\nports = [8084]\ntags = [\"visio\"]\n\
         [resolve]\nconnect_to = [\"media.test:8084={}\"]\n",
        origin.addr
    );
    let (gw, admin) = with_admin(&config, &[]).await;
    let mut tunnels = Vec::new();
    for last in [2u8, 3, 4] {
        let mut s = connect_from([127, 0, 0, last], gw.addr).await.unwrap();
        s.write_all(b"CONNECT media.test:8084 HTTP/1.1\r\nHost: media.test:8084\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 64];
        let n = bounded(s.read(&mut head)).await.unwrap();
        assert!(
            head[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&head[..n])
        );
        tunnels.push(s);
    }
    wait_metric(&admin, "passerelle_visio_simultaneous", 3.0).await;
    let status = |body: String| -> serde_json::Value { serde_json::from_str(&body).unwrap() };
    let s = status(curl(&[&format!("{admin}/status.json")]).await.body);
    assert_eq!(s["capacity"]["visios"], 3);
    assert_eq!(
        s["capacity"]["over_uplink"], true,
        "3 visios × 1 Mbit/s > 2 Mbit/s"
    );
    assert_eq!(s["capacity"]["synchronous_mbit"], 6);
    drop(tunnels.pop());
    wait_metric(&admin, "passerelle_visio_simultaneous", 2.0).await;
    let s = status(curl(&[&format!("{admin}/status.json")]).await.body);
    assert_eq!(s["capacity"]["over_uplink"], false);

    // 1 MiB down one tunnel: the flow's throughput shows it, then the window forgets it.
    let mut s = tunnels.pop().unwrap();
    s.write_all(b"GET /bytes/1048576 HTTP/1.1\r\nHost: media.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    bounded(s.read_to_end(&mut got)).await.unwrap();
    assert!(got.len() > 1_048_576);
    let series = "passerelle_flow_throughput_bits_per_second{flow=\"media\",direction=\"down\"}";
    let shown = wait_until(Duration::from_secs(20), || async {
        let shown = metric(&admin, series).await.unwrap_or(0.0);
        (shown > 0.0)
            .then_some(shown)
            .ok_or_else(|| "no throughput shown".to_string())
    })
    .await;
    assert!(
        shown >= 1_048_576.0 * 8.0 / 10.0,
        "1 MiB within 10 s is at least 0.8 Mbit/s: {shown}"
    );
    wait_metric(&admin, series, 0.0).await;
}

/// Squid's ACL denies the destination doctor probes the parent with (a plain `deny`, so a
/// 403): doctor checks every flow all the same, the parent passes as reachable, the refused
/// destination's line names the parent's policy, and the other flow goes through it with the
/// gateway's account. (A 407 for a destination before the account was ever accepted cannot be
/// told from a wrong password: that one is the credentials' failure, as it must be.)
#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_every_flow_when_the_parent_refuses_one() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsOrigin::start(&["denied.test", "open.test"], dir.path()).await;
    let squid = passerelle_tests::peers::Squid::forbidding(
        passerelle_tests::peers::SquidAuth::Basic(&[("svc", "Pa55")]),
        &["denied.test", "open.test"],
        &["denied.test"],
    )
    .await;
    let port = tls.addr.port();
    let config = format!(
        "profile = \"none\"\n[routing]\ndefault = \"upstream\"\n\
         [[flows]]\nid = \"denied\"\nhosts = [\"denied.test\"]\nports = [{port}]\ntls_ports = [{port}]\n\
         [[flows]]\nid = \"open\"\nhosts = [\"open.test\"]\nports = [{port}]\ntls_ports = [{port}]\n\
         [[upstream]]\nurl = \"{}\"\nauth = \"basic\"\nuser = \"svc\"\npassword_env = \"PW\"\n",
        squid.url()
    );
    let (code, checks, stderr) = doctor(dir.path(), &config, &tls.ca_pem, &[("PW", "Pa55")]);
    assert_eq!(code, 1, "{stderr}\n{checks:#}");
    let all = checks.as_array().unwrap();
    let parent = all.iter().find(|c| c["check"] == "parent").unwrap();
    assert_eq!(parent["ok"], true, "{parent:#}");
    assert!(
        parent["detail"]
            .as_str()
            .unwrap()
            .contains("its policy refused the probe"),
        "{parent:#}"
    );
    let line = |check: &str, host: &str| {
        all.iter()
            .find(|c| c["check"] == check && c["target"].as_str().unwrap().starts_with(host))
            .unwrap_or_else(|| panic!("no {check} line for {host}: {checks:#}"))
    };
    let denied = line("tcp", "denied.test");
    assert_eq!(denied["ok"], false, "{denied:#}");
    assert!(
        denied["hint"]
            .as_str()
            .unwrap()
            .contains("policy refuses denied.test"),
        "{denied:#}"
    );
    assert_eq!(line("tcp", "open.test")["ok"], true, "{checks:#}");
    assert_eq!(line("tls", "open.test")["ok"], true, "{checks:#}");
    assert!(all.iter().all(|c| c["state"] != "skipped"), "{checks:#}");
}
