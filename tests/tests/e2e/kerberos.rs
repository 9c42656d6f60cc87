//! Kerberos (Negotiate) to the corporate proxy: a real MIT KDC provisioned per test, Squid
//! demanding Negotiate through `negotiate_kerberos_auth`, and Passerelle (the real binary, with
//! `KRB5_CONFIG` and a resolver of its own that maps `parent.test` to 127.0.0.1: Kerberos needs
//! the proxy's name, not its address).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use passerelle_tests::harness::{curl, metric, wait_records, Running};
use passerelle_tests::origin::{fnv1a, HttpOrigin, FNV_OFFSET};
use passerelle_tests::peers::{Kdc, Squid, SquidAuth, REALM};
use serde_json::Value;

const PARENT: &str = "parent.test";
const USER: &str = "svc-covotem";
const PASSWORD: &str = "Corr3ct-Kerberos";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A site flow for the origin, through the parent `parent.test:<squid port>`.
fn config(origin: &HttpOrigin, squid: &Squid, upstream: &str) -> String {
    format!(
        "[routing]\ndefault = \"upstream\"\n\
         [[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [{port}]\n\
         [[upstream]]\nurl = \"http://{PARENT}:{squid}\"\n{upstream}\n",
        port = origin.addr.port(),
        squid = squid.addr.port()
    )
}

fn password_upstream(auth: &str) -> String {
    format!("auth = \"{auth}\"\nuser = \"{USER}@{REALM}\"\npassword_env = \"PW\"\n")
}

