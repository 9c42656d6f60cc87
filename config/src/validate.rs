//! From the raw configuration to a validated [`Config`]: every problem is collected with its
//! key path (`flows[2].ports[0]: 70000 is not a port`), none stops the others from showing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use passerelle_auth::{AuthMode, Credentials, Secret};

use crate::host::{normalize_ip, Host};
use crate::policy::{Environment, Flow, Policy, Route, Routing};
use crate::raw::{RawConfig, RawFlow, RawProfile, RawUpstream};
use crate::routing::DirectPattern;
use crate::{
    Audit, AuditFormat, AuditSink, Config, Limits, Listen, OnFull, Problem, Resolve, Upstream,
};

const COVOTEM_PROFILE: &str = include_str!("../profiles/covotem.toml");

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const WEEK: Duration = Duration::from_secs(7 * 86_400);

/// Collects problems while validation goes on.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A duration above zero and at most `max` (a bound keeps deadlines computable: an
    /// idle timeout of a billion years would overflow the clock at the first tunnel).
    fn duration(&mut self, path: &str, value: &str, max: Duration) -> Duration {
        match humantime::parse_duration(value) {
            Ok(d) if d.is_zero() => {
                self.add(path, "must be longer than zero");
                Duration::from_secs(1)
            }
            Ok(d) if d > max => {
                self.add(
                    path,
                    format!(
                        "{value:?} is longer than the most this key takes ({})",
                        humantime::format_duration(max)
                    ),
                );
                max
            }
            Ok(d) => d,
            Err(e) => {
                self.add(
                    path,
                    format!(
                        "{value:?} is not a duration ({e}); write e.g. \"10s\", \"15m\", \"1h\""
                    ),
                );
                Duration::from_secs(1)
            }
        }
    }

    fn port(&mut self, path: String, value: i64) -> Option<u16> {
        match u16::try_from(value) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                self.add(path, format!("{value} is not a port"));
                None
            }
        }
    }
}

/// The environment variables the loader sees (injected by tests).
pub type Env = BTreeMap<String, String>;

pub(crate) fn compile(
    raw: RawConfig,
    env: &Env,
    source: Option<PathBuf>,
    digest: String,
    options: crate::Options,
) -> Result<Config, Vec<Problem>> {
    let mut p = Problems::default();
    let secrets = Secrets {
        env,
        read: options.secrets,
    };

    let mut listen = listen(&raw, &mut p);
    listen.proxy_protocol_from = cidrs(
        &raw.listen.proxy_protocol_from,
        "listen.proxy_protocol_from",
        &mut p,
    );
    let clients = clients(&raw, &listen, &mut p);
    let environments = environments(&raw, &mut p);
    let mut flows = flows(&raw, &environments, &mut p);
    qos(&raw, &mut flows, &mut p);
    let upstreams: Vec<Upstream> = raw
        .upstream
        .iter()
        .enumerate()
        .filter_map(|(i, u)| upstream(u, &format!("upstream[{i}]"), &secrets, &listen, &mut p))
        .collect();
    let routing = routing(&raw, !raw.upstream.is_empty(), &mut p);
    let pac = pac(&raw, &mut p);
    let resolve = resolve(&raw, &mut p);
    let limits = limits(&raw, &mut p);
    let audit = audit(&raw, options.secrets, &mut p);
    let admin = crate::Admin {
        allow: cidrs(&raw.admin.allow, "admin.allow", &mut p),
    };
    let pages = crate::Pages {
        contact: raw.pages.contact.trim().to_string(),
        language: raw.pages.language.parse().unwrap_or_else(|e: String| {
            p.add("pages.language", e);
            crate::PageLanguage::Fr
        }),
    };

    let udp = crate::Udp {
        audit: raw.udp.audit,
    };
    let site = crate::Site {
        uplink_mbit: raw
            .site
            .uplink_mbit
            .map(|v| at_least(&mut p, "site.uplink_mbit", v, 1)),
        workstations: raw
            .site
            .workstations
            .map(|v| at_least(&mut p, "site.workstations", v, 1)),
    };

    if !p.0.is_empty() {
        return Err(p.0);
    }
    let warnings = warnings(&routing, &upstreams, &flows, &listen, &admin);
    Ok(Config {
        warnings,
        policy: Policy::new(flows, clients, routing),
        listen,
        upstreams,
        pac,
        resolve,
        limits,
        audit,
        admin,
        pages,
        udp,
        site,
        digest,
        source,
    })
}

/// Where secrets come from: the injected environment and files, or nowhere (validation
/// without secrets: a placeholder stands in for each one named).
struct Secrets<'a> {
    env: &'a Env,
    read: bool,
}

