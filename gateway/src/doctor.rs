//! `passerelle doctor`: the prerequisites check a hospital runs when it installs Covotem,
//! through the configured routes: the parent (reachable, schemes offered, credentials
//! accepted), then for every enabled flow and port: DNS, TCP, TLS with certificate
//! validation and expiry, an HTTP request, the clock skew against the server's `Date`, and
//! a plain statement about the UDP flows an HTTP proxy cannot carry.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use passerelle_config::{Config, Flow, Host, Kind, Route, Target};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use crate::connect::Hop;
use crate::connect::{connect_any, resolve, BoxedIo, UnlistedAnswers};
use crate::service::Runtime;
use crate::upstream::Parent;

/// Clock skew beyond this fails the check (the client's certificates and OTPs need time).
const MAX_SKEW: Duration = Duration::from_secs(60);

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Pass,
    Fail,
    /// A statement, not a verdict (the UDP flows an HTTP proxy does not carry).
    Info,
    /// Not checked, and why (no `Date` header; the parent already failed).
    Skipped,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub target: String,
    pub state: CheckState,
    /// Everything but a failure.
    pub ok: bool,
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    fn new(state: CheckState, check: &str, target: &str, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            target: target.into(),
            state,
            ok: state != CheckState::Fail,
            detail: detail.into(),
            hint: None,
        }
    }

    fn pass(check: &str, target: &str, detail: impl Into<String>) -> Check {
        Check::new(CheckState::Pass, check, target, detail)
    }

    fn info(check: &str, target: &str, detail: impl Into<String>) -> Check {
        Check::new(CheckState::Info, check, target, detail)
    }

    fn skipped(check: &str, target: &str, why: impl Into<String>) -> Check {
        Check::new(CheckState::Skipped, check, target, why)
    }

    fn fail(
        check: &str,
        target: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            hint: Some(hint.into()),
            ..Check::new(CheckState::Fail, check, target, detail)
        }
    }
}

/// Runs every check; `extra_ca` adds roots for TLS validation (a test CA, a site's own).
pub async fn run(config: Config, extra_ca: Option<&Path>) -> Result<Vec<Check>, String> {
    let tls = tls_connector(extra_ca)?;
    let runtime = Runtime::new(config, None, None)?;
    let mut checks = Vec::new();
    let first_tls_flow = runtime
        .config
        .policy
        .enabled_flows()
        .find(|f| !f.tls_ports.is_empty() && !f.hosts.is_empty())
        .cloned();
    let mut parent_passed = runtime.parents.list().is_empty();
    for parent in runtime.parents.list() {
        if let Some(initiator) = parent.state.negotiator.clone() {
            let host = parent_host(&parent.url);
            checks.extend(kerberos(&host, initiator, runtime.config.limits.connect_timeout).await);
        }
        let probe = parent_probe(parent, first_tls_flow.as_ref(), &runtime).await;
        parent_passed |= probe.ok;
        checks.push(probe);
    }
    let unlisted = UnlistedAnswers::default();
    let flows: Vec<Arc<Flow>> = runtime.config.policy.enabled_flows().cloned().collect();
    for flow in &flows {
        let Some(host) = flow
            .hosts
            .first()
            .and_then(|h| Host::parse(h).ok())
            .or_else(|| flow.ips.first().map(|ip| Host::Ip(*ip)))
        else {
            continue;
        };
        for &port in &flow.ports {
            let target = Target {
                host: host.clone(),
                port,
                kind: Kind::Connect,
            };
            if !parent_passed && runtime.config.policy.route(flow, &target.host) == Route::Upstream
            {
                checks.push(Check::skipped(
                    "tcp",
                    &format!("{target} ({})", flow.id),
                    "not checked: no parent proxy accepted the gateway (see the parent line)",
                ));
                continue;
            }
            check_target(&runtime, &unlisted, flow, &target, &tls, &mut checks).await;
        }
        if !flow.udp_ports.is_empty() {
            let ports: Vec<String> = flow.udp_ports.iter().map(u16::to_string).collect();
            checks.push(Check::info(
                "udp",
                &format!("{host} {}/udp", ports.join(",")),
                "routed by the jump host's nftables table (passerelle firewall), not by the proxy; without it WebRTC falls back to TCP through Passerelle",
            ));
        }
    }
    checks.push(capacity(&runtime.config.site));
    checks.extend(audit_forwarding(&runtime.config.audit).await);
    if !crate::firewall::udp_flows(&runtime.config).is_empty() {
        checks.extend(routing(&runtime.config).await);
    }
    Ok(fold_dns_failures(checks))
}

