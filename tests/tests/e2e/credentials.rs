//! The gateway's account over time, against counters that lock: a real MIT KDC with a lockout
//! policy (its failure count read back with `getprinc`), the NTLM parent that verifies with
//! pyspnego, and Squid refusing one destination with a 407 after accepting the account. A stale
//! secret costs at most three failures in 30 minutes, a rewritten one goes at once without a
//! reload, and a parent's refusal of a destination is not taken for a bad password.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use passerelle_tests::harness::{curl, raw_exchange, wait_until, Running};
use passerelle_tests::origin::HttpOrigin;
use passerelle_tests::peers::{Kdc, NtlmParent, Squid, SquidAuth, REALM};
use serde_json::Value;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const USER: &str = "svc-covotem";

/// A short back-off for the test (a second, doubling to four): the budget of three failures
/// in 30 minutes is what holds the account after that.
const QUICK: &str = "auth_backoff = \"1s\"\nauth_backoff_max = \"4s\"\n";

/// Fifty requests a second, each on a connection of its own, for `within`: the steady traffic
/// of a site whose gateway holds a stale secret. Returns how many got each status.
async fn steady(proxy: SocketAddr, url: &str, within: Duration) -> BTreeMap<u16, usize> {
    let host = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let request = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut statuses = BTreeMap::new();
    while started.elapsed() < within {
        pace.tick().await;
        let answer = raw_exchange(proxy, request.as_bytes()).await;
        let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        *statuses.entry(status).or_insert(0) += 1;
    }
    statuses
}

/// Only 502s, and enough of them to be steady traffic.
fn only_502s(statuses: &BTreeMap<u16, usize>) -> bool {
    statuses.keys().all(|s| *s == 502) && statuses.get(&502).is_some_and(|n| *n > 50)
}

/// Rate limits out of the way of the steady traffic.
const LIMITS: &str = "[limits]\nrequests_per_second = 10000\nburst = 10000\n";

fn proxy_addr(gw: &Running) -> SocketAddr {
    ([127, 0, 0, 1], gw.port).into()
}

/// Replaces `path` as tools do: a new file renamed over it.
fn rewrite(path: &Path, bytes: &[u8]) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, bytes).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

fn negotiate_parents(squids: &[(&str, &Squid)], credentials: &str) -> String {
    let mut text = String::from("[routing]\ndefault = \"upstream\"\n");
    for (name, squid) in squids {
        text.push_str(&format!(
            "[[upstream]]\nurl = \"http://{name}:{}\"\nauth = \"negotiate\"\nuser = \"{USER}@{REALM}\"\n{credentials}{QUICK}",
            squid.addr.port()
        ));
    }
    text
}

fn site(origin: &HttpOrigin, host: &str) -> String {
    format!(
        "[[flows]]\nid = \"{}\"\nhosts = [\"{host}\"]\nports = [{}]\n",
        host.split('.').next().unwrap(),
        origin.addr.port()
    )
}

