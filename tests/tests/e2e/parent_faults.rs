//! Faults through the parent: request bodies delivered whole or refused (never emptied),
//! slow answers neither cut nor sent twice, nothing queued behind the first handshake,
//! readiness that tells the truth, early answers that reach the client. Against the NTLM
//! parent (pyspnego, Squid-like on bodies after a 407) and a real Squid (`ntlm_fake_auth`).

use std::net::SocketAddr;
use std::time::Duration;

use passerelle_tests::harness::{curl, load_config, Running, TestGateway};
use passerelle_tests::origin::{fnv1a, HttpOrigin, FNV_OFFSET};
use passerelle_tests::peers::{NtlmParent, Squid, SquidAuth};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: (&str, &str, &str) = ("CHU", "svc-covotem", "Corr3ct-Horse");

/// `origin.test` on the origin's port, reached through `parents` (NTLM, the right password).
fn through_parents(origin: &HttpOrigin, parents: &[String], extra: &str) -> String {
    let mut text = format!(
        "[routing]\ndefault = \"upstream\"\n{extra}\n[[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [{}]\n",
        origin.addr.port()
    );
    for url in parents {
        text.push_str(&format!(
            "\n[[upstream]]\nurl = \"{url}\"\nauth = \"ntlm\"\nuser = 'CHU\\svc-covotem'\npassword_env = \"PW\"\n"
        ));
    }
    text
}

fn origin_map(origin: &HttpOrigin) -> (String, SocketAddr) {
    (format!("origin.test:{}", origin.addr.port()), origin.addr)
}

/// A file of `n` bytes of a varied pattern, and its FNV-1a as the origin reports it.
fn upload(dir: &std::path::Path, n: usize) -> (std::path::PathBuf, String) {
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let path = dir.join(format!("upload-{n}"));
    std::fs::write(&path, &data).unwrap();
    (path, format!("{:016x}", fnv1a(&data, FNV_OFFSET)))
}