/// Each audit forwarder: its collector reached as the gateway reaches it (TLS certificate and
/// name, a RELP session), and what waits in its spool.
async fn audit_forwarding(audit: &passerelle_config::Audit) -> Vec<Check> {
    let forwards = audit.forward.clone();
    let found = tokio::task::spawn_blocking(move || {
        forwards
            .iter()
            .map(|f| (f.name.clone(), crate::audit::forward::probe(f)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut checks = Vec::new();
    for (name, results) in found {
        for (ok, detail, hint) in results {
            checks.push(if ok {
                Check::pass("audit-forward", &name, detail)
            } else {
                Check::fail(
                    "audit-forward",
                    &name,
                    detail,
                    hint.unwrap_or_else(|| "see the detail".into()),
                )
            });
        }
    }
    checks
}

/// The prerequisites' bandwidth (§3.1.7) against the site's: a statement, the line is the
/// site's to size.
fn capacity(site: &passerelle_config::Site) -> Check {
    let ask = "the prerequisites ask 2 Mbit/s per workstation in synchronous use (0.5 asynchronous) and 1 Mbit/s symmetric per simultaneous visio";
    let detail = match (site.workstations, site.uplink_mbit) {
        (Some(w), Some(u)) => {
            let need = u64::from(w) * 2;
            let verdict = if need > u64::from(u) {
                format!("more than the {u} Mbit/s uplink: size the line or expect fewer at once")
            } else {
                format!("within the {u} Mbit/s uplink, which carries {u} visios at once")
            };
            format!("{ask}: {w} workstations need {need} Mbit/s, {verdict}")
        }
        (Some(w), None) => format!("{ask}: {w} workstations need {} Mbit/s (set site.uplink_mbit to compare)", u64::from(w) * 2),
        (None, Some(u)) => format!("{ask}: the {u} Mbit/s uplink carries {u} visios at once (set site.workstations to compare)"),
        (None, None) => format!("{ask} (set site.uplink_mbit and site.workstations to compare)"),
    };
    Check::info("capacity", "site", detail)
}

/// The jump host's side of the routed UDP: the loaded table the one `passerelle firewall`
/// renders for this configuration, and IPv4 forwarding on. A site that does not route the
/// UDP through this host (its workstations reach it directly) has no table: information.
async fn routing(config: &Config) -> Vec<Check> {
    let target = format!("table inet {}", crate::firewall::TABLE);
    let want = crate::firewall::rendered_id(config);
    let reload = "passerelle firewall > /etc/nftables.d/passerelle.nft && nft -f /etc/nftables.d/passerelle.nft";
    let listing = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("nft")
            .args(["list", "table", "inet", crate::firewall::TABLE])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await;
    let table = match listing {
        Ok(Ok(out)) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            match crate::firewall::loaded_id(&text) {
                Some(id) if id == want => Check::pass(
                    "udp",
                    &target,
                    format!("loaded, as rendered from this configuration ({id})"),
                ),
                Some(id) => Check::fail(
                    "udp",
                    &target,
                    format!("loaded, but rendered from another flow table ({id}, now {want})"),
                    format!("load it again: {reload}"),
                ),
                None => Check::fail(
                    "udp",
                    &target,
                    "a table of that name is loaded, not rendered by passerelle firewall",
                    format!("replace it: {reload}"),
                ),
            }
        }
        Ok(Ok(out)) if String::from_utf8_lossy(&out.stderr).contains("Operation not permitted") => {
            Check::skipped(
                "udp",
                &target,
                "not checked: listing the ruleset needs root (CAP_NET_ADMIN)",
            )
        }
        Ok(Ok(_)) => Check::info(
            "udp",
            &target,
            format!("not loaded: this host does not route the visio's UDP (to route it: {reload})"),
        ),
        Ok(Err(e)) => Check::skipped("udp", &target, format!("not checked: nft cannot run ({e})")),
        Err(_) => Check::skipped("udp", &target, "not checked: nft did not answer in 10 s"),
    };
    let routed = table.state != CheckState::Info;
    let forwarding = match std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward") {
        Ok(v) if v.trim() == "1" => Check::pass("udp", "ip forwarding", "on"),
        Ok(_) if routed => Check::fail(
            "udp",
            "ip forwarding",
            "off: the table is there but the jump host routes nothing",
            "sysctl -w net.ipv4.ip_forward=1, and net.ipv4.ip_forward = 1 in /etc/sysctl.d/passerelle.conf",
        ),
        Ok(_) => Check::info("udp", "ip forwarding", "off"),
        Err(e) => Check::skipped("udp", "ip forwarding", format!("not checked: {e}")),
    };
    vec![table, forwarding]
}

/// When no name resolves at all, the cause is the jump host's resolver, not each flow: one
/// line says so instead of one per flow.
fn fold_dns_failures(checks: Vec<Check>) -> Vec<Check> {
    let dns: Vec<&Check> = checks.iter().filter(|c| c.check == "dns").collect();
    if dns.len() < 2 || dns.iter().any(|c| c.ok) {
        return checks;
    }
    let folded = Check::fail(
        "dns",
        &format!("all {} flow targets", dns.len()),
        format!("no name resolves; the first: {}", dns[0].detail),
        "the jump host resolves no name: check its resolver (/etc/resolv.conf, systemd-resolved), or map the names in resolve.connect_to",
    );
    let mut out = Vec::with_capacity(checks.len());
    let mut folded = Some(folded);
    for c in checks {
        if c.check != "dns" {
            out.push(c);
        } else if let Some(f) = folded.take() {
            out.push(f);
        }
    }
    out
}

async fn check_target(
    runtime: &Runtime,
    unlisted: &UnlistedAnswers,
    flow: &Arc<Flow>,
    target: &Target,
    tls: &TlsConnector,
    checks: &mut Vec<Check>,
) {
    let name = format!("{target} ({})", flow.id);
    let timeout = runtime.config.limits.connect_timeout;
    let route = runtime.config.policy.route(flow, &target.host);
    let stream: BoxedIo = match route {
        Route::Direct => {
            let addrs =
                match resolve(&runtime.config.resolve, unlisted, target, flow, timeout).await {
                    Ok(addrs) => addrs,
                    Err(e) => {
                        checks.push(Check::fail(
                            "dns",
                            &name,
                            e.to_string(),
                            "check the jump host's DNS (or resolve.connect_to for split DNS)",
                        ));
                        return;
                    }
                };
            let listed: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
            let documented = runtime
                .config
                .resolve
                .lookup(&target.host, target.port)
                .is_some()
                || flow.ips.is_empty()
                || addrs.iter().any(|a| flow.ips.contains(&a.ip()));
            let note = if documented {
                ""
            } else {
                " (not among the documented IPs: allowed, the vendor says trust names)"
            };
            checks.push(Check::pass(
                "dns",
                &name,
                format!("{}{note}", listed.join(", ")),
            ));
            match connect_any(&addrs, timeout, Hop::Origin).await {
                Ok(s) => {
                    checks.push(Check::pass("tcp", &name, "connected directly"));
                    Box::new(s)
                }
                Err(e) => {
                    checks.push(Check::fail(
                        "tcp",
                        &name,
                        e.to_string(),
                        "open this flow in the firewall, or route it through the parent",
                    ));
                    return;
                }
            }
        }
        Route::Upstream => match runtime
            .parents
            .tunnel(target, flow, &runtime.timeouts(flow), |_| {})
            .await
        {
            Ok((io, parent)) => {
                checks.push(Check::pass(
                    "tcp",
                    &name,
                    format!("tunnel through {parent}"),
                ));
                io
            }
            Err(e) => {
                checks.push(Check::fail("tcp", &name, e.to_string(), tunnel_hint(&e)));
                return;
            }
        },
    };
    if flow.tls_ports.contains(&target.port) {
        check_tls(stream, target, &name, tls, checks).await;
    } else if target.port == 80 {
        let host = target.host.to_string();
        check_http(stream, &host, &name, checks).await;
    }
}

/// What to do when a tunnel through the parent failed, by what failed.
fn tunnel_hint(e: &crate::upstream::UpstreamError) -> String {
    use crate::upstream::UpstreamError;
    match e {
        UpstreamError::AllDown { last, .. } => tunnel_hint(last),
        UpstreamError::Refused { status, target, .. } => match status.as_u16() {
            403 | 407 => format!("the parent's policy refuses {target}: ask the proxy team to allow it for the gateway's account"),
            502..=504 => "the parent could not reach it (its own DNS or firewall): ask the proxy team".into(),
            _ => "the parent refused it: its access log says why".into(),
        },
        UpstreamError::DestinationRefused { destination, .. } => format!(
            "the parent accepted the gateway's account but its policy refuses {destination}: ask the proxy team to allow it"
        ),
        UpstreamError::Unreachable { .. } | UpstreamError::Silent { .. } => {
            "the parent cannot be reached: check its address and the jump host's firewall".into()
        }
        UpstreamError::Auth { .. } | UpstreamError::BackOff { .. } => {
            "the parent refused the gateway's account: check user, domain and password".into()
        }
        _ => "the parent broke off the exchange: its logs say why".into(),
    }
}

async fn check_tls(
    stream: BoxedIo,
    target: &Target,
    name: &str,
    tls: &TlsConnector,
    checks: &mut Vec<Check>,
) {
    let server_name = match &target.host {
        Host::Name(n) => ServerName::try_from(n.clone()).ok(),
        Host::Ip(ip) => Some(ServerName::IpAddress((*ip).into())),
    };
    let Some(server_name) = server_name else {
        return;
    };
    let timeout = Duration::from_secs(10);
    let tls_stream = match tokio::time::timeout(timeout, tls.connect(server_name, stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            checks.push(Check::fail("tls", name, e.to_string(), "a TLS-inspecting firewall or proxy re-signs this flow: exempt it (the client checks the certificate), or the clock is wrong"));
            return;
        }
        Err(_) => {
            checks.push(Check::fail(
                "tls",
                name,
                "handshake timed out",
                "something on the path holds TLS: check the firewall",
            ));
            return;
        }
    };
    let expiry = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| not_after(leaf.as_ref()));
    let detail = match expiry {
        Some(t) => format!(
            "certificate valid, expires {}",
            humantime::format_rfc3339_seconds(t)
        ),
        None => "certificate valid".to_string(),
    };
    checks.push(Check::pass("tls", name, detail));
    let host = target.host.to_string();
    check_http(tls_stream, &host, name, checks).await;
}

/// `HEAD /` and the `Date` header: reachability of the service and the clock skew.
async fn check_http<S>(stream: S, host: &str, name: &str, checks: &mut Vec<Check>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = http::Request::head("/")
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "passerelle-doctor")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("a static request");
        sender.send_request(request).await
    };
    let answer = match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) if e.is_parse() => {
            checks.push(Check::fail(
                "http",
                name,
                format!("not an HTTP answer: {e}"),
                "something on the path answers instead of the service",
            ));
            return;
        }
        Ok(Err(e)) => {
            checks.push(Check::fail(
                "http",
                name,
                e.to_string(),
                "the service does not answer HTTP on this flow",
            ));
            return;
        }
        Err(_) => {
            checks.push(Check::fail(
                "http",
                name,
                "no answer in 10 s",
                "the service does not answer HTTP on this flow",
            ));
            return;
        }
    };
    checks.push(Check::pass(
        "http",
        name,
        format!("{:?} {}", answer.version(), answer.status()),
    ));
    let date = answer
        .headers()
        .get(http::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok());
    let Some(date) = date else {
        checks.push(Check::skipped(
            "clock",
            name,
            "not checked: the server sent no Date header",
        ));
        return;
    };
    let now = SystemTime::now();
    let skew = now
        .duration_since(date)
        .or_else(|_| date.duration_since(now))
        .unwrap_or_default();
    if skew <= MAX_SKEW {
        checks.push(Check::pass(
            "clock",
            name,
            format!("skew {}s", skew.as_secs()),
        ));
    } else {
        checks.push(Check::fail(
            "clock",
            name,
            format!("skew {}s against the server's Date", skew.as_secs()),
            "synchronise the clock (NTP): the Covotem document requires it",
        ));
    }
}

