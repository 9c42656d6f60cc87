//! `passerelle firewall`: the visio's UDP, which no HTTP proxy carries, routed through the
//! jump host by an nftables ruleset, and the flow matrix a network team files; both rendered
//! from the flow table the proxy enforces, so the two can never disagree.

use std::fmt::Write;
use std::net::IpAddr;

use passerelle_config::{Config, Flow, Route};

/// The nftables table Passerelle owns; loading the ruleset again replaces it whole.
pub const TABLE: &str = "passerelle";

/// Connection-tracking marks of the routed flows: this base plus the flow's position among
/// the UDP flows (1-based). The audit follows conntrack entries by it.
pub const MARK_BASE: u32 = 0x5053_0000;

/// The NFLOG group the refused packets go to when `udp.audit` is on.
pub const NFLOG_GROUP: u16 = 5053;

/// The enabled flows the jump host routes (those with `udp_ports` and addresses), in order;
/// a flow's mark is `MARK_BASE + position + 1`.
pub fn udp_flows(config: &Config) -> Vec<&Flow> {
    config
        .policy
        .enabled_flows()
        .filter(|f| !f.udp_ports.is_empty() && !f.ips.is_empty())
        .map(|f| f.as_ref())
        .collect()
}

/// The mark of the flow at `index` in [`udp_flows`].
pub fn mark(index: usize) -> u32 {
    MARK_BASE + index as u32 + 1
}

/// The flow a conntrack mark names, if it is one of ours.
pub fn flow_of_mark(config: &Config, mark: u32) -> Option<&Flow> {
    let index = mark.checked_sub(MARK_BASE + 1)? as usize;
    (index < 0x1_0000)
        .then(|| udp_flows(config).get(index).copied())
        .flatten()
}

/// nftables counter names are identifiers: the flow id with `-` as `_`.
fn counter(flow: &Flow) -> String {
    format!("udp_{}", flow.id.replace('-', "_"))
}

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The workstations' networks: `clients.allow` split by family.
fn clients(config: &Config) -> (Vec<String>, Vec<String>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in config.policy.clients() {
        match net {
            ipnet::IpNet::V4(n) => v4.push(n.to_string()),
            ipnet::IpNet::V6(n) => v6.push(n.to_string()),
        }
    }
    (v4, v6)
}