async fn start(dir: &Path, config: &str, krb5_conf: &Path, password: &str) -> Running {
    Running::with_env(
        dir,
        config,
        &[
            ("PW", password),
            ("KRB5_CONFIG", &krb5_conf.display().to_string()),
            ("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0"),
        ],
    )
    .closed_dns(&[(PARENT, LOCALHOST)])
    .start()
    .await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_negotiates_with_the_test_squid() {
    // The peers themselves, checked by an independent client: kinit from a keytab, then
    // curl --proxy-negotiate.
    let kdc = Kdc::start().await;
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let keytab = kdc.dir().join("curl.keytab");
    kdc.add_keytab_user("curl-user", &keytab);
    let ccache = format!("FILE:{}", kdc.dir().join("curl.ccache").display());
    let kinit = Command::new("kinit")
        .args(["-k", "-t"])
        .arg(&keytab)
        .arg(format!("curl-user@{REALM}"))
        .env("KRB5_CONFIG", &kdc.krb5_conf)
        .env("KRB5CCNAME", &ccache)
        .output()
        .expect("kinit runs (krb5-user)");
    assert!(
        kinit.status.success(),
        "{}",
        String::from_utf8_lossy(&kinit.stderr)
    );
    let url = format!("http://origin.test:{}/via-curl", origin.addr.port());
    let proxy = format!("http://{PARENT}:{}", squid.addr.port());
    let resolve = format!("{PARENT}:{}:127.0.0.1", squid.addr.port());
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "--proxy-negotiate",
            "-U",
            ":",
            "--resolve",
            &resolve,
            "-x",
            &proxy,
            &url,
        ])
        .env("KRB5_CONFIG", &kdc.krb5_conf)
        .env("KRB5CCNAME", &ccache)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without credentials Squid answers 407: it really demands Negotiate.
    let r = curl(&["--resolve", &resolve, "-x", &proxy, &url]).await;
    assert_eq!(r.status, 407, "{r:?}");
    assert_eq!(origin.seen_for("/via-curl").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_gets_tickets_in_memory_and_one_service_ticket_serves_every_connection() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(
        dir.path(),
        &config(&origin, &squid, &password_upstream("negotiate")),
        &kdc.krb5_conf,
        PASSWORD,
    )
    .await;
    let base = format!("http://origin.test:{}", origin.addr.port());
    // Forwarded requests ride one authenticated parent connection, pooled across client
    // connections; tunnels each open a parent connection of their own (a new context).
    let mut args = vec!["-x".to_string(), gw.proxy()];
    args.extend((0..3).map(|i| format!("{base}/pooled/{i}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = curl(&args).await;
    assert_eq!(r.status, 200, "{r:?}");
    for i in 0..3 {
        let r = curl(&["-x", &gw.proxy(), &format!("{base}/fresh/{i}")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let r = curl(&["-x", &gw.proxy(), "-p", &format!("{base}/tunnel/{i}")]).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    // A 3 MB POST, and a body over 64 KiB, arrive whole.
    for size in [100 * 1024, 3 * 1024 * 1024] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let file = dir.path().join("upload");
        std::fs::write(&file, &data).unwrap();
        let r = curl(&[
            "-x",
            &gw.proxy(),
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{base}/upload"),
        ])
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            json(&r.body)["body_fnv"],
            format!("{:016x}", fnv1a(&data, FNV_OFFSET))
        );
    }
    let records = wait_records(&gw.audit, 11).await;
    assert!(
        records.iter().all(|r| r["status"] == 200
            && r["route"] == format!("http://{PARENT}:{}", squid.addr.port())),
        "{records:?}"
    );
    assert_eq!(kdc.preauth_failures(), 0);
    assert_eq!(
        kdc.tickets_issued_for(&format!("HTTP/{PARENT}")),
        1,
        "one service ticket, cached, for every parent connection:\n{}",
        kdc.log()
    );
    let admin = gw.admin().await;
    let series = format!(
        "passerelle_parent_handshakes_total{{parent=\"http://{PARENT}:{}\",scheme=\"negotiate\"}}",
        squid.addr.port()
    );
    // One per tunnel, and one per forwarding connection (pooled: usually one; a request
    // arriving before the pool got its connection back opens another).
    let handshakes = metric(&admin, &series).await.unwrap_or(0.0);
    assert!((4.0..=6.0).contains(&handshakes), "{series} = {handshakes}");
    assert!(
        !gw.log().contains(PASSWORD),
        "the password reached the logs"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keytab_needs_no_password_and_auto_prefers_negotiate_over_ntlm() {
    let kdc = Kdc::start().await;
    let keytab = kdc.dir().join("svc.keytab");
    kdc.add_keytab_user(USER, &keytab);
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::NegotiateAndNtlm {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let upstream = format!(
        "auth = \"auto\"\nuser = \"{USER}@{REALM}\"\nkeytab_file = \"{}\"\n",
        keytab.display()
    );
    let gw = start(
        dir.path(),
        &config(&origin, &squid, &upstream),
        &kdc.krb5_conf,
        "",
    )
    .await;
    let url = format!("http://origin.test:{}/keytab", origin.addr.port());
    let r = curl(&["-x", &gw.proxy(), &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let admin = gw.admin().await;
    let parent = format!("http://{PARENT}:{}", squid.addr.port());
    assert_eq!(
        metric(
            &admin,
            &format!(
                "passerelle_parent_handshakes_total{{parent=\"{parent}\",scheme=\"negotiate\"}}"
            )
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &admin,
            &format!("passerelle_parent_handshakes_total{{parent=\"{parent}\",scheme=\"ntlm\"}}")
        )
        .await,
        Some(0.0)
    );
    // A tunnel authenticates its own connection.
    let r = curl(&["-x", &gw.proxy(), "-p", &url]).await;
    assert_eq!(r.status, 200, "{r:?}");
    squid
        .wait_access(|l| l.contains("CONNECT") && l.contains(&format!("{USER}@{REALM}")))
        .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_requests_with_a_wrong_password_reach_the_kdc_once() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(
        dir.path(),
        &config(&origin, &squid, &password_upstream("negotiate")),
        &kdc.krb5_conf,
        "Wrong-Password",
    )
    .await;
    let url = format!("http://origin.test:{}/", origin.addr.port());
    let mut all = Vec::new();
    for _ in 0..20 {
        let proxy = gw.proxy();
        let url = url.clone();
        all.push(tokio::spawn(
            async move { curl(&["-x", &proxy, &url]).await },
        ));
    }
    for r in all {
        let r = r.await.unwrap();
        assert_eq!(r.status, 502, "{r:?}");
    }
    assert_eq!(kdc.preauth_failures(), 1, "{}", kdc.log());
    let records = wait_records(&gw.audit, 21).await;
    let account: Vec<&Value> = records.iter().filter(|r| r["event"] == "account").collect();
    assert_eq!(
        account.len(),
        1,
        "one record of the account's refusal: {records:?}"
    );
    assert_eq!(account[0]["reason"], "kerberos_preauth_failed");
    assert_eq!(account[0]["account"], format!("{USER}@{REALM}"));
    let requests: Vec<&Value> = records.iter().filter(|r| r["event"] == "request").collect();
    assert_eq!(requests.len(), 20);
    let reasons: Vec<&str> = requests
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "kerberos_preauth_failed")
            .count(),
        1,
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .all(|r| *r == "kerberos_preauth_failed" || *r == "account_refused"),
        "{reasons:?}"
    );
    assert_eq!(origin.connections(), 0);
    gw.stop().await;
}

/// The first failure for `upstream` (with `password`, under `krb5_conf`, maybe with the
/// gateway's clock moved by `clock`).
async fn failure(
    kdc: &Kdc,
    squid: &Squid,
    origin: &HttpOrigin,
    upstream: &str,
    password: &str,
    krb5_conf: &Path,
    clock: Option<&str>,
) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let mut launch = Running::with_env(
        dir.path(),
        &config(origin, squid, upstream),
        &[
            ("PW", password),
            ("KRB5_CONFIG", &krb5_conf.display().to_string()),
            ("KRB5CCNAME", &format!("FILE:{}/none", kdc.dir().display())),
        ],
    )
    .closed_dns(&[(PARENT, LOCALHOST)]);
    if let Some(offset) = clock {
        launch = launch.clock_offset(offset);
    }
    let gw = launch.start().await;
    let r = curl(&[
        "-x",
        &gw.proxy(),
        &format!("http://origin.test:{}/", origin.addr.port()),
    ])
    .await;
    assert_eq!(r.status, 502, "{upstream}: {r:?}");
    let record = wait_records(&gw.audit, 1).await.remove(0);
    gw.stop().await;
    record
}

#[tokio::test(flavor = "multi_thread")]
async fn kerberos_failures_are_told_apart() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    // An account whose password has expired: the KDC refuses it as such (KDC_ERR_KEY_EXP).
    kdc.add_user("expired-svc", PASSWORD);
    kdc.admin("modprinc -pwexpire yesterday expired-svc");
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let conf = kdc.krb5_conf.clone();
    let cases: Vec<(&str, String, &str, std::path::PathBuf, Option<&str>)> = vec![
        (
            "kerberos_preauth_failed",
            password_upstream("negotiate"),
            "nope",
            conf.clone(),
            None,
        ),
        (
            "kerberos_kdc_unreachable",
            password_upstream("negotiate"),
            PASSWORD,
            kdc.unreachable_conf(),
            None,
        ),
        (
            "kerberos_principal_unknown",
            format!("auth = \"negotiate\"\nuser = \"nobody@{REALM}\"\npassword_env = \"PW\"\n"),
            PASSWORD,
            conf.clone(),
            None,
        ),
        (
            "kerberos_spn_unknown",
            format!(
                "{}spn = \"HTTP@elsewhere.test\"\n",
                password_upstream("negotiate")
            ),
            PASSWORD,
            conf.clone(),
            None,
        ),
        (
            "kerberos_account_revoked",
            format!(
                "auth = \"negotiate\"\nuser = \"expired-svc@{REALM}\"\npassword_env = \"PW\"\n"
            ),
            PASSWORD,
            conf.clone(),
            None,
        ),
        (
            "kerberos_no_credentials",
            "auth = \"negotiate\"\n".to_string(),
            "",
            conf.clone(),
            None,
        ),
        (
            "kerberos_clock_skew",
            password_upstream("negotiate"),
            PASSWORD,
            kdc.strict_clock_conf(),
            Some("+2h"),
        ),
    ];
    let mut wrong = Vec::new();
    for (expected, upstream, password, krb5_conf, clock) in &cases {
        let record = failure(&kdc, &squid, &origin, upstream, password, krb5_conf, *clock).await;
        if record["reason"] != *expected {
            wrong.push(format!("{expected}: got {record}"));
        }
        let detail = record["detail"].as_str().unwrap_or("");
        if !detail.contains("SPN HTTP@") || detail.contains(PASSWORD) {
            wrong.push(format!(
                "{expected}: the detail must name the SPN, never the secret: {detail}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ntlm_stands_in_for_kerberos_only_when_allowed() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::NegotiateAndNtlm {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let unreachable = kdc.unreachable_conf();
    let url = format!("http://origin.test:{}/fallback", origin.addr.port());
    for (fallback, status) in [("none", 502), ("ntlm", 200)] {
        let dir = tempfile::tempdir().unwrap();
        let upstream = format!(
            "{}negotiate_fallback = \"{fallback}\"\n",
            password_upstream("negotiate")
        );
        let gw = start(
            dir.path(),
            &config(&origin, &squid, &upstream),
            &unreachable,
            PASSWORD,
        )
        .await;
        let r = curl(&["-x", &gw.proxy(), &url]).await;
        assert_eq!(r.status, status, "negotiate_fallback = {fallback}: {r:?}");
        if fallback == "ntlm" {
            let log = gw.log();
            assert!(log.contains("parent.auth.negotiate.fallback"), "{log}");
        }
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_checks_the_credentials_and_the_service_ticket() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doctor.toml");
    // The parent by address, its SPN given: no resolver needed.
    std::fs::write(
        &file,
        format!(
            "profile = \"none\"\n[routing]\ndefault = \"upstream\"\n\
             [[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [{}]\ntls_ports = []\n\
             [[upstream]]\nurl = \"http://{}\"\nspn = \"HTTP@{PARENT}\"\n{}",
            origin.addr.port(),
            squid.addr,
            password_upstream("negotiate")
        ),
    )
    .unwrap();
    let doctor = |password: &str| {
        let out = Command::new(passerelle_tests::harness::passerelle_bin())
            .args(["doctor", "--json", "--config"])
            .arg(&file)
            .env("PW", password)
            .env("KRB5_CONFIG", &kdc.krb5_conf)
            .output()
            .unwrap();
        let checks: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        checks
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["check"] == "kerberos" || c["check"] == "parent")
            .cloned()
            .collect::<Vec<Value>>()
    };
    let good = doctor(PASSWORD);
    assert_eq!(good.len(), 3, "{good:?}");
    assert!(good.iter().all(|c| c["ok"] == true), "{good:#?}");
    assert_eq!(good[0]["target"], format!("{USER}@{REALM}"));
    assert!(
        good[0]["detail"].as_str().unwrap().contains("valid for"),
        "{good:?}"
    );
    let bad = doctor("wrong");
    assert_eq!(bad[0]["ok"], false, "{bad:?}");
    assert!(
        bad[0]["hint"].as_str().unwrap().contains("lockout"),
        "{bad:?}"
    );
}

/// A host without MIT Kerberos: the binary run with a library directory whose
/// `libgssapi_krb5` and `libkrb5` are not libraries (first on the loader's path).
fn without_mit_kerberos(dir: &Path) -> String {
    let libs = dir.join("no-krb5");
    std::fs::create_dir_all(&libs).unwrap();
    for name in [
        "libgssapi_krb5.so.2",
        "libgssapi_krb5.so",
        "libkrb5.so.3",
        "libkrb5.so",
    ] {
        std::fs::write(libs.join(name), b"not a library").unwrap();
    }
    libs.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_without_mit_kerberos_says_so_and_falls_back_where_allowed() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::NegotiateAndNtlm {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let url = format!("http://origin.test:{}/nolib", origin.addr.port());
    for (auth, fallback, status) in [
        ("negotiate", "none", 502),
        ("negotiate", "ntlm", 200),
        ("auto", "ntlm", 200),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let libs = without_mit_kerberos(dir.path());
        let upstream = format!(
            "{}negotiate_fallback = \"{fallback}\"\n",
            password_upstream(auth)
        );
        let gw = Running::with_env(
            dir.path(),
            &config(&origin, &squid, &upstream),
            &[
                ("PW", PASSWORD),
                ("KRB5_CONFIG", &kdc.krb5_conf.display().to_string()),
                ("LD_LIBRARY_PATH", &libs),
            ],
        )
        .closed_dns(&[(PARENT, LOCALHOST)])
        .start()
        .await;
        let r = curl(&["-x", &gw.proxy(), &url]).await;
        assert_eq!(r.status, status, "auth {auth}, fallback {fallback}: {r:?}");
        let records = wait_records(&dir.path().join("audit.jsonl"), 1).await;
        let record = records.last().unwrap();
        if status == 502 {
            assert_eq!(record["reason"], "kerberos_unavailable", "{record}");
            let detail = record["detail"].as_str().unwrap();
            assert!(detail.contains("apt install libgssapi-krb5-2"), "{detail}");
            assert!(r.body.contains("Kerberos"), "{}", r.body);
        } else {
            assert_eq!(record["reason"], Value::Null, "{record}");
            squid
                .wait_access(|l| l.contains("/nolib") && l.contains("TCP_MISS/200"))
                .await;
            let log = gw.log();
            assert!(log.contains("parent.auth.negotiate.fallback"), "{log}");
            assert!(log.contains("libgssapi_krb5"), "{log}");
        }
        assert_eq!(kdc.tgts_issued_to(USER), 0, "the KDC was asked");
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tickets_are_renewed_under_traffic_one_as_exchange_per_lifetime_in_one_cache() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    // Tickets of 15 seconds: several lifetimes within the test.
    let lifetime = 15.0;
    kdc.admin(&format!("modprinc -maxlife \"15 seconds\" {USER}"));
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(
        dir.path(),
        &config(&origin, &squid, &password_upstream("negotiate")),
        &kdc.krb5_conf,
        PASSWORD,
    )
    .await;
    let admin = gw.admin().await;
    let url = format!("http://origin.test:{}/steady", origin.addr.port());
    let started = std::time::Instant::now();
    let mut requests = 0;
    // Steady traffic, ten tunnels a second, each a new parent connection and handshake, until
    // the KDC has issued the fourth initial ticket (bounded in count and time).
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(100));
    while kdc.tgts_issued_to(USER) < 4 {
        pace.tick().await;
        assert!(
            requests < 1200 && started.elapsed().as_secs() < 120,
            "{requests} requests, {} TGTs",
            kdc.tgts_issued_to(USER)
        );
        let r = curl(&["-x", &gw.proxy(), "-p", &url]).await;
        assert_eq!(r.status, 200, "request {requests} failed: {r:?}");
        requests += 1;
        assert_eq!(
            metric(&admin, "passerelle_kerberos_ticket_caches").await,
            Some(1.0),
            "one cache for the parent"
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let tgts = kdc.tgts_issued_to(USER);
    eprintln!(
        "{requests} tunnels in {elapsed:.0} s: {tgts} initial tickets, {} service tickets",
        kdc.tickets_issued_for(&format!("HTTP/{PARENT}"))
    );
    // One AS exchange per lifetime (renewed a fifth of it before the end), not per connection.
    assert!(
        (tgts as f64) <= (elapsed / (lifetime * 0.8)).ceil() + 1.0,
        "{tgts} initial tickets in {elapsed:.0} s"
    );
    assert!(
        requests > 4 * tgts,
        "{requests} tunnels for {tgts} initial tickets"
    );
    assert_eq!(kdc.preauth_failures(), 0, "{}", kdc.log());
    let records = passerelle_tests::harness::read_audit_all(&dir.path().join("audit.jsonl"));
    assert!(
        records.iter().all(|r| r["reason"].is_null()),
        "a request failed: {:?}",
        records.iter().find(|r| !r["reason"].is_null())
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_parent_proves_itself_and_a_final_token_that_does_not_verify_is_refused() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    let origin = HttpOrigin::start().await;
    let url = format!("http://origin.test:{}/mutual", origin.addr.port());
    let map = [("origin.test", origin.addr)];
    let toml = |parent: &str, port: u16| {
        format!(
            "[routing]\ndefault = \"upstream\"\n\
             [[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [{}]\n\
             [[upstream]]\nurl = \"http://{parent}:{port}\"\n{}",
            origin.addr.port(),
            password_upstream("negotiate")
        )
    };
    // A parent with MIT's acceptor that answers with its final token (the AP-REP), one that
    // sends none, one whose final token is not the acceptor's; and Squid, which sends none.
    for (final_token, expected) in [("send", 200), ("omit", 200), ("garble", 502)] {
        let name = format!("{final_token}.parent.test");
        let parent =
            passerelle_tests::peers::NtlmParent::negotiate(&kdc, &name, &map, final_token).await;
        let dir = tempfile::tempdir().unwrap();
        let gw = Running::with_env(
            dir.path(),
            &toml(&name, parent.addr.port()),
            &[
                ("PW", PASSWORD),
                ("KRB5_CONFIG", &kdc.krb5_conf.display().to_string()),
            ],
        )
        .closed_dns(&[(name.as_str(), LOCALHOST)])
        .start()
        .await;
        let r = curl(&["-x", &gw.proxy(), &url]).await;
        assert_eq!(
            r.status,
            expected,
            "final token {final_token}: {r:?}\n{}",
            gw.log()
        );
        let handshake = parent
            .events()
            .into_iter()
            .find(|e| e["event"] == "handshake")
            .unwrap_or_else(|| panic!("no handshake: {:?}", parent.events()));
        assert_eq!(handshake["user"], format!("{USER}@{REALM}"));
        // Mutual authentication was asked for: the acceptor had a final token to give.
        assert_eq!(handshake["final_token"], true, "{handshake}");
        if expected == 502 {
            let records = wait_records(&dir.path().join("audit.jsonl"), 1).await;
            let record = records.last().unwrap();
            assert_eq!(record["reason"], "kerberos_bad_token", "{record}");
            assert!(gw.log().contains("parent.auth.negotiate.final_token"));
            // The account is not at fault: nothing held, the next request tries again.
            let again = curl(&["-x", &gw.proxy(), &url]).await;
            assert_eq!(again.status, 502, "{again:?}");
            assert_eq!(kdc.preauth_failures(), 0);
        }
        gw.stop().await;
    }
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = start(
        dir.path(),
        &toml(PARENT, squid.addr.port()),
        &kdc.krb5_conf,
        PASSWORD,
    )
    .await;
    let r = curl(&["-x", &gw.proxy(), &url]).await;
    assert_eq!(r.status, 200, "Squid: {r:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_jump_host_s_machine_account_keytab_is_rotated_under_traffic_without_a_failure() {
    let kdc = Kdc::start().await;
    // A joined jump host: its machine account, its key in the system keytab (SSSD, adcli).
    let machine = "JUMPHOST$";
    let keytab = kdc.dir().join("krb5.keytab");
    kdc.add_keytab_user(machine, &keytab);
    kdc.admin(&format!("modprinc -maxlife \"15 seconds\" {machine}"));
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let upstream = format!(
        "auth = \"negotiate\"\nuser = \"{machine}@{REALM}\"\nkeytab_file = \"{}\"\n",
        keytab.display()
    );
    let gw = start(
        dir.path(),
        &config(&origin, &squid, &upstream),
        &kdc.krb5_conf,
        "",
    )
    .await;
    let url = format!("http://origin.test:{}/machine", origin.addr.port());
    let started = std::time::Instant::now();
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut requests = 0;
    let mut rotated_at = None;
    // Steady tunnels; right after the second initial ticket, the account's key changes and the
    // keytab is rewritten as adcli does it (the new key version beside the old, then a rename
    // over the file); the traffic goes on until two more initial tickets came from the new key.
    loop {
        let tgts = kdc.tgts_issued_to(machine);
        if rotated_at.is_some_and(|at| tgts >= at + 2) {
            break;
        }
        if rotated_at.is_none() && tgts >= 2 {
            let next = dir.path().join("krb5.keytab.new");
            std::fs::copy(&keytab, &next).unwrap();
            kdc.admin(&format!("ktadd -k {} {machine}", next.display()));
            std::fs::rename(&next, &keytab).unwrap();
            rotated_at = Some(tgts);
        }
        assert!(
            requests < 1200 && started.elapsed().as_secs() < 120,
            "{requests} requests, {tgts} initial tickets"
        );
        pace.tick().await;
        let r = curl(&["-x", &gw.proxy(), "-p", &url]).await;
        assert_eq!(
            r.status,
            200,
            "request {requests} failed: {r:?}\n{}",
            gw.log()
        );
        requests += 1;
    }
    let listing = kdc.admin(&format!("getprinc {machine}"));
    // The key changed: its version is 3 now (1 at creation, 2 from the first export).
    assert!(
        listing.contains("vno 3"),
        "the key did not change: {listing}"
    );
    assert_eq!(kdc.preauth_failures(), 0, "{}", kdc.log());
    squid
        .wait_access(|l| l.contains("TCP_TUNNEL/200") && l.contains(&format!("{machine}@{REALM}")))
        .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_finds_each_kerberos_cause() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    let keytab_user = "svc-keytab";
    let keytab = kdc.dir().join("svc-keytab.keytab");
    kdc.add_keytab_user(keytab_user, &keytab);
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A krb5.conf as MIT ships its defaults for names (canonicalised through DNS).
    let canonicalising = dir.path().join("krb5-canonicalising.conf");
    std::fs::write(
        &canonicalising,
        std::fs::read_to_string(&kdc.krb5_conf).unwrap().replace(
            "dns_canonicalize_hostname = false",
            "dns_canonicalize_hostname = true",
        ),
    )
    .unwrap();
    // `alias.test` is a second name of `parent.test` (a CNAME, as the resolver answers it).
    let hosts = vec![
        (format!("{PARENT} alias.test"), LOCALHOST),
        ("nospn.test".to_string(), LOCALHOST),
    ];
    let doctor = |case: &str, parent: &str, upstream: &str, conf: &Path, clock: Option<&str>| {
        let file = dir.path().join(format!("{case}.toml"));
        std::fs::write(
            &file,
            format!(
                "profile = \"none\"\n[routing]\ndefault = \"upstream\"\n\
                 [[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [{}]\ntls_ports = []\n\
                 [[upstream]]\nurl = \"http://{parent}:{}\"\n{upstream}",
                origin.addr.port(),
                squid.addr.port(),
            ),
        )
        .unwrap();
        let case_dir = dir.path().join(case);
        std::fs::create_dir_all(&case_dir).unwrap();
        let program: Vec<std::ffi::OsString> = vec![
            passerelle_tests::harness::passerelle_bin().into(),
            "doctor".into(),
            "--json".into(),
            "--config".into(),
            file.into(),
        ];
        let mut cmd = passerelle_tests::harness::with_closed_dns(&case_dir, &hosts, &program);
        cmd.env("PW", PASSWORD).env("KRB5_CONFIG", conf);
        if let Some(offset) = clock {
            cmd.env("LD_PRELOAD", passerelle_tests::harness::libfaketime())
                .env("FAKETIME", offset);
        }
        let out = cmd.output().unwrap();
        let checks: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{case}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        checks
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["check"].as_str().unwrap().starts_with("kerberos"))
            .map(|c| (c["check"].as_str().unwrap().to_string(), c.clone()))
            .collect::<Vec<(String, Value)>>()
    };
    let find = |checks: &[(String, Value)], name: &str| -> Value {
        checks
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
            .unwrap_or_else(|| panic!("no {name} check: {checks:#?}"))
    };
    let password = password_upstream("negotiate");

    // Everything right: each check passes and says what it saw.
    let good = doctor("good", PARENT, &password, &kdc.krb5_conf, None);
    assert!(good.iter().all(|(_, c)| c["ok"] == true), "{good:#?}");
    assert!(find(&good, "kerberos-spn")["detail"]
        .as_str()
        .unwrap()
        .contains("not a CNAME"));
    assert!(find(&good, "kerberos-kdc")["detail"]
        .as_str()
        .unwrap()
        .contains("UDP and TCP"));
    assert!(
        find(&good, "kerberos-clock")["detail"]
            .as_str()
            .unwrap()
            .contains("0s"),
        "{good:#?}"
    );
    let account = find(&good, "kerberos-account");
    assert!(
        account["detail"]
            .as_str()
            .unwrap()
            .contains("aes256-cts-hmac-sha1-96"),
        "{account}"
    );
    let ticket = good
        .iter()
        .rev()
        .find(|(n, _)| n == "kerberos")
        .unwrap()
        .1
        .clone();
    assert!(
        ticket["detail"]
            .as_str()
            .unwrap()
            .contains("the Negotiate token is"),
        "{ticket}"
    );

    // A clock ten minutes ahead.
    let skewed = doctor(
        "clock",
        PARENT,
        &password,
        &kdc.strict_clock_conf(),
        Some("+10m"),
    );
    let clock = find(&skewed, "kerberos-clock");
    assert_eq!(clock["ok"], false, "{clock}");
    assert!(
        clock["detail"]
            .as_str()
            .unwrap()
            .contains("ahead of the KDC's"),
        "{clock}"
    );
    assert!(
        clock["hint"].as_str().unwrap().contains("chrony"),
        "{clock}"
    );

    // A keytab whose key the account no longer has.
    kdc.rotate_key(keytab_user);
    let stale = doctor(
        "stale",
        PARENT,
        &format!(
            "auth = \"negotiate\"\nuser = \"{keytab_user}@{REALM}\"\nkeytab_file = \"{}\"\n",
            keytab.display()
        ),
        &kdc.krb5_conf,
        None,
    );
    assert!(
        find(&stale, "kerberos-account")["detail"]
            .as_str()
            .unwrap()
            .contains("kvno 2"),
        "{stale:#?}"
    );
    let credentials = stale
        .iter()
        .find(|(n, c)| n == "kerberos" && c["ok"] == false)
        .map(|(_, c)| c.clone())
        .unwrap_or_else(|| panic!("{stale:#?}"));
    assert!(
        credentials["detail"].as_str().unwrap().contains("kvno 2"),
        "{credentials}"
    );

    // A parent whose name has no SPN at the KDC.
    let nospn = doctor("nospn", "nospn.test", &password, &kdc.krb5_conf, None);
    let ticket = nospn
        .iter()
        .rev()
        .find(|(n, _)| n == "kerberos")
        .unwrap()
        .1
        .clone();
    assert_eq!(ticket["ok"], false, "{nospn:#?}");
    assert!(
        ticket["target"].as_str().unwrap().contains("nospn.test"),
        "{ticket}"
    );
    assert!(ticket["hint"].as_str().unwrap().contains("SPN"), "{ticket}");

    // A KDC that does not answer.
    let silent = doctor("silent", PARENT, &password, &kdc.unreachable_conf(), None);
    let kdc_check = find(&silent, "kerberos-kdc");
    assert_eq!(kdc_check["ok"], false, "{kdc_check}");
    assert!(
        kdc_check["detail"].as_str().unwrap().contains("udp"),
        "{kdc_check}"
    );
    assert!(
        kdc_check["detail"].as_str().unwrap().contains("tcp"),
        "{kdc_check}"
    );

    // A parent given by a CNAME, with MIT's default canonicalisation, then without it.
    let cname = doctor("cname", "alias.test", &password, &canonicalising, None);
    let spn = find(&cname, "kerberos-spn");
    assert_eq!(spn["ok"], false, "{spn}");
    assert!(
        spn["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("CNAME for {PARENT}")),
        "{spn}"
    );
    assert!(
        spn["hint"]
            .as_str()
            .unwrap()
            .contains("dns_canonicalize_hostname = false"),
        "{spn}"
    );
    let kept = doctor("cname-kept", "alias.test", &password, &kdc.krb5_conf, None);
    assert_eq!(find(&kept, "kerberos-spn")["ok"], true, "{kept:#?}");
}

/// A TCP relay to the KDC that can freeze: from then on it takes connections and holds them
/// without an answer (a KDC that went slow). Counts what it held.
struct FreezingRelay {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FreezingRelay {
    async fn start(kdc_port: u16) -> FreezingRelay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (f, h) = (frozen.clone(), held.clone());
        tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((mut client, _)) = listener.accept().await {
                if f.load(Ordering::SeqCst) {
                    h.fetch_add(1, Ordering::SeqCst);
                    kept.push(client);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut kdc) =
                        tokio::net::TcpStream::connect(("127.0.0.1", kdc_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut kdc).await;
                    }
                });
            }
        });
        FreezingRelay { port, frozen, held }
    }
}

/// A KDC that goes slow when the tickets need renewing: the requests waiting for Kerberos
/// queue behind at most four steps per parent on the blocking pool, and say so, instead of
/// each holding a blocking thread on the KDC.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_kdc_queues_requests_not_threads() {
    use std::sync::atomic::Ordering;
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    kdc.admin(&format!("modprinc -maxlife \"6 seconds\" {USER}"));
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &["origin.test"],
    )
    .await;
    // The gateway reaches the KDC over TCP only, through the relay.
    let relay = FreezingRelay::start(kdc.port).await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("krb5-relay.conf");
    std::fs::write(
        &conf,
        std::fs::read_to_string(&kdc.krb5_conf)
            .unwrap()
            .replace(
                &format!("kdc = 127.0.0.1:{}", kdc.port),
                &format!("kdc = 127.0.0.1:{}", relay.port),
            )
            .replace(
                "[libdefaults]\n",
                "[libdefaults]\n  udp_preference_limit = 1\n",
            ),
    )
    .unwrap();
    let toml = format!(
        "{}[limits]\nconnect_timeout = \"3s\"\nrequests_per_second = 10000\nburst = 10000\n",
        config(&origin, &squid, &password_upstream("negotiate"))
    );
    let gw = start(dir.path(), &toml, &conf, PASSWORD).await;
    let url = format!("http://origin.test:{}/slow-kdc", origin.addr.port());
    assert_eq!(curl(&["-x", &gw.proxy(), "-p", &url]).await.status, 200);
    relay.frozen.store(true, Ordering::SeqCst);
    // Tunnels at a steady pace until the renewal reaches the frozen KDC (bounded).
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(100));
    let mut tries = 0;
    while relay.held.load(Ordering::SeqCst) == 0 {
        assert!(tries < 200, "the renewal never came");
        tries += 1;
        pace.tick().await;
        let proxy = gw.proxy();
        let url = url.clone();
        tokio::spawn(async move { curl(&["-x", &proxy, "-p", &url]).await });
    }
    let records_before =
        passerelle_tests::harness::read_audit_all(&dir.path().join("audit.jsonl")).len();
    let burst: Vec<_> = (0..12)
        .map(|_| {
            let (proxy, url) = (gw.proxy(), url.clone());
            tokio::spawn(async move { curl(&["-x", &proxy, "-p", &url]).await })
        })
        .collect();
    for answer in burst {
        assert_eq!(
            answer.await.unwrap().status,
            0,
            "a tunnel went through a frozen KDC"
        );
    }
    let records = passerelle_tests::harness::read_audit_all(&dir.path().join("audit.jsonl"));
    let queued = records[records_before..]
        .iter()
        .filter(|r| {
            r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("Kerberos steps already wait on the KDC"))
        })
        .count();
    assert!(
        queued > 0,
        "no request was queued: {:#?}",
        &records[records_before..]
    );
    // At most four of them were steps waiting on the KDC itself; the others waited their turn.
    let waited_on_the_kdc = records[records_before..]
        .iter()
        .filter(|r| {
            r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("no answer from the KDC"))
        })
        .count();
    assert!(
        waited_on_the_kdc <= 4,
        "{waited_on_the_kdc} steps waited on the KDC at once"
    );
    gw.stop().await;
}