async fn post(proxy: &str, file: &std::path::Path, url: &str) -> passerelle_tests::harness::Curl {
    curl(&[
        "-x",
        proxy,
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        url,
    ])
    .await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_post_first_after_start_and_after_reload_arrives_whole() {
    let origin = HttpOrigin::start().await;
    let (key, addr) = origin_map(&origin);
    let parent = NtlmParent::start(&[USER], &[(&key, addr)], false).await;
    let config = through_parents(&origin, &[parent.url()], "");
    let gw = TestGateway::start_with_env(&config, &[("PW", USER.2)]).await;
    let (file, fnv) = upload(gw.dir.path(), 2 * 1024 * 1024);
    let url = format!("http://origin.test:{}/upload", origin.addr.port());

    let r = post(&gw.proxy(), &file, &url).await;
    assert_eq!(r.status, 200, "{r:?}");
    let got = json(&r.body);
    assert_eq!(
        got["body_len"],
        2 * 1024 * 1024,
        "the first large POST was emptied"
    );
    assert_eq!(got["body_fnv"], fnv.as_str());

    let reloaded = load_config(&config, &gw.dir, &[("PW", USER.2)]);
    gw.gateway().reload(reloaded, "test").await.unwrap();
    let r = post(&gw.proxy(), &file, &url).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        json(&r.body)["body_fnv"],
        fnv.as_str(),
        "the first large POST after a reload was emptied"
    );
    let seen = origin.seen_for("/upload");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.body_fnv == fnv), "{seen:?}");
    // No leg but the one that could succeed carried the body.
    let legs: Vec<Value> = parent
        .events()
        .into_iter()
        .filter(|e| e["event"] == "request")
        .collect();
    let with_body = legs
        .iter()
        .filter(|l| l["body_len"].as_u64().unwrap_or(0) > 0)
        .count();
    assert_eq!(with_body, 2, "{legs:?}");
    let records = gw.records(2).await;
    let uploads: Vec<&Value> = records.iter().filter(|r| r["path"] == "/upload").collect();
    assert!(
        uploads
            .iter()
            .all(|r| r["bytes_up"] == 2 * 1024 * 1024 && r["status"] == 200),
        "{uploads:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn squid_demanding_ntlm_gets_100k_and_3m_posts_on_fresh_connections() {
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(SquidAuth::FakeNtlm, &["origin.test"]).await;
    let config = through_parents(&origin, &[squid.url()], "");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://origin.test:{}/upload", origin.addr.port());
    for size in [100 * 1024, 3 * 1024 * 1024] {
        // A new gateway each time: the parent's scheme is unknown and the connection fresh.
        let gw = TestGateway::start_with_env(&config, &[("PW", USER.2)]).await;
        let (file, fnv) = upload(dir.path(), size);
        let r = post(&gw.proxy(), &file, &url).await;
        assert_eq!(r.status, 200, "{size} bytes: {r:?}");
        assert_eq!(json(&r.body)["body_fnv"], fnv.as_str(), "{size} bytes");
        // Then one on a fresh connection to a parent whose scheme is known.
        let reloaded = load_config(&config, &gw.dir, &[("PW", USER.2)]);
        gw.gateway().reload(reloaded, "test").await.unwrap();
        let r = post(&gw.proxy(), &file, &url).await;
        assert_eq!(r.status, 200, "{size} bytes after a reload: {r:?}");
        assert_eq!(json(&r.body)["body_fnv"], fnv.as_str());
        let rec = gw.record_for("origin.test").await;
        assert_eq!(rec["route"], squid.url());
    }
    let seen = origin.seen_for("/upload");
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_answer_through_two_parents_is_answered_once() {
    let origin = HttpOrigin::start().await;
    let (key, addr) = origin_map(&origin);
    let first = NtlmParent::start(&[USER], &[(&key, addr)], false).await;
    let second = NtlmParent::start(&[USER], &[(&key, addr)], false).await;
    let config = through_parents(
        &origin,
        &[first.url(), second.url()],
        // Long enough for the Python parent's NTLM legs on a loaded machine; the answers below
        // take longer.
        "[limits]\nconnect_timeout = \"2s\"\n",
    );
    let gw = TestGateway::start_with_env(
        &config,
        &[("PW", USER.2), ("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")],
    )
    .await;
    let admin = format!("http://{}", gw.gateway().admin_addr().unwrap());
    let base = format!("http://origin.test:{}", origin.addr.port());
    // Slower than the connect timeout, on a fresh parent connection, then on a pooled one.
    for path in ["/delay/3000", "/delay/3100"] {
        let r = curl(&["-x", &gw.proxy(), &format!("{base}{path}")]).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(
            origin.seen_for(path).len(),
            1,
            "{path} reached the origin twice"
        );
    }
    let r = curl(&[
        "-x",
        &gw.proxy(),
        "-d",
        "once",
        &format!("{base}/delay/3200"),
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        origin.seen_for("/delay/3200").len(),
        1,
        "a slow POST was sent twice"
    );
    assert!(first.count("request") > 0);
    assert_eq!(
        second.count("request"),
        0,
        "a healthy parent was failed over"
    );
    let ready = curl(&[&format!("{admin}/readyz")]).await;
    assert_eq!(ready.status, 200, "{ready:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_request_is_not_held_behind_a_slow_first_handshake() {
    let origin = HttpOrigin::start().await;
    let (key, addr) = origin_map(&origin);
    let parent = NtlmParent::start(&[USER], &[(&key, addr)], false).await;
    let config = through_parents(&origin, &[parent.url()], "");
    let gw = TestGateway::start_with_env(&config, &[("PW", USER.2)]).await;
    let base = format!("http://origin.test:{}", origin.addr.port());
    let proxy = gw.proxy();
    let slow_url = format!("{base}/delay/8000");
    let slow = tokio::spawn(async move { curl(&["-x", &proxy, &slow_url]).await });
    // The slow request's handshake is done once the origin holds it.
    let seen = origin.wait_seen(1).await;
    assert_eq!(seen.len(), 1, "the slow request never reached the origin");
    let small = curl(&["-x", &gw.proxy(), &format!("{base}/small")]).await;
    assert_eq!(small.status, 200, "{small:?}");
    assert!(
        !slow.is_finished(),
        "the small request was answered only after the slow one"
    );
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_recovers_with_the_first_success_and_notices_an_idle_parent_dying() {
    let origin = HttpOrigin::start().await;
    let (key, addr) = origin_map(&origin);
    let parent = NtlmParent::start(&[USER], &[(&key, addr)], false).await;
    let port = parent.addr.port();
    let config = through_parents(&origin, &[parent.url()], "").replace(
        "password_env = \"PW\"\n",
        "password_env = \"PW\"\ndown_cooldown = \"10m\"\nhealth_interval = \"200ms\"\n",
    );
    let gw = TestGateway::start_with_env(
        &config,
        &[("PW", USER.2), ("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")],
    )
    .await;
    let admin = format!("http://{}", gw.gateway().admin_addr().unwrap());
    let url = format!("http://origin.test:{}/", origin.addr.port());
    assert_eq!(curl(&["-x", &gw.proxy(), &url]).await.status, 200);

    // The parent dies while nobody uses it: readiness says so without traffic.
    drop(parent);
    wait_for_status(&format!("{admin}/readyz"), 503).await;

    // It comes back: the first request through it succeeds, and readiness follows at once
    // (not after the 10-minute cool-down).
    let parent = NtlmParent::start_on(port, &[USER], &[(&key, addr)], false).await;
    let r = curl(&["-x", &gw.proxy(), &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let ready = curl(&[&format!("{admin}/readyz")]).await;
    assert_eq!(ready.status, 200, "{ready:?}");
    drop(parent);
}

/// Polls `url` (bounded) until it answers `status`.
async fn wait_for_status(url: &str, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = curl(&[url]).await;
        if r.status == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} never answered {status}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_parent_whose_name_does_not_resolve_fails_over() {
    let origin = HttpOrigin::start().await;
    let (key, addr) = origin_map(&origin);
    let parent = NtlmParent::start(&[USER], &[(&key, addr)], false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = through_parents(
        &origin,
        &["http://parent-gone.test:3128".to_string(), parent.url()],
        "",
    );
    // A resolver that answers nothing: no query leaves the machine.
    let gw = Running::with_env(dir.path(), &config, &[("PW", USER.2)])
        .closed_dns(&[])
        .start()
        .await;
    let url = format!("http://origin.test:{}/", origin.addr.port());
    let r = curl(&["-x", &gw.proxy(), &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let records = passerelle_tests::harness::wait_records(&gw.audit, 1).await;
    assert_eq!(records[0]["route"], parent.url(), "{records:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parent_failures_name_the_parent_and_are_502_not_400() {
    let origin = HttpOrigin::start().await;
    let url = format!("http://origin.test:{}/", origin.addr.port());
    // A parent that closes the connection between its NTLM challenge and our answer: its
    // fault, a 502 with a parent reason, never a 400 blamed on the client.
    let broken = NtlmParent::start_with(&[USER], &[], &["--close-after-challenge"]).await;
    let gw = TestGateway::start_with_env(
        &through_parents(&origin, &[broken.url()], ""),
        &[("PW", USER.2)],
    )
    .await;
    let r = curl(&["-x", &gw.proxy(), &url]).await;
    assert_eq!(r.status, 502, "{r:?}");
    let rec = gw.record_for("origin.test").await;
    assert_eq!(rec["reason"], "parent_protocol", "{rec}");
    assert_eq!(rec["route"], broken.url(), "{rec}");

    // Refused credentials, then the back-off: both records name the parent.
    let parent = NtlmParent::start(&[USER], &[], false).await;
    let gw = TestGateway::start_with_env(
        &through_parents(&origin, &[parent.url()], ""),
        &[("PW", "wrong")],
    )
    .await;
    let r = curl(&["-x", &gw.proxy(), &url]).await;
    assert_eq!(r.status, 502, "{r:?}");
    let rec = gw.record_for("origin.test").await;
    assert_eq!(rec["reason"], "parent_auth_failed", "{rec}");
    assert_eq!(rec["route"], parent.url(), "{rec}");
    let r = curl(&["-x", &gw.proxy(), &url]).await;
    assert_eq!(r.status, 502, "{r:?}");
    let rec = gw.nth_record_for("origin.test", 2).await;
    assert_eq!(rec["route"], parent.url(), "{rec}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_large_post_gets_its_answer_and_the_connection_stays_sane() {
    let origin = HttpOrigin::start().await;
    let config = format!(
        "[[flows]]\nid = \"site\"\nhosts = [\"site.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"site.test:80={}\"]\n",
        origin.addr
    );
    let gw = TestGateway::start(&config).await;
    let body = vec![b'z'; 100 * 1024];
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST http://refused.example/ HTTP/1.1\r\nHost: refused.example\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&body).await;
        wr
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&answer);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if answer.len() >= end + 4 + len {
                            return Ok(());
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the answer came within 10 s");
    assert!(
        read.is_ok(),
        "the connection was reset: {read:?}, got {:?}",
        String::from_utf8_lossy(&answer)
    );
    let text = String::from_utf8_lossy(&answer).to_string();
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    let mut wr = writer.await.unwrap();
    // Either the gateway said it closes, and it closes cleanly, or the connection goes on.
    if text.to_ascii_lowercase().contains("connection: close") {
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut rest)).await;
        assert!(matches!(end, Ok(Ok(_))), "not a clean close: {end:?}");
    } else {
        wr.write_all(b"GET http://site.test/next HTTP/1.1\r\nHost: site.test\r\n\r\n")
            .await
            .unwrap();
        let mut next = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut next))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&next[..n]).starts_with("HTTP/1.1 200"));
    }
    let rec = gw.record_for("refused.example").await;
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["status"], 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_request_cut_by_shutdown_is_audited_as_such() {
    let origin = HttpOrigin::start().await;
    let (key, addr) = origin_map(&origin);
    let parent = NtlmParent::start(&[USER], &[(&key, addr)], false).await;
    let config = through_parents(
        &origin,
        &[parent.url()],
        "[limits]\nshutdown_grace = \"300ms\"\n",
    );
    let gw = TestGateway::start_with_env(&config, &[("PW", USER.2)]).await;
    let proxy = gw.proxy();
    let url = format!("http://origin.test:{}/delay/20000", origin.addr.port());
    let cut = tokio::spawn(async move { curl(&["-x", &proxy, &url]).await });
    origin.wait_seen(1).await;
    let records = gw.stop().await;
    let _ = cut.await;
    let rec = records
        .iter()
        .find(|r| r["path"] == "/delay/20000")
        .expect("a record for the cut request");
    assert_eq!(rec["reason"], "shutdown", "{rec}");
    assert_eq!(rec["route"], parent.url(), "{rec}");
}