/// The complete `table inet passerelle`, for `nft -f`. With `input`, the jump host's own
/// input rules for the proxy and admin ports come too.
pub fn nftables(config: &Config, input: bool, audit: bool) -> String {
    let mut out = String::new();
    let source = config
        .source
        .as_ref()
        .map_or("the embedded default".to_string(), |p| {
            p.display().to_string()
        });
    let _ = writeln!(out, "#!/usr/sbin/nft -f");
    let _ = writeln!(
        out,
        "# Passerelle's routed UDP flows, rendered by `passerelle firewall` from {source}\n\
         # (configuration digest {}).\n\
         # Load with `nft -f`; loading it again replaces the table in one transaction (the flows\n\
         # in progress keep running: conntrack is not flushed).",
        config.digest
    );
    let _ = writeln!(out, "table inet {TABLE}\ndelete table inet {TABLE}\n");
    let head = out;
    let mut out = String::new();
    let (v4, v6) = clients(config);
    for (name, kind, nets) in [
        ("workstations4", "ipv4_addr", &v4),
        ("workstations6", "ipv6_addr", &v6),
    ] {
        let _ = writeln!(out, "\tset {name} {{\n\t\ttype {kind}\n\t\tflags interval");
        if !nets.is_empty() {
            let _ = writeln!(out, "\t\telements = {}", list(nets));
        }
        let _ = writeln!(out, "\t}}\n");
    }
    let flows = udp_flows(config);
    let destinations = |v4: bool| -> Vec<String> {
        let mut ips: Vec<String> = flows
            .iter()
            .flat_map(|f| f.ips.iter())
            .filter(|ip| ip.is_ipv4() == v4)
            .map(IpAddr::to_string)
            .collect();
        ips.sort();
        ips.dedup();
        ips
    };
    for (name, kind, ips) in [
        ("destinations4", "ipv4_addr", destinations(true)),
        ("destinations6", "ipv6_addr", destinations(false)),
    ] {
        let _ = writeln!(out, "\tset {name} {{\n\t\ttype {kind}");
        if !ips.is_empty() {
            let _ = writeln!(out, "\t\telements = {}", list(&ips));
        }
        let _ = writeln!(out, "\t}}\n");
    }
    for flow in &flows {
        let _ = writeln!(
            out,
            "\tcounter {} {{\n\t\tcomment \"flow {}\"\n\t}}",
            counter(flow),
            flow.id
        );
    }
    let _ = writeln!(
        out,
        "\tcounter refused {{\n\t\tcomment \"forwarded from the workstations or to the flows' addresses, no flow\"\n\t}}\n"
    );

    let _ = writeln!(out, "\tchain forward {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook forward priority filter; policy accept;"
    );
    for (i, flow) in flows.iter().enumerate() {
        let _ = writeln!(
            out,
            "\t\tct state established,related ct mark {:#x} {}counter name {} accept",
            mark(i),
            dscp_statements(flow).unwrap_or_default(),
            counter(flow)
        );
    }
    let _ = writeln!(out, "\t\tct state established,related accept");
    for (i, flow) in flows.iter().enumerate() {
        let _ = writeln!(
            out,
            "\t\t# {}: {}",
            flow.id,
            one_line(&flow.source, &flow.description)
        );
        for (family, saddr, set, ips) in families(flow) {
            let _ = writeln!(
                out,
                "\t\t{saddr} @{set} {family} daddr {} udp dport {} ct state new ct mark set {:#x} {}counter name {} accept",
                list(ips),
                list(&flow.udp_ports),
                mark(i),
                dscp_statement(family, flow).unwrap_or_default(),
                counter(flow)
            );
        }
    }
    let log = if audit {
        format!("log group {NFLOG_GROUP}")
    } else {
        "log prefix \"passerelle refused: \" level info".to_string()
    };
    let _ = writeln!(
        out,
        "\t\t# everything else from the workstations, or to the flows' addresses from anyone"
    );
    for (addr, set) in [
        ("ip saddr", "workstations4"),
        ("ip6 saddr", "workstations6"),
        ("ip daddr", "destinations4"),
        ("ip6 daddr", "destinations6"),
    ] {
        let _ = writeln!(out, "\t\t{addr} @{set} jump refuse");
    }
    let _ = writeln!(out, "\t}}\n");
    let _ = writeln!(out, "\tchain refuse {{");
    let _ = writeln!(out, "\t\tcounter name refused");
    let _ = writeln!(out, "\t\tlimit rate 20/second burst 40 packets {log}");
    let _ = writeln!(out, "\t\tdrop");
    let _ = writeln!(out, "\t}}\n");

    let _ = writeln!(out, "\tchain postrouting {{");
    let _ = writeln!(
        out,
        "\t\ttype nat hook postrouting priority srcnat; policy accept;"
    );
    for i in 0..flows.len() {
        let _ = writeln!(out, "\t\tct mark {:#x} masquerade", mark(i));
    }
    let _ = writeln!(out, "\t}}");

    // The identity covers the routing, not the optional input rules.
    let id = ruleset_id(&out);
    if input {
        let _ = writeln!(out, "\n\tchain input {{");
        let _ = writeln!(
            out,
            "\t\ttype filter hook input priority filter; policy accept;"
        );
        let proxy_ports: Vec<u16> = config.listen.proxy.iter().map(|a| a.port()).collect();
        let _ = writeln!(out, "\t\t# the proxy: the workstations only");
        for (saddr, set) in [
            ("ip saddr", "workstations4"),
            ("ip6 saddr", "workstations6"),
        ] {
            let _ = writeln!(
                out,
                "\t\t{saddr} @{set} tcp dport {} accept",
                list(&proxy_ports)
            );
        }
        let _ = writeln!(out, "\t\ttcp dport {} drop", list(&proxy_ports));
        if let Some(admin) = config.listen.admin {
            let _ = writeln!(out, "\t\t# the admin endpoint: admin.allow only");
            for net in &config.admin.allow {
                let family = if net.addr().is_ipv4() { "ip" } else { "ip6" };
                let _ = writeln!(
                    out,
                    "\t\t{family} saddr {net} tcp dport {} accept",
                    admin.port()
                );
            }
            let _ = writeln!(out, "\t\ttcp dport {} drop", admin.port());
        }
        let _ = writeln!(out, "\t}}");
    }
    format!("{head}table inet {TABLE} {{\n\tcomment \"{RULESET_MARK} {id}\"\n{out}}}\n")
}