/// Kerberos toward a parent: the credentials (and how long the TGT lasts), then a service
/// ticket for the parent's SPN (which also shows the KDC answering and the clock agreeing).
/// The host of a parent's URL.
fn parent_host(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host.trim_matches(['[', ']']).into(),
        _ => authority.trim_matches(['[', ']']).into(),
    }
}

/// The clocks may differ by this much before Kerberos refuses (MIT's and AD's default).
const KERBEROS_SKEW: Duration = Duration::from_secs(300);

/// The Kerberos section for one Negotiate parent: the SPN and what the names around it will
/// make of it, each KDC over UDP and TCP, the clock against the KDC's, the account and its keys
/// at the KDC, then the credentials and a service ticket as the gateway gets them.
async fn kerberos(
    host: &str,
    initiator: Arc<passerelle_kerberos::Initiator>,
    timeout: Duration,
) -> Vec<Check> {
    let host = host.to_string();
    let setup = initiator.clone();
    let mut checks = tokio::task::spawn_blocking(move || kerberos_setup(&host, &setup))
        .await
        .unwrap_or_default();
    checks.extend(kerberos_tickets(initiator, timeout).await);
    checks
}

/// What is checked without the library: names, KDCs, clock, account.
fn kerberos_setup(host: &str, initiator: &passerelle_kerberos::Initiator) -> Vec<Check> {
    use passerelle_kerberos::kdc;
    let mut checks = Vec::new();
    let conf_path = std::env::var_os("KRB5_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/krb5.conf".into());
    let conf = std::fs::read_to_string(&conf_path).unwrap_or_default();
    let principal = initiator.principal().map(str::to_string);
    let realm = principal
        .as_deref()
        .and_then(|p| p.rsplit_once('@').map(|(_, r)| r.to_string()))
        .or_else(|| {
            conf.lines()
                .find_map(|l| l.trim().strip_prefix("default_realm"))
                .and_then(|v| v.split_once('=').map(|(_, r)| r.trim().to_string()))
        })
        .unwrap_or_default();
    let profile = kdc::profile(&conf, &realm);
    // The SPN, and what the resolver and the library's settings make of the name.
    let spn = initiator.spn().to_string();
    let from = if spn == format!("HTTP@{host}") {
        "the URL's host"
    } else {
        "spn"
    };
    let hints = dns_lookup::AddrInfoHints {
        flags: 2, // AI_CANONNAME
        ..Default::default()
    };
    let canonical = dns_lookup::getaddrinfo(Some(host), None, Some(hints))
        .ok()
        .and_then(|mut found| found.next())
        .and_then(|a| a.ok())
        .and_then(|a| a.canonname)
        .map(|c| c.trim_end_matches('.').to_ascii_lowercase());
    let canonicalize = profile
        .dns_canonicalize_hostname
        .clone()
        .unwrap_or_else(|| "true".into());
    let spn_words = spn.replacen('@', "/", 1);
    match canonical {
        Some(target) if target != host.to_ascii_lowercase() && from == "the URL's host" => {
            if canonicalize == "false" {
                checks.push(Check::pass(
                    "kerberos-spn",
                    &spn_words,
                    format!("from {from}; {host} is a CNAME for {target}, and dns_canonicalize_hostname = false keeps the SPN on {host}"),
                ));
            } else {
                checks.push(Check::fail(
                    "kerberos-spn",
                    &spn_words,
                    format!("from {from}; {host} is a CNAME for {target}: with dns_canonicalize_hostname = {canonicalize} the library asks for HTTP/{target}{}", if canonicalize == "fallback" { " when HTTP/{host} fails" } else { "" }),
                    format!("in krb5.conf [libdefaults]: dns_canonicalize_hostname = false and rdns = false (the proxy's SPN is HTTP/{host}); or spn = \"HTTP@{target}\" if the proxy's account holds that one"),
                ));
            }
        }
        Some(_) => checks.push(Check::pass(
            "kerberos-spn",
            &spn_words,
            format!(
                "from {from}; not a CNAME{}",
                if profile.rdns == Some(false) {
                    ""
                } else {
                    " (rdns is not false: a reverse lookup may still change the name; set rdns = false)"
                }
            ),
        )),
        None => checks.push(Check::fail(
            "kerberos-spn",
            &spn_words,
            format!("from {from}; {host} does not resolve"),
            "the parent's name must resolve on this host (Kerberos needs the name, not an address)",
        )),
    }
    // The KDCs, over UDP and TCP; the clock and the account from their answer.
    let Some(principal) = principal else {
        return checks;
    };
    let user = principal
        .rsplit_once('@')
        .map_or(principal.as_str(), |(u, _)| u);
    if profile.kdcs.is_empty() {
        checks.push(Check::info(
            "kerberos-kdc",
            &realm,
            if profile.dns_lookup_kdc == Some(false) {
                format!("no kdc line for {realm} in {} and dns_lookup_kdc = false: the library has no KDC to ask", conf_path.display())
            } else {
                format!("the KDCs of {realm} come from DNS SRV records (_kerberos._udp.{realm}, _kerberos._tcp.{realm}): not probed here; list them in [realms] to have them checked")
            },
        ));
        return checks;
    }
    let mut answered = None;
    for name in &profile.kdcs {
        let probed = kdc::probe(name, user, &realm, Duration::from_secs(3));
        let target = format!("{name} ({realm})");
        match (&probed.udp, &probed.tcp) {
            (Ok(_), Ok(_)) => checks.push(Check::pass("kerberos-kdc", &target, "answers on UDP and TCP")),
            (Ok(_), Err(e)) => checks.push(Check::fail("kerberos-kdc", &target, format!("answers on UDP, not on TCP: {e}"), "open TCP 88 to the KDC: tickets over 1400 bytes (AD's, with group memberships) need it")),
            (Err(e), Ok(_)) => checks.push(Check::fail("kerberos-kdc", &target, format!("answers on TCP, not on UDP: {e}"), "open UDP 88 to the KDC, or set udp_preference_limit = 1 in krb5.conf to use TCP only")),
            (Err(u), Err(t)) => checks.push(Check::fail("kerberos-kdc", &target, format!("{u}; {t}"), "the KDC must be reachable on port 88 (UDP and TCP) from this host: firewall, route, the kdc line in krb5.conf")),
        }
        if answered.is_none() {
            answered = probed.udp.ok().or(probed.tcp.ok());
        }
    }
    match answered {
        Some(kdc::Answer::Error { code, stime, etypes }) => {
            let now = SystemTime::now();
            let (ahead, offset) = match stime.duration_since(now) {
                Ok(d) => (true, d),
                Err(e) => (false, e.duration()),
            };
            let words = format!(
                "this host's clock is {}s {} the KDC's (from the KDC's own answer)",
                offset.as_secs(),
                if ahead { "behind" } else { "ahead of" }
            );
            if offset > KERBEROS_SKEW {
                checks.push(Check::fail("kerberos-clock", &realm, words, "Kerberos refuses beyond 5 minutes: synchronise this host (chrony or systemd-timesyncd) with the domain's time source"));
            } else {
                checks.push(Check::pass("kerberos-clock", &realm, words));
            }
            let keys: Vec<String> = etypes.iter().map(|e| passerelle_kerberos::enctype_name(*e)).collect();
            match code {
                kdc::PREAUTH_REQUIRED => {
                    let mut detail = format!("the KDC knows {principal} and wants pre-authentication, as AD does");
                    if !keys.is_empty() {
                        detail.push_str(&format!("; it holds its keys in {}", keys.join(", ")));
                    }
                    let keytab = initiator.keytab_keys();
                    match keytab {
                        Some(Ok(entries)) if !etypes.is_empty() && !entries.iter().any(|k| etypes.contains(&k.enctype)) => {
                            checks.push(Check::fail(
                                "kerberos-account",
                                &principal,
                                format!("{detail}; the keytab holds none of them ({})", entries.iter().map(|k| format!("kvno {} {}", k.kvno, passerelle_kerberos::enctype_name(k.enctype))).collect::<Vec<_>>().join(", ")),
                                "make the keytab again with the account's encryption types (ktpass /crypto AES256-SHA1, or msktutil --enctypes)",
                            ));
                        }
                        Some(Ok(entries)) => {
                            detail.push_str(&format!("; the keytab holds {}", entries.iter().map(|k| format!("kvno {} {}", k.kvno, passerelle_kerberos::enctype_name(k.enctype))).collect::<Vec<_>>().join(", ")));
                            checks.push(Check::pass("kerberos-account", &principal, detail));
                        }
                        _ => checks.push(Check::pass("kerberos-account", &principal, detail)),
                    }
                }
                kdc::PRINCIPAL_UNKNOWN | kdc::CLIENT_REVOKED | kdc::WRONG_REALM => checks.push(Check::fail(
                    "kerberos-account",
                    &principal,
                    kdc::error_name(code),
                    "check the user (user@REALM, the realm in capitals, a machine account ends with $) and that the account is enabled",
                )),
                other => checks.push(Check::info("kerberos-account", &principal, kdc::error_name(other))),
            }
        }
        Some(kdc::Answer::Ticket) => checks.push(Check::fail(
            "kerberos-account",
            &principal,
            "the KDC gives this account tickets without pre-authentication: anyone can ask for them and guess its password offline",
            "require Kerberos pre-authentication for the account (in AD, clear \"Do not require Kerberos preauthentication\")",
        )),
        None => {}
    }
    checks
}

