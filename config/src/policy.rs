//! The compiled, immutable policy: who may use the gateway, which targets are allowed (by
//! flow), and which route an allowed target takes. Pure: no I/O, no clock.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::host::Host;
use crate::routing::DirectPattern;

/// How a client asked for the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `CONNECT host:port`: a tunnel.
    Connect,
    /// An absolute-form `http://` request forwarded by the gateway.
    Forward,
}

/// What a client wants to reach.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
    pub kind: Kind,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

crate::vocabulary::vocabulary! {
    /// Which deployment a flow belongs to; a site enables production and/or preprod.
    pub enum Environment ("an environment") {
        Production,
        Preprod,
        All,
    }
}

/// A documented network flow: hosts and IPs, the ports open for them, and how they behave.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Flow {
    pub id: String,
    pub description: String,
    /// Normal-form host names (see [`Host::parse`]).
    pub hosts: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<u16>,
    /// Ports where the client speaks TLS to the destination.
    pub tls_ports: Vec<u16>,
    /// Ports where the client speaks plain HTTP: a CONNECT there is served as HTTP inside
    /// the tunnel, each request decided and audited as if forwarded.
    pub http_ports: Vec<u16>,
    pub environment: Environment,
    pub tags: Vec<String>,
    /// May this flow's names resolve to internal addresses (a PACS on the LAN)?
    pub allow_private: bool,
    /// Send the gateway's credentials to a parent for this flow (false for parents that
    /// hang when credentials are offered for free destinations).
    pub parent_auth: bool,
    #[serde(with = "duration_opt")]
    pub idle_timeout: Option<Duration>,
    /// On `tls_ports`, check the ClientHello's server name against the flow.
    pub sni_check: bool,
    /// On `tls_ports`, accept a ClientHello without a server name for a name target.
    pub allow_no_sni: bool,
    /// UDP ports routed through the jump host to `ips` (`passerelle firewall`).
    pub udp_ports: Vec<u16>,
    /// The QoS mark of its packets (IP TOS / IPv6 traffic class, upper six bits).
    pub dscp: Option<u8>,
    /// Where it comes from (the prerequisites' rows), for the flow matrix.
    pub source: String,
    /// Whether the site's `environments` switch this flow on.
    pub enabled: bool,
}

/// The tag that marks the Covotem server (for `routing.bypass_covotem_server`).
pub const COVOTEM_SERVER_TAG: &str = "covotem-server";

impl Flow {
    pub fn is_covotem_server(&self) -> bool {
        self.tags.iter().any(|t| t == COVOTEM_SERVER_TAG)
    }
}

/// The client as the policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo {
    pub addr: SocketAddr,
}

crate::vocabulary::vocabulary! {
    /// Where an allowed request goes next. The parent is chosen when connecting (failover
    /// over the ordered `[[upstream]]` list), so the decision names the kind of route only.
    pub enum Route ("a route") {
        Direct,
        Upstream,
    }
}

#[derive(Clone, Debug)]
pub enum Decision {
    Allow { flow: Arc<Flow>, route: Route },
    Deny(DenyReason),
}

/// Why the policy refused a request; `code()` is the audit's stable `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    ClientNotAllowed {
        client: IpAddr,
    },
    NoFlow,
    PortNotOpen {
        flow: String,
        port: u16,
        open: Vec<u16>,
    },
    FlowDisabled {
        flow: String,
        environment: Environment,
    },
}

impl DenyReason {
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::ClientNotAllowed { .. } => "client_not_allowed",
            DenyReason::NoFlow => "no_flow",
            DenyReason::PortNotOpen { .. } => "port_not_open",
            DenyReason::FlowDisabled { .. } => "flow_disabled",
        }
    }

    /// The flow that matched partially (host known, port or environment not).
    pub fn flow(&self) -> Option<&str> {
        match self {
            DenyReason::PortNotOpen { flow, .. } | DenyReason::FlowDisabled { flow, .. } => {
                Some(flow)
            }
            DenyReason::ClientNotAllowed { .. } | DenyReason::NoFlow => None,
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::ClientNotAllowed { client } => {
                write!(f, "client {client} is not in clients.allow")
            }
            DenyReason::NoFlow => f.write_str("no allowed flow matches"),
            DenyReason::PortNotOpen { flow, port, open } => {
                let open: Vec<String> = open.iter().map(u16::to_string).collect();
                write!(
                    f,
                    "port {port} is not open for flow {flow} (open: {})",
                    open.join(", ")
                )
            }
            DenyReason::FlowDisabled { flow, environment } => write!(
                f,
                "flow {flow} belongs to the {environment} environment, which is not enabled here"
            ),
        }
    }
}