/// The words before the ruleset's identity in the table's comment.
const RULESET_MARK: &str = "passerelle ruleset";

/// What identifies a rendered ruleset: the SHA-256 of its rules, shortened.
fn ruleset_id(rules: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(rules.as_bytes())[..8])
}

/// The identity in a ruleset's text, rendered or as `nft list table` prints it.
pub fn loaded_id(listing: &str) -> Option<&str> {
    let at = listing.find(RULESET_MARK)? + RULESET_MARK.len();
    listing[at..]
        .split_whitespace()
        .next()
        .map(|id| id.trim_end_matches('"'))
}

/// The identity of what `nftables` renders for `config` now.
pub fn rendered_id(config: &Config) -> String {
    let rules = nftables(config, false, config.udp.audit);
    loaded_id(&rules).unwrap_or_default().to_string()
}

/// The flow's addresses by family, with the matching source match and client set.
fn families(flow: &Flow) -> Vec<(&'static str, &'static str, &'static str, Vec<IpAddr>)> {
    let v4: Vec<IpAddr> = flow.ips.iter().copied().filter(IpAddr::is_ipv4).collect();
    let v6: Vec<IpAddr> = flow.ips.iter().copied().filter(IpAddr::is_ipv6).collect();
    let mut out = Vec::new();
    if !v4.is_empty() {
        out.push(("ip", "ip saddr", "workstations4", v4));
    }
    if !v6.is_empty() {
        out.push(("ip6", "ip6 saddr", "workstations6", v6));
    }
    out
}

fn dscp_statement(family: &str, flow: &Flow) -> Option<String> {
    flow.dscp.map(|d| format!("{family} dscp set {d} "))
}

/// On established packets the family is not known from the rule: one statement per family
/// the flow has, each applying only to its own packets.
fn dscp_statements(flow: &Flow) -> Option<String> {
    let d = flow.dscp?;
    let v4 = flow.ips.iter().any(IpAddr::is_ipv4);
    let v6 = flow.ips.iter().any(IpAddr::is_ipv6);
    Some(match (v4, v6) {
        (true, false) => format!("ip dscp set {d} "),
        (false, true) => format!("ip6 dscp set {d} "),
        _ => format!("meta nfproto ipv4 ip dscp set {d} "),
    })
}

fn one_line(source: &str, description: &str) -> String {
    let text = if source.is_empty() {
        description
    } else {
        source
    };
    text.replace(['\n', '\r'], " ")
}

/// One row of the flow matrix.
struct Row {
    flow: String,
    from: String,
    to: String,
    protocol: &'static str,
    ports: String,
    how: String,
    source: String,
}