async fn start(dir: &Path, config: &str, kdc: &Kdc, names: &[&str]) -> Running {
    let hosts: Vec<(&str, IpAddr)> = names.iter().map(|n| (*n, LOCALHOST)).collect();
    Running::with_env(
        dir,
        config,
        &[
            ("KRB5_CONFIG", &kdc.krb5_conf.display().to_string()),
            ("KRB5CCNAME", &format!("FILE:{}/none", kdc.dir().display())),
            ("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0"),
        ],
    )
    .closed_dns(&hosts)
    .start()
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_keytab_through_two_parents_never_locks_the_account_and_its_fix_goes_at_once() {
    let kdc = Kdc::start().await;
    let origin = HttpOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keytab = dir.path().join("svc.keytab");
    kdc.add_keytab_user(USER, &keytab);
    // The domain locks at four bad passwords in 30 minutes; the password then changes there
    // and the keytab on the jump host is not updated.
    kdc.lockout(USER, 4);
    kdc.rotate_key(USER);
    let negotiate = |name| SquidAuth::Negotiate { kdc: &kdc, name };
    let first = Squid::with_auth(negotiate("parent.test"), &["origin.test"]).await;
    let second = Squid::with_auth(negotiate("parent2.test"), &["origin.test"]).await;
    let config = format!(
        "{LIMITS}{}{}",
        site(&origin, "origin.test"),
        negotiate_parents(
            &[("parent.test", &first), ("parent2.test", &second)],
            &format!("keytab_file = \"{}\"\n", keytab.display())
        )
    );
    let gw = start(dir.path(), &config, &kdc, &["parent.test", "parent2.test"]).await;
    let url = format!("http://origin.test:{}/", origin.addr.port());
    let statuses = steady(proxy_addr(&gw), &url, Duration::from_secs(12)).await;
    assert!(only_502s(&statuses), "{statuses:?}");
    let (failures, locked) = kdc.failures(USER);
    assert!(
        failures <= 3 && !locked,
        "{statuses:?} over 12 s cost the account {failures} failures (locked: {locked}):\n{}",
        kdc.log()
    );
    assert!(kdc.preauth_failures() <= 3, "{}", kdc.log());
    // The account's refusal: one log line, one audit record; readiness says why.
    let admin = gw.admin().await;
    let ready = curl(&[&format!("{admin}/readyz")]).await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("was refused"), "{}", ready.body);
    let records = passerelle_tests::harness::read_audit(&gw.audit);
    let account: Vec<&Value> = records.iter().filter(|r| r["event"] == "account").collect();
    assert_eq!(account.len(), 1, "{account:?}");
    assert_eq!(account[0]["reason"], "kerberos_preauth_failed");
    assert!(
        gw.log().matches("parent.auth.refused").count() == 1,
        "{}",
        gw.log()
    );

    // The keytab is rewritten with the current key (as adcli or msktutil do): the next
    // request goes through, without a reload.
    let fresh = dir.path().join("fresh.keytab");
    kdc.export_key(USER, &fresh);
    rewrite(&keytab, &std::fs::read(&fresh).unwrap());
    let r = curl(&["-x", &gw.proxy(), &url]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert!(!kdc.failures(USER).1, "locked");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_password_file_for_ntlm_costs_at_most_three_failures_and_its_fix_goes_at_once() {
    let parent = NtlmParent::start(&[("CHU", USER, "Right-Password")], &[], false).await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "Old-Password\n").unwrap();
    let config = format!(
        "{LIMITS}[routing]\ndefault = \"upstream\"\n[[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [80]\n\
         [[upstream]]\nurl = \"{}\"\nauth = \"ntlm\"\nuser = 'CHU\\{USER}'\npassword_file = \"{}\"\n{QUICK}",
        parent.url(),
        password.display()
    );
    let gw = Running::start(dir.path(), &config).await;
    let statuses = steady(
        proxy_addr(&gw),
        "http://origin.test/",
        Duration::from_secs(10),
    )
    .await;
    assert!(only_502s(&statuses), "{statuses:?}");
    let failed = parent.count("auth_failed");
    assert!(
        (1..=3).contains(&failed),
        "{statuses:?} made {failed} final legs with the stale password"
    );
    rewrite(&password, b"Right-Password\n");
    let r = curl(&["-x", &gw.proxy(), "http://origin.test/fixed"]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(parent.count("auth_failed"), failed, "the fix cost nothing");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_kerberos_password_file_and_a_kdc_that_stops_answering() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, "Old-Kerberos-1");
    kdc.lockout(USER, 4);
    kdc.admin(&format!("cpw -pw New-Kerberos-2 {USER}"));
    let origin = HttpOrigin::start().await;
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: "parent.test",
        },
        &["origin.test"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "Old-Kerberos-1\n").unwrap();
    let config = format!(
        "{}{}[limits]\nconnect_timeout = \"2s\"\nrequests_per_second = 10000\nburst = 10000\n",
        site(&origin, "origin.test"),
        negotiate_parents(
            &[("parent.test", &squid)],
            &format!("password_file = \"{}\"\n", password.display())
        )
    );
    let gw = start(dir.path(), &config, &kdc, &["parent.test"]).await;
    let url = format!("http://origin.test:{}/", origin.addr.port());
    let statuses = steady(proxy_addr(&gw), &url, Duration::from_secs(8)).await;
    assert!(only_502s(&statuses), "{statuses:?}");
    let (failures, locked) = kdc.failures(USER);
    assert!(
        failures <= 3 && !locked,
        "{failures} failures, locked {locked}"
    );
    rewrite(&password, b"New-Kerberos-2\n");
    let r = curl(&["-x", &gw.proxy(), &url]).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log());
    assert_eq!(kdc.failures(USER).0, 0, "a success resets the count");

    // A KDC that stops answering is not a bad password: the requests fail while it is away,
    // the account is not held, and the first request after it comes back goes through.
    let second_dir = tempfile::tempdir().unwrap();
    let gw2 = start(second_dir.path(), &config, &kdc, &["parent.test"]).await;
    kdc.pause(true);
    let r = curl(&["-x", &gw2.proxy(), &url]).await;
    assert_eq!(r.status, 502, "{r:?}");
    let record =
        passerelle_tests::harness::record_with_id(&gw2.audit, &r.request_id().unwrap()).await;
    assert_eq!(record["reason"], "kerberos_kdc_unreachable", "{record}");
    kdc.pause(false);
    let back = wait_until(Duration::from_secs(30), || async {
        let r = curl(&["-x", &gw2.proxy(), &url]).await;
        match r.status {
            200 => Ok(r),
            _ => Err(format!("not through yet: {r:?}")),
        }
    })
    .await;
    assert_eq!(back.status, 200);
    assert_eq!(kdc.failures(USER).0, 0, "an unreachable KDC counted");
    gw2.stop().await;
    gw.stop().await;
}