/// Routing rules, applied only to targets the flows allow.
#[derive(Clone, Debug)]
pub struct Routing {
    pub default: Route,
    pub direct: Vec<DirectPattern>,
    pub bypass_covotem_server: bool,
}

/// Allow first, then route. Built once from a validated config and never mutated: a reload
/// builds a new one and swaps it whole.
#[derive(Debug)]
pub struct Policy {
    flows: Vec<Arc<Flow>>,
    by_name: HashMap<String, Vec<usize>>,
    by_ip: HashMap<IpAddr, Vec<usize>>,
    clients: Vec<IpNet>,
    routing: Routing,
}

impl Policy {
    pub fn new(flows: Vec<Flow>, clients: Vec<IpNet>, routing: Routing) -> Policy {
        let flows: Vec<Arc<Flow>> = flows.into_iter().map(Arc::new).collect();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_ip: HashMap<IpAddr, Vec<usize>> = HashMap::new();
        for (i, flow) in flows.iter().enumerate() {
            for host in &flow.hosts {
                by_name.entry(host.clone()).or_default().push(i);
            }
            for ip in &flow.ips {
                by_ip.entry(*ip).or_default().push(i);
            }
        }
        Policy {
            flows,
            by_name,
            by_ip,
            clients,
            routing,
        }
    }

    /// Every flow, enabled or not, in config order.
    pub fn flows(&self) -> &[Arc<Flow>] {
        &self.flows
    }

    pub fn enabled_flows(&self) -> impl Iterator<Item = &Arc<Flow>> {
        self.flows.iter().filter(|f| f.enabled)
    }

    pub fn clients(&self) -> &[IpNet] {
        &self.clients
    }

    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    pub fn client_allowed(&self, client: &ClientInfo) -> bool {
        let ip = crate::host::normalize_ip(client.addr.ip());
        self.clients.iter().any(|net| net.contains(&ip))
    }

    pub fn decide(&self, client: &ClientInfo, target: &Target) -> Decision {
        if !self.client_allowed(client) {
            return Decision::Deny(DenyReason::ClientNotAllowed {
                client: client.addr.ip(),
            });
        }
        let candidates = match &target.host {
            Host::Name(name) => self.by_name.get(name),
            Host::Ip(ip) => self.by_ip.get(ip),
        };
        let Some(candidates) = candidates else {
            return Decision::Deny(DenyReason::NoFlow);
        };
        let mut wrong_port = None;
        let mut disabled = None;
        for &i in candidates {
            let flow = &self.flows[i];
            if !flow.enabled {
                disabled.get_or_insert(flow);
            } else if !flow.ports.contains(&target.port) {
                wrong_port.get_or_insert(flow);
            } else {
                let route = self.route(flow, &target.host);
                return Decision::Allow {
                    flow: flow.clone(),
                    route,
                };
            }
        }
        let reason = match (wrong_port, disabled) {
            (Some(flow), _) => DenyReason::PortNotOpen {
                flow: flow.id.clone(),
                port: target.port,
                open: flow.ports.clone(),
            },
            (None, Some(flow)) => DenyReason::FlowDisabled {
                flow: flow.id.clone(),
                environment: flow.environment,
            },
            (None, None) => DenyReason::NoFlow,
        };
        Decision::Deny(reason)
    }

    /// The route for an allowed flow. Bypass rules choose a route; they never grant access.
    pub fn route(&self, flow: &Flow, host: &Host) -> Route {
        if self.routing.direct.iter().any(|p| p.matches(host)) {
            return Route::Direct;
        }
        if self.routing.bypass_covotem_server && flow.is_covotem_server() {
            return Route::Direct;
        }
        self.routing.default
    }
}

mod duration_opt {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(id: &str, host: &str, ip: &str, ports: &[u16], env: Environment, on: bool) -> Flow {
        Flow {
            id: id.into(),
            description: String::new(),
            hosts: vec![host.into()],
            ips: vec![ip.parse().unwrap()],
            ports: ports.to_vec(),
            tls_ports: vec![443],
            http_ports: vec![80],
            environment: env,
            tags: if id.starts_with("tlm") {
                vec![COVOTEM_SERVER_TAG.into()]
            } else {
                vec![]
            },
            allow_private: false,
            parent_auth: true,
            idle_timeout: None,
            sni_check: true,
            allow_no_sni: false,
            udp_ports: vec![],
            dscp: None,
            source: String::new(),
            enabled: on,
        }
    }

