//! `bench/run`'s Negotiate workload: a Kerberos KDC, a Squid demanding Negotiate and
//! Passerelle (the binary in `PASSERELLE_BIN`) with a password, started as the Kerberos suite
//! starts them, for the origin given. Prints the proxy's address and pid as one JSON line;
//! then, for each line read on stdin, what the gateway and the KDC counted so far; ends with
//! stdin.
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use passerelle_tests::harness::{metric, Running};
use passerelle_tests::peers::{Kdc, Squid, SquidAuth, REALM};

const PARENT: &str = "parent.test";
const USER: &str = "svc-bench";
const PASSWORD: &str = "Bench-Kerberos-1";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let origin: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(addr)) => addr,
        _ => {
            eprintln!("usage: negotiate-peers ORIGIN_IP:PORT");
            std::process::exit(2);
        }
    };
    let kdc = Kdc::start().await;
    kdc.add_user(USER, PASSWORD);
    let squid = Squid::with_auth(
        SquidAuth::Negotiate {
            kdc: &kdc,
            name: PARENT,
        },
        &[],
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "[routing]\ndefault = \"upstream\"\ndirect = []\nbypass_covotem_server = false\n\
         [[flows]]\nid = \"bench\"\nips = [\"{ip}\"]\nports = [{port}]\nallow_private = true\n\
         [limits]\nrequests_per_second = 1000000\nburst = 1000000\n\
         max_connections = 19000\nmax_connections_per_client = 19000\n\
         [[upstream]]\nurl = \"http://{PARENT}:{squid}\"\nauth = \"negotiate\"\n\
         user = \"{USER}@{REALM}\"\npassword_env = \"PW\"\n",
        ip = origin.ip(),
        port = origin.port(),
        squid = squid.addr.port()
    );
    let gateway = Running::with_env(
        dir.path(),
        &config,
        &[
            ("PW", PASSWORD),
            ("KRB5_CONFIG", &kdc.krb5_conf.display().to_string()),
            ("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0"),
        ],
    )
    .closed_dns(&[(PARENT, IpAddr::V4(Ipv4Addr::LOCALHOST))])
    .start()
    .await;
    let admin = gateway.admin().await;
    println!(
        "{{\"proxy\":\"127.0.0.1:{}\",\"pid\":{}}}",
        gateway.port,
        gateway.pid()
    );
    let series = format!(
        "passerelle_parent_handshakes_total{{parent=\"http://{PARENT}:{}\",scheme=\"negotiate\"}}",
        squid.addr.port()
    );
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
        let handshakes = metric(&admin, &series).await.unwrap_or(0.0);
        let challenges = squid
            .access_log()
            .iter()
            .filter(|l| l.contains(" TCP_DENIED/407 "))
            .count();
        println!(
            "{{\"handshakes\":{handshakes},\"squid_407\":{challenges},\"service_tickets\":{},\"preauth_failures\":{}}}",
            kdc.tickets_issued_for(&format!("HTTP/{PARENT}")),
            kdc.preauth_failures()
        );
    }
    gateway.stop().await;
}
