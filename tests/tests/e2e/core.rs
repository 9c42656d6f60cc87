//! The core gateway, in-process, with real curl: forwarding, tunnels, denials, headers,
//! keep-alive, half-close, idle timeout, connect failures.

use std::time::Duration;

use passerelle_tests::harness::{curl, origin_flow, raw_exchange, TestGateway};
use passerelle_tests::origin::{
    closed_port, echo_peer, fnv1a, half_close_peer, silent_peer, HttpOrigin, TlsOrigin, FNV_OFFSET,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn origin_gateway() -> (HttpOrigin, TestGateway) {
    let origin = HttpOrigin::start().await;
    let gw = TestGateway::start(&origin_flow("test-origin", "origin.test", 80, origin.addr)).await;
    (origin, gw)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn forwards_a_get_and_audits_it() {
    let (_origin, gw) = origin_gateway().await;
    let r = curl(&["-x", &gw.proxy(), "http://origin.test/hello/world?q=secret"]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = json(&r.body);
    assert_eq!(seen["method"], "GET");
    assert_eq!(
        seen["uri"], "/hello/world?q=secret",
        "origin-form toward the origin"
    );
    assert_eq!(seen["headers"]["host"][0], "origin.test");
    assert_eq!(seen["headers"]["via"][0], "1.1 passerelle");
    // The forwarded answer carries the request's id, the audit record's `id`.
    let rec = gw.record_of(&r).await;
    assert_eq!(
        Some(rec["id"].as_str().unwrap().to_string()),
        r.request_id()
    );
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["flow"], "test-origin");
    assert_eq!(rec["route"], "direct");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["method"], "GET");
    assert_eq!(rec["scheme"], "http");
    assert_eq!(rec["path"], "/hello/world", "no query string in the audit");
    assert_eq!(rec["bytes_down"].as_u64().unwrap(), r.body.len() as u64);
    assert!(rec["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(rec["seq"].as_u64().unwrap() >= 1);
    assert!(rec["ts"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread")]
async fn post_and_chunked_upload_bodies_arrive_intact() {
    let (_origin, gw) = origin_gateway().await;
    let r = curl(&[
        "-x",
        &gw.proxy(),
        "-d",
        "ocsp-request-bytes",
        "http://origin.test/ocsp",
    ])
    .await;
    let seen = json(&r.body);
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body_len"], 18);
    assert_eq!(
        seen["body_fnv"],
        format!("{:016x}", fnv1a(b"ocsp-request-bytes", FNV_OFFSET))
    );

    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let file = gw.dir.path().join("upload.bin");
    std::fs::write(&file, &data).unwrap();
    let upload = format!("@{}", file.display());
    let r = curl(&[
        "-x",
        &gw.proxy(),
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &upload,
        "http://origin.test/up",
    ])
    .await;
    let seen = json(&r.body);
    assert_eq!(seen["body_len"], 3_000_000);
    assert_eq!(
        seen["body_fnv"],
        format!("{:016x}", fnv1a(&data, FNV_OFFSET))
    );
    assert_eq!(seen["headers"]["transfer-encoding"][0], "chunked");
    let rec = gw.record_of(&r).await;
    assert_eq!(rec["bytes_up"], 3_000_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_never_reach_the_origin_nor_the_client() {
    let (_origin, gw) = origin_gateway().await;
    let r = curl(&[
        "-x",
        &gw.proxy(),
        "-i",
        "-H",
        "Connection: X-Private, keep-alive",
        "-H",
        "X-Private: internal",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "TE: trailers",
        "-H",
        "Trailer: X-T",
        "-H",
        "Upgrade: h2c",
        "-H",
        "Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=",
        "-H",
        "Proxy-Connection: keep-alive",
        "-H",
        "Host: evil.example",
        "-H",
        "X-Kept: yes",
        "http://origin.test/h",
    ])
    .await;
    let (head, body) = r.body.split_once("\r\n\r\n").expect("headers and body");
    let seen = json(body);
    let headers = seen["headers"].as_object().unwrap();
    for gone in [
        "x-private",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !headers.contains_key(gone),
            "{gone} reached the origin: {headers:?}"
        );
    }
    assert_eq!(seen["headers"]["x-kept"][0], "yes");
    assert_eq!(
        seen["headers"]["host"][0], "origin.test",
        "Host comes from the URI"
    );
    let head = head.to_ascii_lowercase();
    assert!(
        !head.contains("x-origin-hop"),
        "a header the origin's Connection named reached the client:\n{head}"
    );
    assert!(head.contains("via: 1.1 passerelle"), "{head}");
    let records = gw.records(1).await;
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains("dXNlcjpzZWNyZXQ") && !text.contains("secret"),
        "client credentials in the audit: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_on_both_sides() {
    let (origin, gw) = origin_gateway().await;
    let r = curl(&[
        "-v",
        "-x",
        &gw.proxy(),
        "http://origin.test/a",
        "http://origin.test/b",
        "http://origin.test/c",
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.stderr.contains("Re-using existing connection") || r.stderr.contains("Reusing existing"),
        "client side not kept alive:\n{}",
        r.stderr
    );
    assert_eq!(origin.connections(), 1, "origin side not kept alive");
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_tunnels_tls_to_the_covotem_server() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsOrigin::start(&["covotem.esante-centre.fr"], dir.path()).await;
    let config = format!(
        "[resolve]\nconnect_to = [\"covotem.esante-centre.fr:443={}\"]\n",
        tls.addr
    );
    let gw = TestGateway::start(&config).await;
    let cacert = tls.ca_pem.display().to_string();
    let r = curl(&[
        "-x",
        &gw.proxy(),
        "--cacert",
        &cacert,
        "https://covotem.esante-centre.fr/",
    ])
    .await;
    assert_eq!((r.connect_status, r.status), (200, 200), "{r:?}");
    assert_eq!(r.body, "hello over TLS from covotem.esante-centre.fr\n");
    let rec = gw.record_of(&r).await;
    assert_eq!(rec["flow"], "tlm-prod");
    assert_eq!(rec["method"], "CONNECT");
    assert_eq!(rec["status"], 200);
    assert!(rec["bytes_up"].as_u64().unwrap() > 200, "{rec}");
    assert!(rec["bytes_down"].as_u64().unwrap() > 500, "{rec}");
    assert_eq!(rec["reason"], Value::Null, "{rec}");
}

/// Asserts the refusal of `url` and returns its record.
async fn assert_denied(
    gw: &TestGateway,
    url: &str,
    connect: bool,
    reason: &str,
    body_part: &str,
) -> Value {
    let r = curl(&["-x", &gw.proxy(), url]).await;
    let status = if connect { r.connect_status } else { r.status };
    assert_eq!(status, 403, "{url}: {r:?}");
    if !connect {
        assert!(
            r.body.contains(body_part),
            "{url}: body {:?} lacks {body_part:?}",
            r.body
        );
    }
    let rec = gw.record_of(&r).await;
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["reason"], reason, "{rec}");
    assert_eq!(rec["status"], 403, "{rec}");
    rec
}

#[tokio::test(flavor = "multi_thread")]
async fn denials_say_why() {
    let gw = TestGateway::start("").await;
    assert_denied(&gw, "https://evil.example/", true, "no_flow", "").await;
    assert_denied(
        &gw,
        "http://evil.example/",
        false,
        "no_flow",
        "passerelle: GET http://evil.example/ refused: no allowed flow matches",
    )
    .await;
    assert_denied(
        &gw,
        "http://covotem.esante-centre.fr:22/",
        false,
        "port_not_open",
        "port 22 is not open for flow tlm-prod",
    )
    .await;
    let rec = assert_denied(
        &gw,
        "http://covotem-preprod.esante-centre.fr/",
        false,
        "flow_disabled",
        "flow tlm-preprod belongs to the preprod environment",
    )
    .await;
    assert_eq!(
        rec["flow"], "tlm-preprod",
        "the partially matching flow is named"
    );

    // The exact body of a refused CONNECT, read with a raw socket.
    let text = raw_exchange(
        gw.addr,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(
        text.contains("passerelle: CONNECT evil.example:443 refused: no allowed flow matches"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_outside_the_allow_list_are_refused() {
    let gw = TestGateway::start("[clients]\nallow = [\"127.0.0.2/32\"]\n").await;
    // Closed at accept: nothing is read, nothing answered.
    let r = curl(&["-x", &gw.proxy(), "http://covotem.esante-centre.fr/"]).await;
    assert_eq!(r.status, 0, "{r:?}");
    let records = gw.records(1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["reason"], "client_not_allowed");
    assert_eq!(records[0]["decision"], "deny");
    assert!(records[0]["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_name_resolving_to_loopback_is_refused_without_allow_private() {
    let origin = HttpOrigin::start().await;
    let port = origin.addr.port();
    let flow = format!("[[flows]]\nid = \"lan\"\nhosts = [\"localhost\"]\nports = [{port}]\n");
    let gw = TestGateway::start(&flow).await;
    let r = curl(&["-x", &gw.proxy(), &format!("http://localhost:{port}/")]).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body
            .contains("an internal address, and flow lan does not allow_private"),
        "{}",
        r.body
    );
    assert_eq!(gw.record_of(&r).await["reason"], "internal_address");
    assert_eq!(origin.connections(), 0, "the origin was reached");

    let gw = TestGateway::start(&format!("{flow}allow_private = true\n")).await;
    let r = curl(&["-x", &gw.proxy(), &format!("http://localhost:{port}/")]).await;
    assert_eq!(r.status, 200, "allow_private lets it through: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_non_proxy_requests() {
    let gw = TestGateway::start("").await;
    let cases: &[(&[u8], &str, &str)] = &[
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400", "this is a proxy"),
        (b"TRACE http://covotem.esante-centre.fr/ HTTP/1.1\r\nHost: covotem.esante-centre.fr\r\n\r\n", "HTTP/1.1 405", "TRACE"),
        (b"GET https://covotem.esante-centre.fr/ HTTP/1.1\r\nHost: covotem.esante-centre.fr\r\n\r\n", "HTTP/1.1 400", "CONNECT"),
        (b"GET http://user:pw@covotem.esante-centre.fr/ HTTP/1.1\r\nHost: covotem.esante-centre.fr\r\n\r\n", "HTTP/1.1 400", "user information"),
        (b"CONNECT covotem.esante-centre.fr HTTP/1.1\r\nHost: covotem.esante-centre.fr\r\n\r\n", "HTTP/1.1 400", ""),
        (b"GET ftp://covotem.esante-centre.fr/ HTTP/1.1\r\nHost: covotem.esante-centre.fr\r\n\r\n", "HTTP/1.1 400", "ftp"),
    ];
    for (request, status, text) in cases {
        let response = raw_exchange(gw.addr, request).await;
        assert!(
            response.starts_with(status),
            "{}: {response}",
            String::from_utf8_lossy(request)
        );
        assert!(
            response.contains(text),
            "{}: {response}",
            String::from_utf8_lossy(request)
        );
    }
}

/// A CONNECT to `target` through the gateway at `gw`, answered 200.
async fn open_tunnel(gw: std::net::SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn tunnels_pass_half_close_on() {
    let peer = half_close_peer().await;
    let gw = TestGateway::start(&origin_flow("raw", "raw.test", 7000, peer)).await;
    let mut s = open_tunnel(gw.addr, "raw.test:7000").await;
    s.write_all(&[7u8; 5000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, "got 5000 bytes");
    let rec = gw.record_for("raw.test").await;
    assert_eq!(rec["bytes_up"], 5000);
    assert_eq!(rec["bytes_down"], 14);
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_through_a_tunnel_arrives_whole_both_ways() {
    // A few bytes first (the small-read path), then 12 MiB (the kernel's splice path) up and,
    // echoed, down at the same time, then the half-close.
    let peer = echo_peer().await;
    let gw = TestGateway::start(&origin_flow("raw", "raw.test", 7000, peer)).await;
    let s = open_tunnel(gw.addr, "raw.test:7000").await;
    let mut data = b"hello".to_vec();
    data.extend((0..12u32 * 1024 * 1024).map(|i| (i % 251) as u8));
    let (mut r, mut w) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent[..5]).await.unwrap();
        w.write_all(&sent[5..]).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
        .await
        .expect("the echo ends within 60 s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the bytes came back altered");
    let rec = gw.record_for("raw.test").await;
    assert_eq!(rec["bytes_up"], data.len());
    assert_eq!(rec["bytes_down"], data.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_tunnels_are_closed_after_the_flow_idle_timeout() {
    let peer = silent_peer().await;
    let gw = TestGateway::start(&format!(
        "{}\n",
        origin_flow("quiet", "quiet.test", 7001, peer)
            .replace("ports = [7001]", "ports = [7001]\nidle_timeout = \"1s\"")
    ))
    .await;
    let mut s = open_tunnel(gw.addr, "quiet.test:7001").await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed by the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(gw.record_for("quiet.test").await["reason"], "idle_timeout");
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failures_name_the_hop() {
    let closed = closed_port();
    let gw = TestGateway::start(&origin_flow("down", "down.test", 443, closed)).await;
    let r = curl(&["-x", &gw.proxy(), "http://down.test:443/"]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.body
            .contains(&format!("cannot connect to origin {closed}")),
        "{}",
        r.body
    );
    let rec = gw.record_of(&r).await;
    assert_eq!(
        (rec["reason"].as_str(), rec["status"].as_u64()),
        (Some("connect_failed"), Some(502))
    );
    let r = curl(&["-x", &gw.proxy(), "https://down.test/"]).await;
    assert_eq!(
        r.connect_status, 502,
        "no 200 for a tunnel that cannot exist: {r:?}"
    );
}

/// An origin that never answers the connection is a 504 `connect_timeout` within
/// `limits.connect_timeout`; one that accepts and never answers the request, a 504
/// `response_timeout` within the flow's idle timeout.
#[tokio::test(flavor = "multi_thread")]
async fn connect_and_response_timeouts_are_504s_with_their_reason() {
    let unanswering = passerelle_tests::origin::Unanswering::start();
    let dropping = unanswering.addr;
    let silent = passerelle_tests::origin::silent_peer().await;
    let gw = TestGateway::start(&format!(
        "[[flows]]\nid = \"dropping\"\nhosts = [\"dropping.test\"]\nports = [80, 8443]\n\
         [[flows]]\nid = \"silent\"\nhosts = [\"silent.test\"]\nports = [80]\nidle_timeout = \"1s\"\n\
         [resolve]\nconnect_to = [\"dropping.test:80={dropping}\", \"dropping.test:8443={dropping}\", \"silent.test:80={silent}\"]\n\
         [limits]\nconnect_timeout = \"1s\"\n"
    ))
    .await;
    let r = curl(&["-x", &gw.proxy(), "http://dropping.test/"]).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(r.body.contains("timed out"), "{}", r.body);
    let rec = gw.record_of(&r).await;
    assert_eq!(
        (rec["reason"].as_str(), rec["status"].as_u64()),
        (Some("connect_timeout"), Some(504))
    );
    let r = curl(&["-x", &gw.proxy(), "https://dropping.test:8443/"]).await;
    assert_eq!(
        r.connect_status, 504,
        "no 200 for a tunnel that cannot exist: {r:?}"
    );

    let r = curl(&["-x", &gw.proxy(), "http://silent.test/"]).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        r.body.contains("no answer from the origin within 1s"),
        "{}",
        r.body
    );
    let rec = gw.record_of(&r).await;
    assert_eq!(
        (rec["reason"].as_str(), rec["status"].as_u64()),
        (Some("response_timeout"), Some(504))
    );
}

/// A name that does not resolve is a 502 `dns_failed` naming it. The gateway's resolver
/// answers from a hosts file of the test's only: the lookup fails on this machine, no query
/// leaves it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unresolvable_name_is_a_502_dns_failed() {
    let dir = tempfile::tempdir().unwrap();
    let gw = passerelle_tests::harness::Running::with_env(
        dir.path(),
        "[[flows]]\nid = \"nowhere\"\nhosts = [\"nowhere.test\"]\nports = [80]\n",
        &[],
    )
    .closed_dns(&[])
    .start()
    .await;
    let r = curl(&["-x", &gw.proxy(), "http://nowhere.test/"]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.body.contains("cannot resolve nowhere.test"), "{}", r.body);
    let rec = passerelle_tests::harness::record_with_id(&gw.audit, &r.request_id().unwrap()).await;
    assert_eq!(rec["reason"], "dns_failed", "{rec}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_a_download_in_flight_finish_and_writes_every_record() {
    let (origin, gw) = origin_gateway().await;
    let proxy = gw.proxy();
    let download = tokio::spawn(async move {
        curl(&[
            "-x",
            &proxy,
            "-o",
            "/dev/null",
            "http://origin.test/slow/10",
        ])
        .await
    });
    assert_eq!(
        origin.wait_seen(1).await.len(),
        1,
        "the download never started"
    );
    let addr = gw.addr;
    let stopping = tokio::spawn(gw.stop());
    // The stop began (the listener is closed) while the origin was still sending: the
    // download was in flight.
    passerelle_tests::harness::wait_until(Duration::from_secs(10), || async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => Ok(()),
            Ok(_) => Err("the listener still accepts".to_string()),
        }
    })
    .await;
    assert_eq!(
        origin.finished(),
        0,
        "the download had ended before the stop"
    );
    let records = stopping.await.unwrap();
    let r = download.await.unwrap();
    assert_eq!((r.status, r.exit), (200, 0), "{r:?}");
    let rec = records
        .iter()
        .find(|r| r["path"] == "/slow/10")
        .expect("the record of the download");
    assert_eq!(rec["bytes_down"], 10 * 1024);
    assert_eq!(rec["reason"], Value::Null, "{rec}");
}

async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("head in time")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn refusal_pages_a_person_can_act_on() {
    let gw =
        TestGateway::start("[pages]\ncontact = \"Service informatique, poste <1234>\"\n").await;
    // A browser in English: an HTML page, its id the audit's, nothing loaded from outside.
    let page = curl(&[
        "-x",
        &gw.proxy(),
        "-H",
        "Accept: text/html,application/xhtml+xml",
        "-H",
        "Accept-Language: en-GB,en;q=0.9,fr;q=0.5",
        "http://evil.example/it's&more",
    ])
    .await;
    let text = page.body.clone();
    assert_eq!(page.status, 403, "{page:?}");
    let head = page.heads.to_ascii_lowercase();
    let id = page.request_id().expect("the request id header");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(
        text.contains("Access refused") && text.contains("this destination is in no allowed flow"),
        "{text}"
    );
    assert!(text.contains(&id), "{text}");
    assert!(
        text.contains("Service informatique, poste &lt;1234&gt;"),
        "{text}"
    );
    assert!(
        text.contains("it's&amp;more") && !text.contains("&more<"),
        "unescaped: {text}"
    );
    let record = gw.record_of(&page).await;
    assert_eq!(record["reason"], "no_flow");
    // curl, no Accept: plain text, in the configured language (French), the technical line
    // first.
    let plain = curl(&["-x", &gw.proxy(), "http://evil.example/"]).await;
    assert!(
        plain.body.starts_with(
            "passerelle: GET http://evil.example/ refused: no allowed flow matches\nAccès refusé."
        ),
        "{}",
        plain.body
    );
    assert!(
        plain.body.contains("Contact: Service informatique"),
        "{}",
        plain.body
    );
    // A CONNECT refusal carries the id too (clients rarely show its body).
    let connect = curl(&["-x", &gw.proxy(), "-v", "https://evil.example/"]).await;
    assert!(
        connect
            .stderr
            .to_ascii_lowercase()
            .contains("x-passerelle-request-id: "),
        "{}",
        connect.stderr
    );
}