/// Valid, but probably not what was meant.
fn warnings(
    routing: &Routing,
    upstreams: &[Upstream],
    flows: &[crate::Flow],
    listen: &Listen,
    admin: &crate::Admin,
) -> Vec<Problem> {
    let mut w = Vec::new();
    if !upstreams.is_empty() && routing.default == Route::Direct {
        w.push(Problem {
            path: "upstream".to_string(),
            message: "no request goes through the parent: routing.default is \"direct\" (set it \
                      to \"upstream\", or remove [[upstream]])"
                .to_string(),
        });
    }
    for flow in flows.iter().filter(|f| f.enabled) {
        for ip in flow.ips.iter().filter(|ip| crate::host::is_internal(**ip)) {
            w.push(Problem {
                path: format!("flows.{}", flow.id),
                message: format!(
                    "{ip} is an address of a private or local network: Covotem's servers are \
                     public; a flow into the hospital's own network should be meant"
                ),
            });
        }
    }
    if let Some(addr) = listen.admin {
        let only_here =
            !admin.allow.is_empty() && admin.allow.iter().all(|n| n.addr().is_loopback());
        if !addr.ip().is_loopback() && only_here {
            w.push(Problem {
                path: "listen.admin".to_string(),
                message: format!(
                    "{addr} listens beyond this host, but admin.allow lets only this host in: \
                     add the monitoring's and the security team's networks to admin.allow"
                ),
            });
        }
    }
    if routing.default == Route::Upstream && routing.bypass_covotem_server {
        w.push(Problem {
            path: "routing.bypass_covotem_server".to_string(),
            message: "the Covotem server goes direct while the rest goes through the parent: on \
                      a jump host whose only way out is the parent, set it to false"
                .to_string(),
        });
    }
    w
}

fn listen(raw: &RawConfig, p: &mut Problems) -> Listen {
    let mut proxy = Vec::new();
    if raw.listen.proxy.is_empty() {
        p.add("listen.proxy", "needs at least one address");
    }
    for (i, a) in raw.listen.proxy.iter().enumerate() {
        match a.trim().parse::<SocketAddr>() {
            Ok(addr) => proxy.push(addr),
            Err(_) => p.add(
                format!("listen.proxy[{i}]"),
                format!("{a:?} is not an IP:port address"),
            ),
        }
    }
    let via = raw.listen.via.trim().to_string();
    if via.is_empty()
        || !via
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        p.add(
            "listen.via",
            format!("{via:?} must be a token (letters, digits, - . _)"),
        );
    }
    let admin = raw.listen.admin.as_deref().and_then(|a| match a.trim().parse::<SocketAddr>() {
        Ok(addr) => {
            if addr.port() != 0 && proxy.iter().any(|l| l.port() == addr.port() && (l.ip() == addr.ip() || l.ip().is_unspecified() || addr.ip().is_unspecified())) {
                p.add("listen.admin", format!("{addr} is a proxy listener's address: the admin endpoint needs its own port"));
            }
            Some(addr)
        }
        Err(_) => {
            p.add("listen.admin", format!("{a:?} is not an IP:port address"));
            None
        }
    });
    Listen {
        proxy,
        via,
        admin,
        proxy_protocol_from: Vec::new(),
    }
}

fn pac(raw: &RawConfig, p: &mut Problems) -> crate::Pac {
    let proxy = raw.pac.proxy.trim().to_string();
    if !proxy.is_empty() && (!proxy.contains(':') || proxy.contains([' ', ';', '"', '\''])) {
        p.add("pac.proxy", format!("{proxy:?} must be host:port"));
    }
    let direct = raw
        .pac
        .direct
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            DirectPattern::parse(d)
                .map_err(|e| p.add(format!("pac.direct[{i}]"), e.to_string()))
                .ok()
        })
        .collect();
    crate::Pac { proxy, direct }
}

/// CIDRs (or single addresses) at `path`; a network with host bits set is refused, with
/// the network it probably means.
fn cidrs(list: &[String], path: &str, p: &mut Problems) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let c = c.trim();
        let parsed = c
            .parse::<IpNet>()
            .or_else(|_| c.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) if net != net.trunc() => p.add(
                format!("{path}[{i}]"),
                format!(
                    "{c:?} has host bits set: did you mean {}? (a single address is {}/{})",
                    net.trunc(),
                    net.addr(),
                    net.max_prefix_len()
                ),
            ),
            Ok(net) => nets.push(net),
            Err(_) => p.add(
                format!("{path}[{i}]"),
                if c.contains(':') {
                    format!("{c:?} is not a CIDR (e.g. fd00:10:20::/48, a prefix of 128 at most)")
                } else {
                    format!("{c:?} is not a CIDR (e.g. 10.20.0.0/16)")
                },
            ),
        }
    }
    nets
}

fn clients(raw: &RawConfig, listen: &Listen, p: &mut Problems) -> Vec<IpNet> {
    match &raw.clients.allow {
        Some(list) => cidrs(list, "clients.allow", p),
        None => {
            if let Some(open) = listen.proxy.iter().find(|a| !a.ip().is_loopback()) {
                p.add(
                    "clients.allow",
                    format!(
                        "listen.proxy has {open}, which is not loopback: set clients.allow to the \
                         workstations' networks (Passerelle never runs as an open proxy)"
                    ),
                );
            }
            vec![
                "127.0.0.0/8".parse().expect("constant CIDR"),
                "::1/128".parse().expect("constant CIDR"),
            ]
        }
    }
}

fn environments(raw: &RawConfig, p: &mut Problems) -> HashSet<Environment> {
    let mut set = HashSet::new();
    for (i, e) in raw.environments.iter().enumerate() {
        match e.trim().parse() {
            Ok(Environment::All) => p.add(
                format!("environments[{i}]"),
                "\"all\" is a flow's environment; a site switches on production and/or preprod",
            ),
            Ok(environment) => {
                set.insert(environment);
            }
            Err(why) => p.add(format!("environments[{i}]"), why),
        }
    }
    set
}