/// Squid answers 407, not 403, when the access line that refuses a destination ends with an
/// authentication ACL: after the account was accepted, that 407 refuses the destination, not
/// the account. The other flows go on; the refused one gets a 502 that says so, at once for a
/// while; the KDC and the NTLM verifier see a bounded number of attempts.
#[tokio::test(flavor = "multi_thread")]
async fn a_parents_407_for_one_destination_is_not_a_credential_failure() {
    let kdc = Kdc::start().await;
    kdc.add_user(USER, "Corr3ct-Kerberos");
    kdc.lockout(USER, 4);
    let origin = HttpOrigin::start().await;
    let squid = Squid::denying(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: "parent.test",
        },
        &["origin.test", "denied.test"],
        &["denied.test"],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}{}",
        site(&origin, "origin.test"),
        site(&origin, "denied.test"),
        negotiate_parents(&[("parent.test", &squid)], "password_env = \"PW\"\n")
    );
    let gw = Running::with_env(
        dir.path(),
        &config,
        &[
            ("KRB5_CONFIG", &kdc.krb5_conf.display().to_string()),
            ("PW", "Corr3ct-Kerberos"),
        ],
    )
    .closed_dns(&[("parent.test", LOCALHOST)])
    .start()
    .await;
    let port = origin.addr.port();
    let allowed = format!("http://origin.test:{port}/ok");
    let denied = format!("http://denied.test:{port}/no");
    assert_eq!(curl(&["-x", &gw.proxy(), &allowed]).await.status, 200);
    let mut refused = Vec::new();
    for _ in 0..10 {
        let r = curl(&["-x", &gw.proxy(), &denied]).await;
        assert_eq!(r.status, 502, "{r:?}");
        refused.push(r);
        assert_eq!(curl(&["-x", &gw.proxy(), &allowed]).await.status, 200);
    }
    assert!(
        refused[0].body.contains("refused denied.test")
            && refused[0].body.contains("accepted the gateway's account"),
        "{}",
        refused[0].body
    );
    let record =
        passerelle_tests::harness::record_with_id(&gw.audit, &refused[0].request_id().unwrap())
            .await;
    assert_eq!(record["reason"], "parent_refused", "{record}");
    // The parent saw the refused destination once: the other nine were answered at once.
    let asked = squid
        .access_log()
        .iter()
        .filter(|l| l.contains("denied.test") && l.contains("/407 "))
        .count();
    assert!((1..=2).contains(&asked), "{:?}", squid.access_log());
    assert_eq!(kdc.failures(USER).0, 0);
    assert_eq!(kdc.preauth_failures(), 0);
    gw.stop().await;

    // NTLM through Squid: the same, and the verifier's count stays bounded.
    let ntlm_squid = Squid::denying(
        SquidAuth::FakeNtlm,
        &["origin.test", "denied.test"],
        &["denied.test"],
    )
    .await;
    let config = format!(
        "{}{}[routing]\ndefault = \"upstream\"\n[[upstream]]\nurl = \"{}\"\nauth = \"ntlm\"\nuser = 'CHU\\{USER}'\npassword_env = \"PW\"\n{QUICK}",
        site(&origin, "origin.test"),
        site(&origin, "denied.test"),
        ntlm_squid.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::with_env(dir.path(), &config, &[("PW", "any")])
        .start()
        .await;
    assert_eq!(curl(&["-x", &gw.proxy(), &allowed]).await.status, 200);
    for _ in 0..10 {
        assert_eq!(curl(&["-x", &gw.proxy(), &denied]).await.status, 502);
        assert_eq!(curl(&["-x", &gw.proxy(), &allowed]).await.status, 200);
    }
    let asked = ntlm_squid
        .access_log()
        .iter()
        .filter(|l| l.contains("denied.test"))
        .count();
    assert!(asked <= 6, "{:?}", ntlm_squid.access_log());
    gw.stop().await;
}