/// The credentials and a service ticket, as the gateway gets them.
async fn kerberos_tickets(
    initiator: Arc<passerelle_kerberos::Initiator>,
    timeout: Duration,
) -> Vec<Check> {
    let spn = initiator.spn().to_string();
    let source = initiator.source().describe();
    let probe = tokio::task::spawn_blocking(move || {
        let credentials = initiator.credentials();
        let ticket = credentials
            .as_ref()
            .ok()
            .map(|_| initiator.begin().map(|(_, token)| token.len()));
        (credentials, ticket)
    });
    let (credentials, ticket) = match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(results)) => results,
        _ => {
            return vec![Check::fail(
                "kerberos",
                &spn,
                format!(
                    "no answer from the KDC within {}",
                    humantime::format_duration(timeout)
                ),
                hint(passerelle_kerberos::Failure::KdcUnreachable),
            )]
        }
    };
    let mut checks = Vec::new();
    match credentials {
        Ok((principal, lifetime)) => checks.push(Check::pass(
            "kerberos",
            &principal,
            match lifetime {
                Some(left) => format!(
                    "credentials from {source}, valid for {} more (renewed before they expire)",
                    humantime::format_duration(Duration::from_secs(left.as_secs()))
                ),
                None => format!("credentials from {source}"),
            },
        )),
        Err(e) => {
            checks.push(Check::fail(
                "kerberos",
                &source,
                e.to_string(),
                hint(e.failure),
            ));
            return checks;
        }
    }
    match ticket {
        Some(Ok(size)) => checks.push(Check::pass(
            "kerberos",
            &spn,
            format!(
                "service ticket obtained: the KDC answers and the clocks agree; the Negotiate token is {size} bytes ({} base64 in the header{})",
                size.div_ceil(3) * 4,
                if size > 12_000 {
                    ": large (many group memberships); proxies cap headers near 16-64 KiB"
                } else {
                    ""
                }
            ),
        )),
        Some(Err(e)) => checks.push(Check::fail(
            "kerberos",
            &spn,
            e.to_string(),
            hint(e.failure),
        )),
        None => {}
    }
    checks
}