fn flows(raw: &RawConfig, environments: &HashSet<Environment>, p: &mut Problems) -> Vec<Flow> {
    let mut out = Vec::new();
    match raw.profile.as_str() {
        "none" => {}
        "covotem" => match toml::from_str::<RawProfile>(COVOTEM_PROFILE) {
            Ok(profile) => {
                for (i, f) in profile.flows.iter().enumerate() {
                    if let Some(flow) =
                        flow(f, &format!("profile(covotem).flows[{i}]"), environments, p)
                    {
                        out.push(flow);
                    }
                }
            }
            Err(e) => p.add(
                "profile",
                format!("the embedded covotem profile does not parse: {e}"),
            ),
        },
        other => p.add(
            "profile",
            format!("{other:?} is not a profile (covotem, none)"),
        ),
    }
    for (i, f) in raw.flows.iter().enumerate() {
        if let Some(flow) = flow(f, &format!("flows[{i}]"), environments, p) {
            out.push(flow);
        }
    }
    for (i, f) in raw.flows.iter().enumerate() {
        if out.iter().filter(|o| o.id == f.id).count() > 1 {
            p.add(
                format!("flows[{i}].id"),
                format!("{:?} is already the id of another flow", f.id),
            );
        }
    }
    out
}

fn flow(
    f: &RawFlow,
    path: &str,
    environments: &HashSet<Environment>,
    p: &mut Problems,
) -> Option<Flow> {
    let before = p.0.len();
    if f.id.is_empty()
        || !f
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        p.add(
            format!("{path}.id"),
            format!("{:?} must be lowercase letters, digits, - or _", f.id),
        );
    }
    let mut hosts = Vec::new();
    let mut ips = Vec::new();
    for (i, h) in f.hosts.iter().enumerate() {
        let h = h.trim();
        match Host::parse(h) {
            Ok(Host::Name(n)) => hosts.push(n),
            Ok(Host::Ip(ip)) => ips.push(ip),
            Err(_) if h.starts_with("*.") || h.starts_with('.') => p.add(
                format!("{path}.hosts[{i}]"),
                format!(
                    "{h:?}: flows take exact names, list each host (a wildcard would open a whole \
                     domain; routing.direct is where patterns go)"
                ),
            ),
            Err(_) if h.contains("://") || h.contains('/') => p.add(
                format!("{path}.hosts[{i}]"),
                format!("{h:?}: a host name, without scheme or path"),
            ),
            Err(_)
                if h.rsplit_once(':').is_some_and(|(name, port)| {
                    !name.contains(':')
                        && !port.is_empty()
                        && port.bytes().all(|b| b.is_ascii_digit())
                }) =>
            {
                let (name, port) = h.rsplit_once(':').unwrap_or((h, ""));
                p.add(
                    format!("{path}.hosts[{i}]"),
                    format!("{h:?}: ports go in `ports` (hosts = [\"{name}\"], ports = [{port}])"),
                )
            }
            Err(e) => p.add(format!("{path}.hosts[{i}]"), e.to_string()),
        }
    }
    for (i, ip) in f.ips.iter().enumerate() {
        let text = ip.trim();
        match text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => ips.push(normalize_ip(ip)),
            Err(_) if text.parse::<SocketAddr>().is_ok() => p.add(
                format!("{path}.ips[{i}]"),
                format!(
                    "{text:?} is an address and a port: ips takes addresses, ports go in ports"
                ),
            ),
            Err(_) if text.parse::<IpNet>().is_ok() => p.add(
                format!("{path}.ips[{i}]"),
                format!("{text:?} is a network: ips takes the documented addresses one by one"),
            ),
            Err(_) => p.add(
                format!("{path}.ips[{i}]"),
                format!("{text:?} is not an IP address"),
            ),
        }
    }
    if hosts.is_empty() && ips.is_empty() && f.hosts.is_empty() && f.ips.is_empty() {
        p.add(
            format!("{path}.hosts"),
            "a flow needs at least one host or IP",
        );
    }
    if f.ports.is_empty() && f.udp_ports.is_empty() {
        p.add(format!("{path}.ports"), "a flow needs at least one port");
    }
    let udp_ports: Vec<u16> = f
        .udp_ports
        .iter()
        .enumerate()
        .filter_map(|(i, port)| p.port(format!("{path}.udp_ports[{i}]"), *port))
        .collect();
    if !udp_ports.is_empty() && ips.is_empty() {
        p.add(
            format!("{path}.udp_ports"),
            "UDP is routed by address, not by name: list the flow's documented ips",
        );
    }
    let dscp = f
        .dscp
        .as_ref()
        .and_then(|d| dscp(d, &format!("{path}.dscp"), p));
    let ports: Vec<u16> = f
        .ports
        .iter()
        .enumerate()
        .filter_map(|(i, port)| p.port(format!("{path}.ports[{i}]"), *port))
        .collect();
    let tls_ports: Vec<u16> = match &f.tls_ports {
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, port)| {
                let port = p.port(format!("{path}.tls_ports[{i}]"), *port)?;
                if !ports.contains(&port) {
                    p.add(
                        format!("{path}.tls_ports[{i}]"),
                        format!("{port} is not among the flow's ports"),
                    );
                }
                Some(port)
            })
            .collect(),
        None => ports.iter().copied().filter(|&port| port == 443).collect(),
    };
    let http_ports: Vec<u16> = match &f.http_ports {
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, port)| {
                let port = p.port(format!("{path}.http_ports[{i}]"), *port)?;
                if !ports.contains(&port) || tls_ports.contains(&port) {
                    p.add(
                        format!("{path}.http_ports[{i}]"),
                        format!("{port} must be one of the flow's ports and not a TLS port"),
                    );
                }
                Some(port)
            })
            .collect(),
        None => ports
            .iter()
            .copied()
            .filter(|&port| port == 80 && !tls_ports.contains(&port))
            .collect(),
    };
    let environment = match f.environment.as_deref().unwrap_or("all").parse() {
        Ok(environment) => environment,
        Err(why) => {
            p.add(format!("{path}.environment"), why);
            Environment::All
        }
    };
    let idle_timeout = f
        .idle_timeout
        .as_deref()
        .map(|d| p.duration(&format!("{path}.idle_timeout"), d, WEEK));
    if p.0.len() > before {
        return None;
    }
    Some(Flow {
        id: f.id.clone(),
        description: f.description.clone(),
        hosts,
        ips,
        ports,
        tls_ports,
        http_ports,
        environment,
        tags: f.tags.clone(),
        allow_private: f.allow_private,
        parent_auth: f.parent_auth.unwrap_or(true),
        idle_timeout,
        sni_check: f.sni_check.unwrap_or(true),
        allow_no_sni: f.allow_no_sni,
        udp_ports,
        dscp,
        source: f.source.trim().to_string(),
        enabled: environment == Environment::All || environments.contains(&environment),
    })
}