    fn policy(bypass: bool) -> Policy {
        Policy::new(
            vec![
                flow(
                    "tlm-prod",
                    "covotem.esante-centre.fr",
                    "164.138.243.158",
                    &[80, 443],
                    Environment::Production,
                    true,
                ),
                flow(
                    "tlm-preprod",
                    "covotem-preprod.esante-centre.fr",
                    "164.138.243.157",
                    &[80, 443],
                    Environment::Preprod,
                    false,
                ),
                flow(
                    "sectigo-crt",
                    "crt.sectigo.com",
                    "91.199.212.52",
                    &[80, 443],
                    Environment::All,
                    true,
                ),
            ],
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            Routing {
                default: Route::Upstream,
                direct: vec![DirectPattern::parse("localhost").unwrap()],
                bypass_covotem_server: bypass,
            },
        )
    }

    fn client(s: &str) -> ClientInfo {
        ClientInfo {
            addr: s.parse().unwrap(),
        }
    }

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: Host::parse(host).unwrap(),
            port,
            kind: Kind::Connect,
        }
    }

    fn allowed(d: Decision) -> (String, Route) {
        match d {
            Decision::Allow { flow, route } => (flow.id.clone(), route),
            Decision::Deny(r) => panic!("denied: {r}"),
        }
    }

    fn denied(d: Decision) -> DenyReason {
        match d {
            Decision::Allow { flow, .. } => panic!("allowed by {}", flow.id),
            Decision::Deny(r) => r,
        }
    }

    #[test]
    fn names_and_documented_ips_match_their_flow() {
        let p = policy(false);
        let c = client("127.0.0.1:5000");
        assert_eq!(
            allowed(p.decide(&c, &target("Covotem.Esante-Centre.fr.", 443))).0,
            "tlm-prod"
        );
        assert_eq!(
            allowed(p.decide(&c, &target("164.138.243.158", 80))).0,
            "tlm-prod"
        );
        assert_eq!(
            allowed(p.decide(&c, &target("[::ffff:164.138.243.158]", 443))).0,
            "tlm-prod"
        );
        assert_eq!(
            allowed(p.decide(&c, &target("0xa48af39e", 443))).0,
            "tlm-prod"
        );
        assert_eq!(
            allowed(p.decide(&c, &target("crt.sectigo.com", 80))).0,
            "sectigo-crt"
        );
    }

    #[test]
    fn reasons_name_what_matched_partially() {
        let p = policy(false);
        let c = client("[::1]:5000");
        assert_eq!(
            denied(p.decide(&c, &target("evil.example", 443))),
            DenyReason::NoFlow
        );
        let r = denied(p.decide(&c, &target("covotem.esante-centre.fr", 22)));
        assert_eq!(
            r.to_string(),
            "port 22 is not open for flow tlm-prod (open: 80, 443)"
        );
        let r = denied(p.decide(&c, &target("covotem-preprod.esante-centre.fr", 443)));
        assert_eq!(r.code(), "flow_disabled");
        assert!(r.to_string().contains("preprod"), "{r}");
    }

    #[test]
    fn clients_outside_the_allow_list_are_refused_first() {
        let p = policy(false);
        let r = denied(p.decide(
            &client("192.0.2.7:4000"),
            &target("covotem.esante-centre.fr", 443),
        ));
        assert_eq!(r.code(), "client_not_allowed");
        // IPv4-mapped client addresses are judged as IPv4.
        let mapped = client("[::ffff:127.0.0.1]:4000");
        assert_eq!(
            allowed(p.decide(&mapped, &target("crt.sectigo.com", 443))).0,
            "sectigo-crt"
        );
    }

    #[test]
    fn covotem_bypass_routes_only_the_covotem_server_direct() {
        let c = client("127.0.0.1:5000");
        assert_eq!(
            allowed(policy(true).decide(&c, &target("covotem.esante-centre.fr", 443))).1,
            Route::Direct
        );
        assert_eq!(
            allowed(policy(true).decide(&c, &target("crt.sectigo.com", 443))).1,
            Route::Upstream
        );
        assert_eq!(
            allowed(policy(false).decide(&c, &target("covotem.esante-centre.fr", 443))).1,
            Route::Upstream
        );
    }

    #[test]
    fn bypass_rules_never_grant_access() {
        let r = denied(policy(true).decide(&client("127.0.0.1:1"), &target("localhost", 80)));
        assert_eq!(r, DenyReason::NoFlow);
    }
}