/// What to do about a Kerberos failure.
fn hint(failure: passerelle_kerberos::Failure) -> &'static str {
    use passerelle_kerberos::Failure;
    match failure {
        Failure::Library => "install MIT Kerberos' GSS-API library: apt install libgssapi-krb5-2 (dnf install krb5-libs)",
        Failure::NoCredentials => "give keytab_file, or password_env/password_file, or keep KRB5CCNAME fresh (k5start)",
        Failure::KdcUnreachable => "check the realm's kdc in krb5.conf (KRB5_CONFIG) and that the jump host reaches it on port 88",
        Failure::PrincipalUnknown => "check user: user@REALM as the domain knows it, realm in upper case",
        Failure::PreauthFailed => "the password or the keytab is wrong (a keytab made before a password change is stale: export it again); each attempt counts toward the account's lockout",
        Failure::AccountRevoked => "the account is disabled, locked or its password expired: ask the AD administrators",
        Failure::ClockSkew => "synchronise the jump host's clock (chrony, systemd-timesyncd): Kerberos allows 5 minutes",
        Failure::SpnUnknown => "the parent's SPN is not registered in the domain (setspn -Q HTTP/<proxy name>), or set spn to the name it is registered under",
        Failure::BadToken | Failure::Other => "run with KRB5_TRACE=/dev/stderr for the library's own account of it",
    }
}