/// `[qos] dscp`: marks set or removed on flows by id, the profile's included.
fn qos(raw: &RawConfig, flows: &mut [Flow], p: &mut Problems) {
    for (id, value) in &raw.qos.dscp {
        let path = format!("qos.dscp.{id}");
        match flows.iter_mut().find(|f| &f.id == id) {
            Some(flow) => flow.dscp = dscp(value, &path, p),
            None => p.add(path, format!("there is no flow {id:?}")),
        }
    }
}

/// A DSCP: a class name (RFC 4594's `EF`, `AF11`..`AF43`, `CS0`..`CS7`, `LE`), a number
/// 0-63, or `"none"`.
fn dscp(value: &crate::raw::RawDscp, path: &str, p: &mut Problems) -> Option<u8> {
    use crate::raw::RawDscp;
    match value {
        RawDscp::Number(n) => match u8::try_from(*n) {
            Ok(n) if n < 64 => Some(n),
            _ => {
                p.add(path, format!("{n} is not a DSCP (0-63)"));
                None
            }
        },
        RawDscp::Name(name) => match crate::dscp_value(name) {
            Ok(value) => value,
            Err(why) => {
                p.add(path, why);
                None
            }
        },
    }
}

fn routing(raw: &RawConfig, has_parents: bool, p: &mut Problems) -> Routing {
    let default = match raw.routing.default.as_deref().map(str::parse) {
        None if has_parents => Route::Upstream,
        None => Route::Direct,
        Some(Ok(Route::Upstream)) if !has_parents => {
            p.add(
                "routing.default",
                "\"upstream\" needs at least one [[upstream]] entry",
            );
            Route::Upstream
        }
        Some(Ok(route)) => route,
        Some(Err(why)) => {
            p.add("routing.default", why);
            Route::Direct
        }
    };
    let direct = raw
        .routing
        .direct
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match DirectPattern::parse(d) {
            Ok(pattern) => Some(pattern),
            Err(e) => {
                p.add(format!("routing.direct[{i}]"), e.to_string());
                None
            }
        })
        .collect();
    Routing {
        default,
        direct,
        bypass_covotem_server: raw.routing.bypass_covotem_server,
    }
}

