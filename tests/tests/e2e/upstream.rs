//! Through the corporate proxy: the NTLM parent (NTLMv2 verified by pyspnego) and Squid
//! with Basic authentication; pooling, bodies across the 407 leg, back-off, failover,
//! bypass rules.

use std::net::SocketAddr;

use passerelle_tests::harness::{curl, TestGateway};
use passerelle_tests::origin::{closed_port, HttpOrigin, TlsOrigin};
use passerelle_tests::peers::{NtlmParent, Squid};
use serde_json::Value;

const USER: (&str, &str, &str) = ("CHU", "svc-covotem", "Corr3ct-Horse");

fn parent_config(parents: &[String], auth: &str, secret: &str, extra: &str) -> String {
    let mut text =
        String::from("[routing]\ndefault = \"upstream\"\nbypass_covotem_server = false\n");
    text.push_str(extra);
    for url in parents {
        text.push_str(&format!("\n[[upstream]]\nurl = \"{url}\"\nauth = \"{auth}\"\nuser = 'CHU\\svc-covotem'\n{secret}\n"));
    }
    text
}

fn site_flow(host: &str, port: u16) -> String {
    format!("[[flows]]\nid = \"site\"\nhosts = [\"{host}\"]\nports = [{port}]\n")
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

async fn ntlm_gateway(parent: &NtlmParent, password: &str) -> TestGateway {
    let config = parent_config(
        &[parent.url()],
        "ntlm",
        "password_env = \"TEST_PARENT_PASSWORD\"",
        &site_flow("origin.test", 80),
    );
    TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", password)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn ntlm_forwarded_requests_reuse_one_authenticated_parent_connection() {
    let parent = NtlmParent::start(&[USER], &[], false).await;
    let gw = ntlm_gateway(&parent, USER.2).await;
    let urls: Vec<String> = (0..5).map(|i| format!("http://origin.test/r{i}")).collect();
    let mut args = vec!["-x".to_string(), gw.proxy()];
    args.extend(urls.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = curl(&args).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&["-x", &gw.proxy(), "http://origin.test/again"]).await;
    let seen = json(&r.body);
    assert_eq!(seen["via_parent"], true);
    assert_eq!(seen["user"], "CHU\\svc-covotem");
    assert_eq!(
        seen["target"], "http://origin.test/again",
        "absolute-form toward the parent"
    );
    assert_eq!(
        parent.count("handshake"),
        1,
        "one handshake for six requests: {:?}",
        parent.events()
    );
    let events = parent.events();
    let first = events.iter().find(|e| e["event"] == "request").unwrap();
    assert_eq!(
        first["auth"],
        Value::Null,
        "credentials only after a 407: {first}"
    );
    let answered: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "request" && e["auth"].is_null())
        .collect();
    assert_eq!(
        answered.len(),
        1 + 5,
        "after the handshake, requests ride the authenticated connection: {events:?}"
    );
    let rec = gw.record_for("origin.test").await;
    assert_eq!(rec["route"], parent.url());
    assert_eq!(rec["status"], 200);
    let audit = serde_json::to_string(&gw.records(6).await).unwrap();
    assert!(!audit.contains(USER.2), "the password reached the audit");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_body_goes_only_on_the_leg_that_can_succeed() {
    let parent = NtlmParent::start(&[USER], &[], false).await;
    let gw = ntlm_gateway(&parent, USER.2).await;
    let r = curl(&[
        "-x",
        &gw.proxy(),
        "-H",
        "Content-Type: application/ocsp-request",
        "--data-binary",
        "OCSP-REQUEST-DER",
        "http://origin.test/ocsp",
    ])
    .await;
    let seen = json(&r.body);
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body"], "OCSP-REQUEST-DER");
    let legs: Vec<Value> = parent
        .events()
        .into_iter()
        .filter(|e| e["event"] == "request")
        .collect();
    assert!(legs.len() >= 3, "no 407 legs happened: {legs:?}");
    let (last, before) = legs.split_last().unwrap();
    assert_eq!(last["body_len"], 16, "{legs:?}");
    assert_eq!(last["auth"], "NTLM", "{legs:?}");
    // The first contact announced the body and held it (Expect: 100-continue); the NTLM
    // negotiation carried none.
    assert!(
        before
            .iter()
            .all(|l| l["body_len"].is_null() || l["body_len"] == 0),
        "a leg that could not succeed carried the body: {legs:?}"
    );
    assert_eq!(before[0]["expect"], true, "{legs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_secret_source_authenticates_including_non_ascii_passwords() {
    let non_ascii = ("CHU", "svc-covotem", "Pässwörd-€-ünïcode");
    let parent = NtlmParent::start(&[non_ascii], &[], false).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, format!("{}\n", non_ascii.2)).unwrap();
    let hash_file = dir.path().join("nt-hash");
    let hash: String = passerelle_auth::nt_hash(non_ascii.2)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(&hash_file, hash).unwrap();
    let sources = [
        ("env", "password_env = \"TEST_PARENT_PASSWORD\"".to_string()),
        (
            "file",
            format!("password_file = \"{}\"", password_file.display()),
        ),
        (
            "nt hash",
            format!("nt_hash_file = \"{}\"", hash_file.display()),
        ),
    ];
    for (name, source) in sources {
        let config = parent_config(
            &[parent.url()],
            "ntlm",
            &source,
            &site_flow("origin.test", 80),
        );
        let gw =
            TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", non_ascii.2)]).await;
        let r = curl(&["-x", &gw.proxy(), "http://origin.test/"]).await;
        assert_eq!(r.status, 200, "secret from {name}: {r:?}");
        assert_eq!(json(&r.body)["user"], "CHU\\svc-covotem");
    }
    assert_eq!(parent.count("handshake"), 3);
    assert_eq!(parent.count("auth_failed"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_backs_off_instead_of_locking_the_account() {
    let parent = NtlmParent::start(&[USER], &[], false).await;
    let gw = ntlm_gateway(&parent, "wrong-password").await;
    for i in 0..50 {
        let r = curl(&["-x", &gw.proxy(), &format!("http://origin.test/{i}")]).await;
        assert_eq!(r.status, 502, "{r:?}");
        assert!(
            r.body.contains("parent refused the gateway's credentials")
                || r.body
                    .contains("the gateway's account CHU\\svc-covotem was refused"),
            "{}",
            r.body
        );
        assert!(!r.body.contains("wrong-password"));
    }
    assert_eq!(
        parent.count("auth_failed"),
        1,
        "50 requests in back-off made more than one attempt: {:?}",
        parent.events()
    );
    // The one attempt's request is refused by the parent; the account is held at once and
    // the other 49 fail without presenting it; one account record says so.
    let records = gw.records(51).await;
    let requests: Vec<&Value> = records.iter().filter(|r| r["event"] == "request").collect();
    assert_eq!(requests.len(), 50);
    assert_eq!(requests[0]["reason"], "parent_auth_failed", "{records:?}");
    assert!(
        requests[1..]
            .iter()
            .all(|r| r["reason"] == "account_refused"),
        "{records:?}"
    );
    let account: Vec<&Value> = records.iter().filter(|r| r["event"] == "account").collect();
    assert_eq!(account.len(), 1, "{records:?}");
    assert_eq!(account[0]["account"], "CHU\\svc-covotem");
    assert_eq!(account[0]["route"], parent.url());
    assert!(!serde_json::to_string(&records)
        .unwrap()
        .contains("wrong-password"));
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_through_the_parent_and_its_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsOrigin::start(&["covotem.esante-centre.fr"], dir.path()).await;
    let parent = NtlmParent::start(
        &[USER],
        &[("covotem.esante-centre.fr:443", tls.addr)],
        false,
    )
    .await;
    let config = parent_config(
        &[parent.url()],
        "ntlm",
        "password_env = \"TEST_PARENT_PASSWORD\"",
        "",
    );
    let gw = TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", USER.2)]).await;
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
    assert_eq!(parent.count("handshake"), 1);
    let rec = gw.record_for("covotem.esante-centre.fr").await;
    assert_eq!(rec["route"], parent.url());

    // The parent's ACL refuses crt.sectigo.com: the client sees 502 naming the parent's 403.
    let r = curl(&["-x", &gw.proxy(), "https://crt.sectigo.com/"]).await;
    assert_eq!(r.connect_status, 502, "{r:?}");
    let rec = gw.record_for("crt.sectigo.com").await;
    assert_eq!(rec["reason"], "parent_refused");
    assert!(
        rec["detail"]
            .as_str()
            .unwrap()
            .contains("answered 403 Forbidden to CONNECT crt.sectigo.com:443"),
        "{rec}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bypass_covotem_server_goes_direct_while_other_flows_use_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let covotem = TlsOrigin::start(&["covotem.esante-centre.fr"], dir.path()).await;
    let sectigo_dir = tempfile::tempdir().unwrap();
    let sectigo = TlsOrigin::start(&["crt.sectigo.com"], sectigo_dir.path()).await;
    let parent = NtlmParent::start(&[USER], &[("crt.sectigo.com:443", sectigo.addr)], false).await;
    let extra = format!(
        "[resolve]\nconnect_to = [\"covotem.esante-centre.fr:443={}\"]\n",
        covotem.addr
    );
    let config = parent_config(
        &[parent.url()],
        "ntlm",
        "password_env = \"TEST_PARENT_PASSWORD\"",
        &extra,
    )
    .replace(
        "bypass_covotem_server = false",
        "bypass_covotem_server = true",
    );
    let gw = TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", USER.2)]).await;
    let ca = covotem.ca_pem.display().to_string();
    let r = curl(&[
        "-x",
        &gw.proxy(),
        "--cacert",
        &ca,
        "https://covotem.esante-centre.fr/",
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let ca = sectigo.ca_pem.display().to_string();
    let r = curl(&[
        "-x",
        &gw.proxy(),
        "--cacert",
        &ca,
        "https://crt.sectigo.com/",
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let targets: Vec<String> = parent
        .events()
        .iter()
        .filter(|e| e["event"] == "request")
        .map(|e| e["target"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        targets.iter().all(|t| t == "crt.sectigo.com:443"),
        "the Covotem server went through the parent: {targets:?}"
    );
    assert!(!targets.is_empty());
    assert_eq!(
        gw.record_for("covotem.esante-centre.fr").await["route"],
        "direct"
    );
    assert_eq!(
        gw.record_for("crt.sectigo.com").await["route"],
        parent.url()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_to_the_next_parent_and_no_direct_fallback_when_all_are_down() {
    let parent = NtlmParent::start(&[USER], &[], false).await;
    let dead = format!("http://{}", closed_port());
    let config = parent_config(
        &[dead.clone(), parent.url()],
        "ntlm",
        "password_env = \"TEST_PARENT_PASSWORD\"",
        &site_flow("origin.test", 80),
    );
    let gw = TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", USER.2)]).await;
    let r = curl(&["-x", &gw.proxy(), "http://origin.test/"]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(gw.record_for("origin.test").await["route"], parent.url());

    // Both dead: 502, and the origin (reachable directly) never sees the request.
    let origin = HttpOrigin::start().await;
    let extra = format!(
        "{}[resolve]\nconnect_to = [\"origin.test:80={}\"]\n",
        site_flow("origin.test", 80),
        origin.addr
    );
    let dead2 = format!("http://{}", closed_port());
    let config = parent_config(
        &[dead, dead2],
        "ntlm",
        "password_env = \"TEST_PARENT_PASSWORD\"",
        &extra,
    );
    let gw = TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", USER.2)]).await;
    let r = curl(&["-x", &gw.proxy(), "http://origin.test/"]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.body.contains("no parent proxy is reachable (tried 2)"),
        "{}",
        r.body
    );
    assert_eq!(origin.connections(), 0, "silent direct fallback");
    assert_eq!(
        gw.record_for("origin.test").await["reason"],
        "parent_unreachable"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_picks_ntlm_over_basic() {
    let parent = NtlmParent::start(&[USER], &[], true).await;
    let config = parent_config(
        &[parent.url()],
        "auto",
        "password_env = \"TEST_PARENT_PASSWORD\"",
        &site_flow("origin.test", 80),
    );
    let gw = TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", USER.2)]).await;
    let r = curl(&["-x", &gw.proxy(), "http://origin.test/"]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(parent.count("handshake"), 1);
    let schemes: Vec<Value> = parent
        .events()
        .iter()
        .filter(|e| e["event"] == "request")
        .map(|e| e["auth"].clone())
        .collect();
    assert!(!schemes.contains(&Value::from("Basic")), "{schemes:?}");
    assert!(schemes.contains(&Value::from("NTLM")), "{schemes:?}");
}

async fn squid_gateway(squid: &Squid, password: &str, extra: &str) -> TestGateway {
    let config = parent_config(
        &[squid.url()],
        "basic",
        "password_env = \"TEST_PARENT_PASSWORD\"",
        extra,
    )
    .replace("user = 'CHU\\svc-covotem'", "user = \"covotem\"");
    TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", password)]).await
}

fn flows_for(hosts: &[(&str, SocketAddr)]) -> String {
    hosts
        .iter()
        .enumerate()
        .map(|(i, (h, a))| {
            format!(
                "[[flows]]\nid = \"site{i}\"\nhosts = [\"{h}\"]\nports = [{}]\n",
                a.port()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn squid_with_basic_auth_carries_forwarded_requests_and_tunnels() {
    let origin = HttpOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsOrigin::start(&["tls.test"], dir.path()).await;
    let squid = Squid::start(&[("covotem", "Squ1d-pass")], &["origin.test", "tls.test"]).await;
    let gw = squid_gateway(
        &squid,
        "Squ1d-pass",
        &flows_for(&[("origin.test", origin.addr), ("tls.test", tls.addr)]),
    )
    .await;

    let url = format!("http://origin.test:{}/through-squid", origin.addr.port());
    let r = curl(&["-x", &gw.proxy(), "-d", "body", &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = json(&r.body);
    assert_eq!(seen["body_len"], 4);
    let ca = tls.ca_pem.display().to_string();
    let r = curl(&[
        "-x",
        &gw.proxy(),
        "--cacert",
        &ca,
        &format!("https://tls.test:{}/", tls.addr.port()),
    ])
    .await;
    assert_eq!((r.connect_status, r.status), (200, 200), "{r:?}");
    assert_eq!(gw.record_for("tls.test").await["route"], squid.url());
}

#[tokio::test(flavor = "multi_thread")]
async fn squid_refusing_the_password_gets_one_attempt_then_back_off() {
    let origin = HttpOrigin::start().await;
    let squid = Squid::start(&[("covotem", "Squ1d-pass")], &["origin.test"]).await;
    let gw = squid_gateway(
        &squid,
        "not-the-password",
        &flows_for(&[("origin.test", origin.addr)]),
    )
    .await;
    let url = format!("http://origin.test:{}/", origin.addr.port());
    for _ in 0..50 {
        let r = curl(&["-x", &gw.proxy(), &url]).await;
        assert_eq!(r.status, 502, "{r:?}");
        assert!(
            r.body.contains("parent refused the gateway's credentials"),
            "{}",
            r.body
        );
    }
    // Squid logs a 407 for the first (credential-less) leg and one for our one attempt.
    squid
        .wait_access(|_| {
            squid
                .access_log()
                .iter()
                .filter(|l| l.contains("/407 "))
                .count()
                >= 2
        })
        .await;
    let denied = squid
        .access_log()
        .iter()
        .filter(|l| l.contains("/407 "))
        .count();
    assert_eq!(denied, 2, "{:?}", squid.access_log());
    assert_eq!(origin.connections(), 0);
}

/// A TLS front for a parent (what an `https://` parent is): terminates TLS with a
/// certificate for `name` and relays the bytes to `backend`.
async fn tls_front(
    backend: SocketAddr,
    name: &str,
    dir: &std::path::Path,
) -> (SocketAddr, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let ca = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, ca)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_parent_is_verified_against_its_ca() {
    let parent = NtlmParent::start(&[USER], &[], false).await;
    let dir = tempfile::tempdir().unwrap();
    for (cert_name, expect_ok) in [("localhost", true), ("someone-else.test", false)] {
        let (front, ca) = tls_front(parent.addr, cert_name, dir.path()).await;
        let parent_url = format!("https://localhost:{}", front.port());
        let secret = format!(
            "password_env = \"TEST_PARENT_PASSWORD\"\nca_file = \"{}\"",
            ca.display()
        );
        let config = parent_config(
            std::slice::from_ref(&parent_url),
            "ntlm",
            &secret,
            &site_flow("origin.test", 80),
        );
        let gw = TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", USER.2)]).await;
        let r = curl(&["-x", &gw.proxy(), "http://origin.test/over-tls"]).await;
        if expect_ok {
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(json(&r.body)["user"], "CHU\\svc-covotem");
            assert_eq!(gw.record_for("origin.test").await["route"], parent_url);
        } else {
            assert_eq!(
                r.status, 502,
                "a parent with the wrong certificate was trusted: {r:?}"
            );
            assert!(r.body.contains("TLS with parent proxy"), "{}", r.body);
        }
    }
    assert_eq!(
        parent.count("handshake"),
        1,
        "only the verified parent saw the handshake"
    );
}

/// A pooled parent connection whose authentication the parent forgot (its credentials cache
/// expired) answers the next request with a 407: a small body, kept for that, goes again on a
/// newly authenticated connection and arrives whole, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_is_replayed_when_a_pooled_parent_connection_is_challenged_again() {
    let parent = NtlmParent::start_with(&[USER], &[], &["--rechallenge-after", "1"]).await;
    let gw = ntlm_gateway(&parent, USER.2).await;
    for body in ["first-body", "second-body"] {
        let r = curl(&["-x", &gw.proxy(), "-d", body, "http://origin.test/post"]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let seen = json(&r.body);
        assert_eq!(seen["body_len"], body.len(), "{seen}");
    }
    let events = parent.events();
    let count = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    assert_eq!(count("rechallenge"), 1, "{events:#?}");
    assert_eq!(count("handshake"), 2, "{events:#?}");
    // The second body went on the challenged connection (the parent read and dropped it
    // with its 407), then whole on the final leg of a new handshake: never a third time.
    let second: Vec<(Value, Value)> = events
        .iter()
        .filter(|e| e["event"] == "request" && e["body_len"] == 11)
        .map(|e| (e["auth"].clone(), e["conn"].clone()))
        .collect();
    assert_eq!(second.len(), 2, "{events:#?}");
    assert_eq!(second[0].0, Value::Null, "{events:#?}");
    assert_eq!(second[1].0, "NTLM", "{events:#?}");
    assert_ne!(
        second[0].1, second[1].1,
        "replayed on another connection: {events:#?}"
    );
}

/// The workstation's own `Proxy-Authorization` (a browser that has a password for another
/// proxy, or an attacker probing) is the gateway's to read, never to pass on: not to the parent,
/// forwarded or in a CONNECT, and not to an origin reached directly.
#[tokio::test(flavor = "multi_thread")]
async fn a_clients_proxy_authorization_never_reaches_the_parent_nor_the_origin() {
    const CLIENTS: &str = "Proxy-Authorization: Basic Y2xpZW50OmNsaWVudC1zZWNyZXQ=";
    let origin = HttpOrigin::start().await;
    let echo = passerelle_tests::origin::echo_peer().await;
    let parent = NtlmParent::start(
        &[USER],
        &[("origin.test:80", origin.addr), ("raw.test:7000", echo)],
        true,
    )
    .await;
    let config = parent_config(
        &[parent.url()],
        "ntlm",
        "password_env = \"TEST_PARENT_PASSWORD\"",
        &format!(
            "{}[[flows]]\nid = \"raw\"\nhosts = [\"raw.test\"]\nports = [7000]\n",
            site_flow("origin.test", 80)
        ),
    );
    let gw = TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", USER.2)]).await;
    let r = curl(&["-x", &gw.proxy(), "-H", CLIENTS, "http://origin.test/fwd"]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let tunnel = passerelle_tests::harness::raw_exchange(
        gw.addr,
        format!("CONNECT raw.test:7000 HTTP/1.1\r\nHost: raw.test:7000\r\n{CLIENTS}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(tunnel.starts_with("HTTP/1.1 200"), "{tunnel}");
    // The parent logs the scheme of every Proxy-Authorization it got: NTLM (ours) or none,
    // never the client's Basic.
    let schemes: Vec<Value> = parent
        .events()
        .iter()
        .filter(|e| e["event"] == "request")
        .map(|e| e["auth"].clone())
        .collect();
    assert!(
        schemes.iter().any(|a| a == "NTLM") && schemes.iter().all(|a| a != "Basic"),
        "{schemes:?}"
    );
    // Direct: the origin never sees it.
    let direct = TestGateway::start(&passerelle_tests::harness::origin_flow(
        "site",
        "origin.test",
        80,
        origin.addr,
    ))
    .await;
    let r = curl(&[
        "-x",
        &direct.proxy(),
        "-H",
        CLIENTS,
        "http://origin.test/direct",
    ])
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = json(&r.body);
    assert!(
        seen["headers"].get("proxy-authorization").is_none(),
        "the client's credentials reached the origin: {seen}"
    );
    assert_eq!(seen["uri"], "/direct");
}

#[tokio::test(flavor = "multi_thread")]
async fn parent_auth_false_sends_no_credentials_for_that_flow() {
    let parent = NtlmParent::start(&[USER], &[], false).await;
    let config = parent_config(
        &[parent.url()],
        "ntlm",
        "password_env = \"TEST_PARENT_PASSWORD\"",
        &site_flow("origin.test", 80).replace("ports = [80]", "ports = [80]\nparent_auth = false"),
    );
    let gw = TestGateway::start_with_env(&config, &[("TEST_PARENT_PASSWORD", USER.2)]).await;
    let r = curl(&["-x", &gw.proxy(), "http://origin.test/free"]).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        gw.record_for("origin.test").await["reason"],
        "parent_auth_unsupported"
    );
    let auths: Vec<Value> = parent
        .events()
        .iter()
        .filter(|e| e["event"] == "request")
        .map(|e| e["auth"].clone())
        .collect();
    assert!(
        auths.iter().all(Value::is_null),
        "credentials sent for a parent_auth = false flow: {auths:?}"
    );
}