/// The parent: reachable, which schemes it offers, and whether our credentials pass (a
/// CONNECT to a documented TLS flow through the normal handshake).
async fn parent_probe(parent: &Parent, flow: Option<&Arc<Flow>>, runtime: &Runtime) -> Check {
    let url = parent.url.as_str();
    let Some(flow) = flow else {
        return Check::pass("parent", url, "no TLS flow to probe with");
    };
    let Ok(host) = Host::parse(&flow.hosts[0]) else {
        return Check::pass("parent", url, "no flow host to probe with");
    };
    let target = Target {
        host,
        port: flow.tls_ports[0],
        kind: Kind::Connect,
    };
    let via = &runtime.config.listen.via;
    match parent
        .tunnel(&target, flow, via, &runtime.timeouts(flow))
        .await
    {
        Ok(_) => Check::pass(
            "parent",
            url,
            format!("reachable, credentials accepted (CONNECT {target})"),
        ),
        // The parent's policy refused this destination: the parent is there (and, when it
        // asked, accepted the account); the destination's own line says so, and every flow is
        // checked.
        Err(
            e @ (crate::upstream::UpstreamError::Refused { .. }
            | crate::upstream::UpstreamError::DestinationRefused { .. }),
        ) => Check::pass(
            "parent",
            url,
            format!(
                "reachable{}; its policy refused the probe (CONNECT {target}): see that flow's line ({e})",
                if parent.state.handshakes.iter().any(|h| h.load(std::sync::atomic::Ordering::Relaxed) > 0) {
                    ", credentials accepted"
                } else {
                    ""
                }
            ),
        ),
        Err(e) => {
            use crate::record::Reason;
            let hint = match e.reason() {
                Reason::ParentAuthFailed => {
                    "check user, domain and password; Passerelle backs off to protect the account"
                }
                Reason::ParentAuthUnsupported => "set auth to a scheme the parent offers",
                Reason::ParentUnreachable => {
                    "check the parent's address and the jump host's firewall"
                }
                _ => "the parent refused the probe: ask the proxy team to allow the Covotem flows",
            };
            Check::fail("parent", url, e.to_string(), hint)
        }
    }
}