fn upstream(
    u: &RawUpstream,
    path: &str,
    secrets: &Secrets,
    listen: &Listen,
    p: &mut Problems,
) -> Option<Upstream> {
    let before = p.0.len();
    let url_path = format!("{path}.url");
    // A bad URL is reported and the entry's other keys still checked, against a stand-in.
    let (tls, host, port) = parent_url(&u.url).unwrap_or_else(|why| {
        p.add(url_path, why);
        (false, Host::Name("proxy.invalid".into()), 1)
    });
    if let Host::Ip(ip) = host {
        if listen
            .proxy
            .iter()
            .any(|l| l.port() == port && (l.ip() == ip || l.ip().is_unspecified()))
        {
            p.add(
                format!("{path}.url"),
                format!(
                    "{} is one of Passerelle's own listen addresses (a proxy loop)",
                    u.url
                ),
            );
        }
    }
    let auth = u.auth.parse().unwrap_or_else(|why| {
        p.add(format!("{path}.auth"), why);
        AuthMode::None
    });
    if u.password.is_some() {
        p.add(
            format!("{path}.password"),
            "secrets do not belong in the config file: use password_env, password_file (systemd \
             LoadCredential, container secrets) or nt_hash_file",
        );
    }
    let sources = [&u.password_env, &u.password_file, &u.nt_hash_file]
        .iter()
        .filter(|s| s.is_some())
        .count();
    if sources > 1 {
        p.add(
            path.to_string(),
            "give only one of password_env, password_file, nt_hash_file",
        );
    }
    let secret = if !secrets.read {
        if u.nt_hash_file.is_some() {
            Some(Secret::NtHash([0; 16]))
        } else if u.password_env.is_some() || u.password_file.is_some() {
            Some(Secret::Password("(not read)".to_string()))
        } else {
            None
        }
    } else if let Some(var) = &u.password_env {
        match secrets.env.get(var) {
            Some(v) if !v.is_empty() => Some(Secret::Password(v.clone())),
            _ => {
                p.add(
                    format!("{path}.password_env"),
                    format!("the environment variable {var} is not set"),
                );
                None
            }
        }
    } else if let Some(file) = &u.password_file {
        Secret::read_password_file(file.as_ref())
            .map_err(|e| p.add(format!("{path}.password_file"), e.to_string()))
            .ok()
    } else if let Some(file) = &u.nt_hash_file {
        Secret::read_nt_hash_file(file.as_ref())
            .map_err(|e| p.add(format!("{path}.nt_hash_file"), e.to_string()))
            .ok()
    } else {
        None
    };
    let kerberos = kerberos(u, path, auth, &host, secret.as_ref(), secrets.read, p);
    let credentials = match (&u.user, secret) {
        (Some(user), Some(secret)) => Credentials::new(user, u.domain.as_deref(), secret)
            .map_err(|e| p.add(format!("{path}.user"), e.to_string()))
            .ok(),
        (None, Some(_)) => {
            p.add(format!("{path}.user"), "a secret is given but no user");
            None
        }
        (Some(_), None) if sources == 0 && kerberos.is_none() && u.password.is_none() => {
            p.add(
                path.to_string(),
                "user is set but no password_env, password_file or nt_hash_file",
            );
            None
        }
        _ => None,
    };
    if auth != AuthMode::None && credentials.is_none() && kerberos.is_none() && u.user.is_none() {
        p.add(
            format!("{path}.user"),
            format!("auth = \"{auth}\" needs a user and a secret"),
        );
    }
    if kerberos.as_ref().is_some_and(|k| k.fallback_ntlm) && credentials.is_none() {
        p.add(
            format!("{path}.negotiate_fallback"),
            "\"ntlm\" needs NTLM credentials: a user with password_env, password_file or nt_hash_file",
        );
    }
    if auth == AuthMode::Basic && u.nt_hash_file.is_some() {
        p.add(
            format!("{path}.nt_hash_file"),
            "Basic needs the password itself, not its NT hash",
        );
    }
    let auth_backoff = u
        .auth_backoff
        .as_deref()
        .map_or(Duration::from_secs(60), |d| {
            p.duration(&format!("{path}.auth_backoff"), d, DAY)
        });
    let auth_backoff_max = u
        .auth_backoff_max
        .as_deref()
        .map_or(Duration::from_secs(3600), |d| {
            p.duration(&format!("{path}.auth_backoff_max"), d, DAY)
        });
    if auth_backoff_max < auth_backoff {
        p.add(
            format!("{path}.auth_backoff_max"),
            "must be at least auth_backoff (the back-off doubles from one to the other)",
        );
    }
    let down_cooldown = u
        .down_cooldown
        .as_deref()
        .map_or(Duration::from_secs(30), |d| {
            p.duration(&format!("{path}.down_cooldown"), d, DAY)
        });
    let health_interval = u
        .health_interval
        .as_deref()
        .map_or(Duration::from_secs(30), |d| {
            p.duration(&format!("{path}.health_interval"), d, DAY)
        });
    if p.0.len() > before {
        return None;
    }
    Some(Upstream {
        url: format!("{}://{}:{}", if tls { "https" } else { "http" }, host, port),
        host,
        port,
        tls,
        ca_file: u.ca_file.as_ref().map(PathBuf::from),
        auth,
        credentials,
        secret_file: match (&u.password_file, &u.nt_hash_file) {
            (Some(path), _) => Some(crate::SecretFile {
                path: PathBuf::from(path),
                nt_hash: false,
            }),
            (None, Some(path)) => Some(crate::SecretFile {
                path: PathBuf::from(path),
                nt_hash: true,
            }),
            (None, None) => None,
        },
        kerberos,
        workstation: u
            .workstation
            .clone()
            .unwrap_or_else(|| "PASSERELLE".to_string()),
        auth_backoff,
        auth_backoff_max,
        down_cooldown,
        health_interval,
    })
}

/// A parent's URL: `http://` or `https://`, a host, and a port (a proxy has no default
/// port), nothing else.
fn parent_url(url: &str) -> Result<(bool, Host, u16), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} names no host"))?;
    if authority.as_str().contains('@') || !matches!(uri.path(), "" | "/") || uri.query().is_some()
    {
        return Err(format!(
            "{url:?} must be scheme://host:port, without path or user"
        ));
    }
    let port = match crate::host::split_authority(authority.as_str()) {
        Ok((_, Some(port))) => port,
        Ok((_, None)) => {
            return Err(format!(
                "{url:?} has no port, and a proxy has no default one: write it (e.g. {}:8080)",
                url.trim_end_matches('/')
            ))
        }
        Err(e) => return Err(format!("{url:?}: {e}")),
    };
    let host = Host::parse(authority.host()).map_err(|e| e.to_string())?;
    Ok((tls, host, port))
}