fn rows(config: &Config) -> Vec<Row> {
    let (v4, v6) = clients(config);
    let workstations = [v4, v6].concat().join(" ");
    let workstations = if workstations.is_empty() {
        "loopback (clients.allow unset)".to_string()
    } else {
        workstations
    };
    let jump: Vec<String> = config.listen.proxy.iter().map(|a| a.to_string()).collect();
    let mut rows = vec![Row {
        flow: "(proxy)".into(),
        from: workstations.clone(),
        to: jump.join(" "),
        protocol: "TCP",
        ports: config
            .listen
            .proxy
            .iter()
            .map(|a| a.port().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        how: "workstations' proxy setting (HTTP proxy, CONNECT)".into(),
        source: "§4.2 Configuration proxy".into(),
    }];
    for parent in &config.upstreams {
        rows.push(Row {
            flow: "(parent)".into(),
            from: "jump host".into(),
            to: parent.host.to_string(),
            protocol: "TCP",
            ports: parent.port.to_string(),
            how: format!("the corporate proxy ({}, auth {})", parent.url, parent.auth),
            source: "§4.2 Configuration proxy".into(),
        });
    }
    let parents: Vec<&str> = config.upstreams.iter().map(|u| u.url.as_str()).collect();
    for flow in config.policy.enabled_flows() {
        let destinations: Vec<String> = flow
            .hosts
            .iter()
            .cloned()
            .chain(flow.ips.iter().map(IpAddr::to_string))
            .collect();
        if !flow.ports.is_empty() {
            let route = match flow
                .hosts
                .first()
                .and_then(|h| passerelle_config::Host::parse(h).ok())
            {
                Some(host) => config.policy.route(flow, &host),
                None => config.policy.routing().default,
            };
            let how = match route {
                Route::Direct => "from the jump host, direct".to_string(),
                Route::Upstream => {
                    format!("from the jump host, through {}", parents.join(", then "))
                }
            };
            rows.push(Row {
                flow: flow.id.clone(),
                from: "jump host".into(),
                to: destinations.join(" "),
                protocol: "TCP",
                ports: flow
                    .ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                how,
                source: flow.source.clone(),
            });
        }
        if !flow.udp_ports.is_empty() {
            rows.push(Row {
                flow: flow.id.clone(),
                from: workstations.clone(),
                to: flow
                    .ips
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                protocol: "UDP",
                ports: flow
                    .udp_ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                how: "routed to the jump host, forwarded and masqueraded (nftables)".into(),
                source: flow.source.clone(),
            });
        }
    }
    rows
}

const HEADER: [&str; 7] = [
    "flow",
    "from",
    "to",
    "protocol",
    "ports",
    "how",
    "prerequisites",
];

/// The flow matrix as CSV (RFC 4180).
pub fn csv(config: &Config) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = HEADER.join(",") + "\r\n";
    for r in rows(config) {
        let cells = [
            &r.flow, &r.from, &r.to, r.protocol, &r.ports, &r.how, &r.source,
        ];
        let line: Vec<String> = cells.iter().map(|c| field(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// The flow matrix as a Markdown table.
pub fn markdown(config: &Config) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = format!(
        "| {} |\n|{}\n",
        HEADER.join(" | "),
        "---|".repeat(HEADER.len())
    );
    for r in rows(config) {
        let cells = [
            &r.flow, &r.from, &r.to, r.protocol, &r.ports, &r.how, &r.source,
        ];
        let line: Vec<String> = cells.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", line.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        passerelle_config::load_str(Some(text), None, &Default::default()).unwrap()
    }

    #[test]
    fn the_ruleset_forwards_exactly_the_udp_flows() {
        let c = config("[clients]\nallow = [\"10.20.0.0/16\", \"fd00::/64\"]\n");
        let rules = nftables(&c, false, false);
        assert!(rules.contains("elements = { 10.20.0.0/16 }"));
        assert!(rules.contains("elements = { fd00::/64 }"));
        assert!(rules.contains(
            "ip saddr @workstations4 ip daddr { 213.249.113.12 } udp dport { 443, 8084 } ct state new ct mark set 0x50530001 ip dscp set 34 counter name udp_visio_equinix2 accept"
        ), "{rules}");
        assert!(rules.contains("ct mark set 0x50530002"), "visio-equinix3");
        assert!(
            !rules.contains("0x50530003"),
            "only the two visio flows carry UDP"
        );
        assert!(rules.contains("ct mark 0x50530001 masquerade"));
        assert!(rules.contains("ip saddr @workstations4 jump refuse"));
        assert!(rules.contains("ip daddr @destinations4 jump refuse"));
        assert!(rules.contains("elements = { 213.249.113.12, 213.249.113.13 }"));
        assert!(!rules.contains("chain input"));
        assert!(rules.starts_with("#!/usr/sbin/nft -f"));
        assert_eq!(
            flow_of_mark(&c, 0x5053_0002).map(|f| f.id.as_str()),
            Some("visio-equinix3")
        );
        assert!(flow_of_mark(&c, 0x5053_0000).is_none() && flow_of_mark(&c, 7).is_none());
        let audited = nftables(&c, true, true);
        assert!(audited.contains("log group 5053") && audited.contains("chain input"));
    }

    #[test]
    fn the_matrix_lists_every_leg_with_its_source() {
        let c =
            config("[clients]\nallow = [\"10.20.0.0/16\"]\n[listen]\nproxy = \"10.20.0.1:3128\"\n");
        let csv = csv(&c);
        assert!(csv.starts_with("flow,from,to,protocol,ports,how,prerequisites\r\n"));
        assert!(csv.contains("(proxy),10.20.0.0/16,10.20.0.1:3128,TCP,3128,"));
        assert!(
            csv.contains("visio-equinix2,10.20.0.0/16,213.249.113.12,UDP,443 8084,"),
            "{csv}"
        );
        assert!(csv.contains("tlm-prod,jump host,covotem.esante-centre.fr 164.138.243.158,TCP,80 443,\"from the jump host, direct\""));
        let md = markdown(&c);
        assert!(
            md.contains("| visio-equinix3 | 10.20.0.0/16 | 213.249.113.13 | UDP | 443 8084 |"),
            "{md}"
        );
    }
}