fn tls_connector(extra_ca: Option<&Path>) -> Result<TlsConnector, String> {
    crate::connect::tls_client_config(extra_ca).map(TlsConnector::from)
}

/// The leaf certificate's notAfter.
fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let seconds = cert.validity().not_after.timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// The table for a terminal: ✓/✗ per check, a hint under each failure.
pub fn render(checks: &[Check]) -> String {
    use std::fmt::Write;
    let width = checks
        .iter()
        .map(|c| c.target.chars().count())
        .max()
        .unwrap_or(10);
    let mut out = String::new();
    for c in checks {
        let mark = match c.state {
            CheckState::Pass => "✓",
            CheckState::Fail => "✗",
            CheckState::Info => "i",
            CheckState::Skipped => "–",
        };
        let _ = writeln!(
            out,
            "{mark} {:<7} {:<width$}  {}",
            c.check, c.target, c.detail
        );
        if let Some(hint) = &c.hint {
            let _ = writeln!(out, "  {:<7} {:<width$}  → {hint}", "", "");
        }
    }
    let count = |state| checks.iter().filter(|c| c.state == state).count();
    let _ = writeln!(
        out,
        "\n{} passed, {} failed, {} not checked",
        count(CheckState::Pass),
        count(CheckState::Fail),
        count(CheckState::Skipped)
    );
    out
}