/// The Kerberos identity for `auth = "negotiate"`, or `auto` with Kerberos credentials (a
/// keytab, a `user@REALM`, or an explicit `spn`).
fn kerberos(
    u: &RawUpstream,
    path: &str,
    auth: AuthMode,
    host: &Host,
    secret: Option<&Secret>,
    read_secrets: bool,
    p: &mut Problems,
) -> Option<crate::Kerberos> {
    let principal_form = u.user.as_deref().is_some_and(|user| user.contains('@'));
    let wanted = match auth {
        AuthMode::Negotiate => true,
        AuthMode::Auto => u.keytab_file.is_some() || principal_form || u.spn.is_some(),
        _ => {
            for (key, set) in [
                ("keytab_file", u.keytab_file.is_some()),
                ("spn", u.spn.is_some()),
                ("negotiate_fallback", u.negotiate_fallback.is_some()),
            ] {
                if set {
                    p.add(
                        format!("{path}.{key}"),
                        format!(
                            "is for Kerberos: auth = \"negotiate\" or \"auto\", not \"{auth}\""
                        ),
                    );
                }
            }
            false
        }
    };
    if !wanted {
        return None;
    }
    let source = if let Some(file) = &u.keytab_file {
        let readable = if read_secrets {
            std::fs::File::open(file).map(drop)
        } else {
            Ok(())
        };
        if let Err(e) = readable {
            p.add(
                format!("{path}.keytab_file"),
                format!("cannot read the keytab {file}: {e}"),
            );
        }
        crate::KerberosSource::Keytab(PathBuf::from(file))
    } else {
        match secret {
            Some(secret @ Secret::Password(_)) => crate::KerberosSource::Password(secret.clone()),
            Some(Secret::NtHash(_)) => {
                if auth == AuthMode::Negotiate {
                    p.add(
                        format!("{path}.nt_hash_file"),
                        "Kerberos needs the password itself (password_env, password_file) or a keytab (keytab_file), not an NT hash",
                    );
                }
                return None;
            }
            None => crate::KerberosSource::Cache,
        }
    };
    // Realms are upper case (AD's always are); `CHU\svc` has no realm: the default one.
    let principal = u.user.as_deref().map(|user| match user.rsplit_once('@') {
        Some((name, realm)) => format!("{name}@{}", realm.to_ascii_uppercase()),
        None => user.rsplit('\\').next().unwrap_or(user).to_string(),
    });
    let spn = match (&u.spn, host) {
        (Some(spn), _) => {
            let spn = spn.trim().replacen('/', "@", 1);
            let valid = spn.split_once('@').is_some_and(|(service, host)| {
                !service.is_empty()
                    && service
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && matches!(Host::parse(host), Ok(Host::Name(_)))
            });
            if !valid {
                p.add(
                    format!("{path}.spn"),
                    format!("{spn:?} must be service@host, e.g. HTTP@proxy1.chu.local"),
                );
            }
            spn
        }
        (None, Host::Name(name)) => format!("HTTP@{name}"),
        (None, Host::Ip(ip)) => {
            p.add(
                format!("{path}.spn"),
                format!(
                    "the parent is given by its address {ip}, and Kerberos names services by host \
                     name: set spn = \"HTTP@<the proxy's name>\" (or write the name in url)"
                ),
            );
            String::new()
        }
    };
    let fallback_ntlm = match u.negotiate_fallback.as_deref() {
        None | Some("none") => false,
        Some("ntlm") => true,
        Some(other) => {
            p.add(
                format!("{path}.negotiate_fallback"),
                format!("{other:?} is not a fallback (none, ntlm)"),
            );
            false
        }
    };
    Some(crate::Kerberos {
        principal,
        source,
        spn,
        fallback_ntlm,
    })
}

fn resolve(raw: &RawConfig, p: &mut Problems) -> Resolve {
    let mut connect_to = HashMap::new();
    for (i, entry) in raw.resolve.connect_to.iter().enumerate() {
        let path = format!("resolve.connect_to[{i}]");
        let Some((from, to)) = entry.split_once('=') else {
            p.add(path, format!("{entry:?} must be HOST:PORT=IP:PORT"));
            continue;
        };
        let from = match crate::host::split_authority(from.trim()) {
            Ok((h, Some(port))) => Host::parse(h).ok().map(|h| (h, port)),
            _ => None,
        };
        let to = to.trim().parse::<SocketAddr>().ok();
        match (from, to) {
            (Some(key), Some(addr)) => {
                connect_to.insert(key, addr);
            }
            (None, _) => p.add(path, format!("{entry:?}: the left side must be HOST:PORT")),
            (_, None) => p.add(path, format!("{entry:?}: the right side must be IP:PORT")),
        }
    }
    Resolve { connect_to }
}

fn limits(raw: &RawConfig, p: &mut Problems) -> Limits {
    let l = &raw.limits;
    let positive = |p: &mut Problems, path: &str, v: i64| -> u32 {
        match u32::try_from(v) {
            Ok(v) if v > 0 => v,
            _ => {
                p.add(path, format!("{v} must be a whole number above zero"));
                1
            }
        }
    };
    Limits {
        connect_timeout: p.duration("limits.connect_timeout", &l.connect_timeout, 10 * MINUTE),
        idle_timeout: p.duration("limits.idle_timeout", &l.idle_timeout, WEEK),
        header_timeout: p.duration("limits.header_timeout", &l.header_timeout, HOUR),
        shutdown_grace: p.duration("limits.shutdown_grace", &l.shutdown_grace, HOUR),
        requests_per_second: positive(p, "limits.requests_per_second", l.requests_per_second),
        burst: positive(p, "limits.burst", l.burst),
        max_connections: positive(p, "limits.max_connections", l.max_connections),
        max_connections_per_client: positive(
            p,
            "limits.max_connections_per_client",
            l.max_connections_per_client,
        ),
        max_header_bytes: at_least(p, "limits.max_header_bytes", l.max_header_bytes, 8192),
        max_uri_bytes: at_least(p, "limits.max_uri_bytes", l.max_uri_bytes, 256),
        sni_timeout: p.duration("limits.sni_timeout", &l.sni_timeout, 10 * MINUTE),
        worker_threads: match l.worker_threads {
            1..=64 => l.worker_threads as u32,
            v => {
                p.add("limits.worker_threads", format!("{v} must be from 1 to 64"));
                1
            }
        },
    }
}

fn at_least(p: &mut Problems, path: &str, value: i64, min: u32) -> u32 {
    match u32::try_from(value) {
        Ok(v) if v >= min => v,
        _ => {
            p.add(path, format!("{value} must be at least {min}"));
            min
        }
    }
}

fn audit(raw: &RawConfig, read_secrets: bool, p: &mut Problems) -> Audit {
    let a = &raw.audit;
    let sink = match (a.sink.as_str(), &a.path) {
        ("stdout", _) => AuditSink::Stdout,
        ("file", Some(path)) if !path.is_empty() => AuditSink::File(PathBuf::from(path)),
        ("file", _) => {
            p.add("audit.path", "sink = \"file\" needs a path");
            AuditSink::Stdout
        }
        ("syslog", _) => {
            let target = if let Some(path) = a.syslog.strip_prefix("unix:") {
                Some(crate::SyslogTarget::Unix(PathBuf::from(path)))
            } else if let Some(addr) = a.syslog.strip_prefix("udp:") {
                addr.parse().ok().map(crate::SyslogTarget::Udp)
            } else {
                None
            };
            match target {
                Some(t) => AuditSink::Syslog(t),
                None => {
                    let msg = format!("{:?} must be unix:/path or udp:IP:PORT", a.syslog);
                    p.add("audit.syslog", msg);
                    AuditSink::Stdout
                }
            }
        }
        (other, _) => {
            let msg = format!("{other:?} is not a sink (stdout, file, syslog)");
            p.add("audit.sink", msg);
            AuditSink::Stdout
        }
    };
    let format = a.format.parse().unwrap_or_else(|why| {
        p.add("audit.format", why);
        AuditFormat::Json
    });
    let on_full = a.on_full.parse().unwrap_or_else(|why| {
        p.add("audit.on_full", why);
        OnFull::Block
    });
    let queue = match usize::try_from(a.queue) {
        Ok(q) if q >= 1 => q,
        _ => {
            p.add("audit.queue", format!("{} must be at least 1", a.queue));
            1
        }
    };
    let key_file = a.key_file.as_ref().map(PathBuf::from);
    if let (Some(path), true) = (&key_file, read_secrets) {
        match std::fs::read(path) {
            Ok(key) if key.len() >= 16 => {}
            Ok(_) => p.add(
                "audit.key_file",
                format!(
                    "{} holds less than 16 bytes: too short a key",
                    path.display()
                ),
            ),
            Err(e) => p.add(
                "audit.key_file",
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    if matches!(format, AuditFormat::Ecs | AuditFormat::Ocsf) {
        p.add(
            "audit.format",
            "the local record is json or squid; ecs and ocsf are for forwarders ([[audit.forward]])",
        );
    }
    let forward = a
        .forward
        .iter()
        .enumerate()
        .filter_map(|(i, f)| Some((i, forward(f, &format!("audit.forward[{i}]"), p)?)))
        .collect::<Vec<_>>();
    let mut dirs = std::collections::HashSet::new();
    for (i, f) in &forward {
        if let Some(spool) = &f.spool {
            if !dirs.insert(spool.dir.clone()) {
                p.add(
                    format!("audit.forward[{i}].spool_dir"),
                    format!("{} is another forwarder's spool", spool.dir.display()),
                );
            }
        }
    }
    let forward = forward.into_iter().map(|(_, f)| f).collect();
    Audit {
        sink,
        format,
        queue,
        on_full,
        key_file,
        forward,
    }
}

/// The default spool of the forwarder to `to`: under the service's state directory.
fn default_spool_dir(to: &str) -> PathBuf {
    let state = std::env::var_os("STATE_DIRECTORY")
        .and_then(|d| std::env::split_paths(&d).next())
        .unwrap_or_else(|| PathBuf::from("/var/lib/passerelle"));
    let name: String = to
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    state.join("spool").join(name)
}

/// A size: bytes, or with a unit (`512MiB`, `1GiB`, `100MB`, `64KiB`).
fn size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn forward(f: &crate::raw::RawForward, path: &str, p: &mut Problems) -> Option<crate::Forward> {
    use crate::{ForwardTls, ForwardTo, SpoolFull, Spooling};
    let before = p.0.len();
    let host_port = |p: &mut Problems, rest: &str| -> Option<(Host, u16)> {
        match crate::host::split_authority(rest) {
            Ok((host, Some(port))) => match Host::parse(host) {
                Ok(host) => Some((host, port)),
                Err(e) => {
                    p.add(format!("{path}.to"), format!("{rest:?}: {e}"));
                    None
                }
            },
            Ok((_, None)) => {
                p.add(
                    format!("{path}.to"),
                    format!("{rest:?} needs a port (HOST:PORT)"),
                );
                None
            }
            Err(e) => {
                p.add(format!("{path}.to"), format!("{rest:?}: {e}"));
                None
            }
        }
    };
    let to = match f.to.split_once(':') {
        Some(("relp+tls", rest)) => host_port(p, rest).map(|(host, port)| ForwardTo::Relp {
            host,
            port,
            tls: true,
        }),
        Some(("relp", rest)) => host_port(p, rest).map(|(host, port)| ForwardTo::Relp {
            host,
            port,
            tls: false,
        }),
        Some(("tls", rest)) => host_port(p, rest).map(|(host, port)| ForwardTo::Tls { host, port }),
        Some(("tcp", rest)) => host_port(p, rest).map(|(host, port)| ForwardTo::Tcp { host, port }),
        Some(("udp", rest)) => host_port(p, rest).map(|(host, port)| ForwardTo::Udp { host, port }),
        Some(("unix", rest)) if rest.starts_with('/') => Some(ForwardTo::Unix(PathBuf::from(rest))),
        _ => {
            p.add(
                format!("{path}.to"),
                format!(
                    "{:?} must be relp+tls:HOST:PORT, relp:HOST:PORT, tls:HOST:PORT, tcp:HOST:PORT, udp:HOST:PORT or unix:/path",
                    f.to
                ),
            );
            None
        }
    };
    let format = match &f.format {
        None => AuditFormat::Json,
        Some(word) => word.parse().unwrap_or_else(|why| {
            p.add(format!("{path}.format"), why);
            AuditFormat::Json
        }),
    };
    let tls_keys = [
        ("ca_file", f.ca_file.is_some()),
        ("cert_file", f.cert_file.is_some()),
        ("key_file", f.key_file.is_some()),
        ("server_name", f.server_name.is_some()),
    ];
    let uses_tls = to.as_ref().is_some_and(ForwardTo::uses_tls);
    if !uses_tls && to.is_some() {
        for (key, given) in tls_keys {
            if given {
                p.add(format!("{path}.{key}"), "only for TLS (relp+tls:, tls:)");
            }
        }
    }
    if f.cert_file.is_some() != f.key_file.is_some() {
        p.add(
            path.to_string(),
            "cert_file and key_file go together (the client's certificate and its key)",
        );
    }
    for (key, file) in [
        ("ca_file", &f.ca_file),
        ("cert_file", &f.cert_file),
        ("key_file", &f.key_file),
    ] {
        if let Some(file) = file {
            if std::fs::metadata(file).is_err() {
                p.add(format!("{path}.{key}"), format!("cannot read {file}"));
            }
        }
    }
    let stream = to.as_ref().is_some_and(ForwardTo::is_stream);
    if !stream && to.is_some() {
        for (key, given) in [
            ("spool_dir", f.spool_dir.is_some()),
            ("spool_max", f.spool_max.is_some()),
            ("on_full", f.on_full.is_some()),
        ] {
            if given {
                p.add(
                    format!("{path}.{key}"),
                    "only for streams (relp, tls, tcp): datagrams are sent as they come",
                );
            }
        }
    }
    let max_bytes = match &f.spool_max {
        None => 1 << 30,
        Some(text) => match size(text) {
            Some(n) if n >= 1 << 20 => n,
            _ => {
                p.add(
                    format!("{path}.spool_max"),
                    format!("{text:?} must be a size of at least 1MiB (512MiB, 2GiB…)"),
                );
                1 << 30
            }
        },
    };
    let on_full = match &f.on_full {
        None => SpoolFull::RefuseNew,
        Some(word) => word.parse().unwrap_or_else(|why| {
            p.add(format!("{path}.on_full"), why);
            SpoolFull::RefuseNew
        }),
    };
    if p.0.len() > before {
        return None;
    }
    let to = to?;
    let host_name = match &to {
        ForwardTo::Relp { host, .. } | ForwardTo::Tls { host, .. } => match host {
            Host::Name(name) => name.clone(),
            Host::Ip(ip) => ip.to_string(),
        },
        _ => String::new(),
    };
    let tls = to.uses_tls().then(|| ForwardTls {
        ca_file: f.ca_file.as_ref().map(PathBuf::from),
        client: f
            .cert_file
            .as_ref()
            .zip(f.key_file.as_ref())
            .map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
        server_name: f.server_name.clone().unwrap_or(host_name),
    });
    let spool = to.is_stream().then(|| Spooling {
        dir: f
            .spool_dir
            .as_ref()
            .map_or_else(|| default_spool_dir(&f.to), PathBuf::from),
        max_bytes,
        on_full,
    });
    Some(crate::Forward {
        name: f.to.clone(),
        to,
        format,
        tls,
        spool,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_above_zero_bounded_and_explained() {
        let mut p = Problems::default();
        assert_eq!(p.duration("a", "90s", HOUR), Duration::from_secs(90));
        assert_eq!(p.duration("a", "1h 30m", DAY), Duration::from_secs(5400));
        assert!(p.0.is_empty());
        p.duration("zero", "0s", HOUR);
        p.duration("long", "2h", HOUR);
        p.duration("word", "ten seconds", HOUR);
        p.duration("bare", "10", HOUR);
        let said: Vec<(&str, &str)> =
            p.0.iter()
                .map(|x| (x.path.as_str(), x.message.as_str()))
                .collect();
        assert_eq!(said[0], ("zero", "must be longer than zero"));
        assert!(said[1]
            .1
            .contains("longer than the most this key takes (1h)"));
        assert!(said[2].1.contains("write e.g. \"10s\""));
        assert_eq!(said[3].0, "bare", "a number without a unit is refused");
    }

    #[test]
    fn ports_are_1_to_65535() {
        let mut p = Problems::default();
        assert_eq!(p.port("p".into(), 1), Some(1));
        assert_eq!(p.port("p".into(), 65535), Some(65535));
        for bad in [0, -1, 65536, i64::MAX] {
            assert_eq!(p.port(format!("p{bad}"), bad), None);
        }
        assert_eq!(p.0.len(), 4);
        assert_eq!(p.0[2].message, "65536 is not a port");
    }
}
