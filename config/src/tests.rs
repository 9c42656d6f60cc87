use super::*;

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_str(Some(text), Some(Path::new("test.toml")), &env(vars))
}

fn problems(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match load_text(text, vars) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.problems(),
    }
}

#[test]
fn the_embedded_default_is_the_covotem_production_profile() {
    let c = load(None, &Env::new()).unwrap();
    assert_eq!(c.listen.proxy, vec!["127.0.0.1:3128".parse().unwrap()]);
    assert_eq!(c.policy.flows().len(), 9);
    let on: Vec<&str> = c.policy.enabled_flows().map(|f| f.id.as_str()).collect();
    assert_eq!(
        on,
        [
            "portal-prod",
            "tlm-prod",
            "sectigo-crt",
            "sectigo-ocsp",
            "visio-equinix2",
            "visio-equinix3",
            "visio-signalling"
        ]
    );
    assert_eq!(c.policy.routing().default, Route::Direct);
    assert!(c.upstreams.is_empty());
    assert_eq!(c.audit.sink, AuditSink::Stdout);
    let visio = c
        .policy
        .flows()
        .iter()
        .find(|f| f.id == "visio-equinix2")
        .unwrap();
    assert!(visio.tls_ports.is_empty(), "visio TCP is not HTTPS");
    assert_eq!(visio.ports, vec![443, 8084]);
}

#[test]
fn preprod_switches_on_the_preprod_flows_only() {
    let c = load_text("environments = [\"preprod\"]", &[]).unwrap();
    let on: Vec<&str> = c.policy.enabled_flows().map(|f| f.id.as_str()).collect();
    assert!(
        on.contains(&"tlm-preprod") && !on.contains(&"tlm-prod"),
        "{on:?}"
    );
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    let p = problems(
        "[listen]\nproxi = [\"127.0.0.1:1\"]\n[limits]\nburts = 3\n",
        &[],
    );
    assert!(
        p.contains(&"listen.proxi: unknown key; did you mean listen.proxy?".to_string()),
        "{p:?}"
    );
    assert!(
        p.contains(&"limits.burts: unknown key; did you mean limits.burst?".to_string()),
        "{p:?}"
    );
    let p = problems("", &[("PASSERELLE__LISTEN__PROXI", "x")]);
    assert_eq!(
        p,
        ["listen.proxi: unknown key (from the environment variable PASSERELLE__LISTEN__PROXI); did you mean listen.proxy?"]
    );
    // Nothing near: no suggestion.
    let p = problems(
        "[[flows]]\nid = \"x\"\nhosts = [\"a.b\"]\nports = [1]\nzzzzzzzz = 1\n",
        &[],
    );
    assert_eq!(p, ["flows[0].zzzzzzzz: unknown key"], "{p:?}");
    let p = problems(
        "[[flows]]\nid = \"x\"\nhosts = [\"a.b\"]\nports = [1]\nhost = [\"a.b\"]\n",
        &[],
    );
    assert_eq!(
        p,
        ["flows[0].host: unknown key; did you mean flows[0].hosts?"],
        "{p:?}"
    );
}

#[test]
fn every_problem_is_reported_with_its_key_path() {
    let text = r#"
        [clients]
        allow = ["10.0.0.0/33", "127.0.0.1/32"]
        [[flows]]
        id = "pacs"
        hosts = ["pacs.chu.local"]
        ports = [104]
        [[flows]]
        id = "hl7"
        hosts = ["hl7.chu.local"]
        ports = [70000]
        idle_timeout = "soon"
        [[upstream]]
        url = "ftp://proxy"
        [limits]
        connect_timeout = "0s"
    "#;
    let p = problems(text, &[]);
    for expected in [
        "clients.allow[0]: \"10.0.0.0/33\" is not a CIDR",
        "flows[1].ports[0]: 70000 is not a port",
        "flows[1].idle_timeout: \"soon\" is not a duration",
        "upstream[0].url: \"ftp://proxy\" must start with http:// or https://",
        "limits.connect_timeout: must be longer than zero",
    ] {
        assert!(
            p.iter().any(|x| x.starts_with(expected)),
            "missing {expected:?} in {p:?}"
        );
    }
}

#[test]
fn a_wrong_type_names_its_key() {
    let p = problems(
        "[[flows]]\nid = \"x\"\nhosts = [\"a.b\"]\nports = [\"http\"]\n",
        &[],
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("flows[0].ports[0]:"), "{p:?}");
}

#[test]
fn listening_beyond_loopback_needs_clients_allow() {
    let p = problems("[listen]\nproxy = [\"0.0.0.0:3128\"]\n", &[]);
    assert!(
        p[0].starts_with("clients.allow: listen.proxy has 0.0.0.0:3128"),
        "{p:?}"
    );
    let c = load_text(
        "[listen]\nproxy = [\"0.0.0.0:3128\"]\n[clients]\nallow = [\"10.20.0.0/16\"]\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.policy.clients(),
        &["10.20.0.0/16".parse::<ipnet::IpNet>().unwrap()]
    );
}

#[test]
fn environment_overrides_win_over_the_file() {
    let c = load_text(
        "[listen]\nproxy = [\"127.0.0.1:3128\"]\n[limits]\nburst = 5\n",
        &[
            (
                "PASSERELLE__LISTEN__PROXY",
                "127.0.0.2:8080, 127.0.0.3:8081",
            ),
            ("PASSERELLE__LIMITS__BURST", "7"),
            ("PASSERELLE__ROUTING__BYPASS_COVOTEM_SERVER", "false"),
            ("PASSERELLE_UNRELATED", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(
        c.listen.proxy,
        vec![
            "127.0.0.2:8080".parse().unwrap(),
            "127.0.0.3:8081".parse().unwrap()
        ]
    );
    assert_eq!(c.limits.burst, 7);
    assert!(!c.policy.routing().bypass_covotem_server);
}

#[test]
fn site_flows_join_the_profile_and_ids_are_unique() {
    let c = load_text("[[flows]]\nid = \"pacs\"\nhosts = [\"PACS.chu.local.\"]\nports = [104, 443]\nallow_private = true\n", &[]).unwrap();
    let pacs = c.policy.flows().iter().find(|f| f.id == "pacs").unwrap();
    assert_eq!(pacs.hosts, ["pacs.chu.local"]);
    assert_eq!(pacs.tls_ports, [443]);
    assert!(pacs.enabled && pacs.allow_private);
    let p = problems(
        "[[flows]]\nid = \"tlm-prod\"\nhosts = [\"x.y\"]\nports = [1]\n",
        &[],
    );
    assert!(
        p[0].starts_with("flows[0].id: \"tlm-prod\" is already"),
        "{p:?}"
    );
}

#[test]
fn upstream_secrets_come_from_env_or_files_never_the_config() {
    let p = problems("[[upstream]]\nurl = \"http://proxy:8080\"\nauth = \"ntlm\"\nuser = 'CHU\\svc'\npassword = \"hunter2\"\n", &[]);
    assert!(
        p.iter()
            .any(|x| x.starts_with("upstream[0].password: secrets do not belong")),
        "{p:?}"
    );
    assert!(p.iter().all(|x| !x.contains("hunter2")), "{p:?}");

    let text = "[[upstream]]\nurl = \"http://proxy.chu.local:8080\"\nauth = \"ntlm\"\nuser = 'CHU\\svc'\npassword_env = \"PW\"\n";
    let c = load_text(text, &[("PW", "s3cret")]).unwrap();
    let u = &c.upstreams[0];
    assert_eq!(u.url, "http://proxy.chu.local:8080");
    assert_eq!(u.credentials.as_ref().unwrap().account(), "CHU\\svc");
    assert_eq!(c.policy.routing().default, Route::Upstream);
    assert!(!format!("{c:?}").contains("s3cret"));
    let p = problems(text, &[]);
    assert_eq!(
        p,
        ["upstream[0].password_env: the environment variable PW is not set"]
    );

    let dir = tempfile::tempdir().unwrap();
    let hash = dir.path().join("hash");
    std::fs::write(&hash, "a4f49c406510bdcab6824ee7c30fd852\n").unwrap();
    let text = format!("[[upstream]]\nurl = \"http://p:1\"\nauth = \"ntlm\"\nuser = \"u@d\"\nnt_hash_file = \"{}\"\n", hash.display());
    assert!(load_text(&text, &[]).is_ok());
}

#[test]
fn a_parent_that_is_ourselves_is_a_loop() {
    let p = problems("[[upstream]]\nurl = \"http://127.0.0.1:3128\"\n", &[]);
    assert!(p[0].contains("a proxy loop"), "{p:?}");
}

#[test]
fn connect_to_entries() {
    let c = load_text("[resolve]\nconnect_to = [\"covotem.esante-centre.fr:443=127.0.0.1:18443\", \"[::1]:80=127.0.0.1:1\"]\n", &[]).unwrap();
    let host = Host::parse("covotem.esante-centre.fr").unwrap();
    assert_eq!(
        c.resolve.lookup(&host, 443),
        Some("127.0.0.1:18443".parse().unwrap())
    );
    assert_eq!(
        c.resolve.lookup(&Host::parse("::1").unwrap(), 80),
        Some("127.0.0.1:1".parse().unwrap())
    );
    let p = problems("[resolve]\nconnect_to = [\"a:1=b:2\"]\n", &[]);
    assert!(p[0].contains("the right side must be IP:PORT"), "{p:?}");
}

#[test]
fn syntax_errors_name_the_line() {
    let e = load_text("[listen\n", &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }));
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn the_default_file_lists_every_section() {
    for section in [
        "[listen]",
        "[clients]",
        "[[flows]]",
        "[routing]",
        "[[upstream]]",
        "[resolve]",
        "[limits]",
        "[audit]",
    ] {
        assert!(DEFAULT_TOML.contains(section), "{section}");
    }
}

#[test]
fn parent_urls_are_scheme_host_and_port_only() {
    let text = |u: &str| format!("[[upstream]]\nurl = \"{u}\"\n");
    let url = |u: &str| problems(&text(u), &[]);
    let c = load_text(&text("HTTPS://[2001:db8::1]:3128/"), &[]).unwrap();
    assert_eq!(c.upstreams[0].url, "https://[2001:db8::1]:3128");
    let c = load_text(&text("http://Proxy.CHU.local:8080"), &[]).unwrap();
    assert_eq!(c.upstreams[0].url, "http://proxy.chu.local:8080");
    for (bad, words) in [
        (
            "http://proxy.chu.local",
            "has no port, and a proxy has no default one",
        ),
        ("http://proxy:0", "\"0\" is not a port"),
        ("http://proxy:+80", "\"+80\" is not a port"),
        ("http://proxy:99999", "\"99999\" is not a port"),
        ("http://user:pw@proxy:8080", "without path or user"),
        ("http://proxy:8080/path", "without path or user"),
        ("http://proxy:8080/?q", "without path or user"),
        ("socks5://proxy:1080", "must start with http:// or https://"),
        ("proxy:8080", "must start with http:// or https://"),
        ("http://pro xy:8080", "is not a URL"),
    ] {
        let said = url(bad);
        assert!(
            said.len() == 1 && said[0].starts_with("upstream[0].url: ") && said[0].contains(words),
            "{bad}: {said:?}"
        );
    }
}

#[test]
fn dscp_classes_and_numbers() {
    use crate::dscp_value;
    assert_eq!(dscp_value("AF41"), Ok(Some(34)));
    assert_eq!(dscp_value("af11"), Ok(Some(10)));
    assert_eq!(dscp_value("EF"), Ok(Some(46)));
    assert_eq!(dscp_value("CS3"), Ok(Some(24)));
    assert_eq!(dscp_value("46"), Ok(Some(46)));
    assert_eq!(dscp_value("none"), Ok(None));
    for bad in ["AF44", "AF51", "CS8", "64", "gold"] {
        assert!(dscp_value(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_visio_flows_carry_udp_and_af41_and_a_site_can_change_the_mark() {
    let c = load_text("", &[]).unwrap();
    let flow = |c: &Config, id: &str| {
        c.policy
            .flows()
            .iter()
            .find(|f| f.id == id)
            .unwrap()
            .clone()
    };
    let visio = flow(&c, "visio-equinix2");
    assert_eq!(visio.udp_ports, [443, 8084]);
    assert_eq!(visio.dscp, Some(34));
    assert!(visio.source.contains("213.249.113.12"));
    assert_eq!(flow(&c, "tlm-prod").dscp, None);
    let c = load_text("[qos]\ndscp = { \"visio-equinix2\" = \"EF\", \"visio-equinix3\" = \"none\", \"tlm-prod\" = 26 }\n", &[]).unwrap();
    assert_eq!(flow(&c, "visio-equinix2").dscp, Some(46));
    assert_eq!(flow(&c, "visio-equinix3").dscp, None);
    assert_eq!(flow(&c, "tlm-prod").dscp, Some(26));
    assert_eq!(
        problems(
            "[qos]\ndscp = { \"nope\" = \"EF\", \"tlm-prod\" = 64 }\n",
            &[]
        ),
        [
            "qos.dscp.nope: there is no flow \"nope\"",
            "qos.dscp.tlm-prod: 64 is not a DSCP (0-63)"
        ]
    );
}

#[test]
fn udp_ports_need_addresses() {
    let p = problems(
        "[[flows]]\nid = \"u\"\nhosts = [\"media.example\"]\nudp_ports = [3478, 0]\n",
        &[],
    );
    assert_eq!(
        p,
        [
            "flows[0].udp_ports[1]: 0 is not a port",
            "flows[0].udp_ports: UDP is routed by address, not by name: list the flow's documented ips"
        ]
    );
    let c = load_text(
        "[[flows]]\nid = \"u\"\nips = [\"198.18.0.9\"]\nudp_ports = [3478]\n",
        &[],
    )
    .unwrap();
    let f = c.policy.flows().iter().find(|f| f.id == "u").unwrap();
    assert!(
        f.ports.is_empty() && f.udp_ports == [3478],
        "a UDP-only flow opens no TCP port"
    );
}

#[test]
fn worker_threads_are_one_to_sixty_four() {
    assert_eq!(load_text("", &[]).unwrap().limits.worker_threads, 1);
    let c = load_text("[limits]\nworker_threads = 64\n", &[]).unwrap();
    assert_eq!(c.limits.worker_threads, 64);
    for bad in ["0", "65", "-1"] {
        let p = problems(&format!("[limits]\nworker_threads = {bad}\n"), &[]);
        assert_eq!(
            p,
            [format!("limits.worker_threads: {bad} must be from 1 to 64")]
        );
    }
}

#[test]
fn audit_forwarders_are_checked_key_by_key() {
    let dir = std::env::temp_dir();
    let ca = dir.join("passerelle-config-test-ca.pem");
    std::fs::write(&ca, "not read here").unwrap();
    let ca = ca.display().to_string();
    let good = format!(
        r#"
        [[audit.forward]]
        to = "relp+tls:collector.chu.local:2514"
        format = "ocsf"
        ca_file = "{ca}"
        spool_dir = "/tmp/spool-a"
        spool_max = "64MiB"
        on_full = "drop_oldest"
        [[audit.forward]]
        to = "udp:[2001:db8::5]:514"
        format = "ecs"
        [[audit.forward]]
        to = "unix:/dev/log"
    "#
    );
    let c = load_text(&good, &[]).unwrap();
    let f = &c.audit.forward;
    assert_eq!(f.len(), 3);
    assert_eq!(
        f[0].to,
        ForwardTo::Relp {
            host: Host::Name("collector.chu.local".into()),
            port: 2514,
            tls: true
        }
    );
    assert_eq!(f[0].format, AuditFormat::Ocsf);
    let tls = f[0].tls.as_ref().unwrap();
    assert_eq!(tls.server_name, "collector.chu.local");
    assert_eq!(tls.ca_file.as_deref(), Some(Path::new(&ca)));
    let spool = f[0].spool.as_ref().unwrap();
    assert_eq!(
        (spool.max_bytes, spool.on_full),
        (64 << 20, SpoolFull::DropOldest)
    );
    assert!(matches!(f[1].to, ForwardTo::Udp { port: 514, .. }));
    assert!(f[1].spool.is_none() && f[1].tls.is_none());
    assert_eq!(f[2].format, AuditFormat::Json);

    let bad = r#"
        [audit]
        format = "ecs"
        [[audit.forward]]
        to = "http://collector:514"
        [[audit.forward]]
        to = "tcp:collector"
        [[audit.forward]]
        to = "tcp:collector:6514"
        server_name = "collector"
        spool_max = "10KiB"
        on_full = "block"
        [[audit.forward]]
        to = "udp:collector:514"
        spool_dir = "/tmp/x"
        format = "cef"
        [[audit.forward]]
        to = "tls:collector:6514"
        cert_file = "/nonexistent/cert.pem"
        [[audit.forward]]
        to = "relp:a:1"
        spool_dir = "/tmp/same"
        [[audit.forward]]
        to = "relp:b:1"
        spool_dir = "/tmp/same"
    "#;
    let p = problems(bad, &[]);
    for expected in [
        "audit.format: the local record is json or squid",
        "audit.forward[0].to: \"http://collector:514\" must be relp+tls:HOST:PORT",
        "audit.forward[1].to: \"collector\" needs a port",
        "audit.forward[2].server_name: only for TLS",
        "audit.forward[2].spool_max: \"10KiB\" must be a size of at least 1MiB",
        "audit.forward[2].on_full: \"block\" is not a choice (refuse_new, drop_oldest)",
        "audit.forward[3].spool_dir: only for streams",
        "audit.forward[3].format: \"cef\" is not a format",
        "audit.forward[4]: cert_file and key_file go together",
        "audit.forward[4].cert_file: cannot read /nonexistent/cert.pem",
        "audit.forward[6].spool_dir: /tmp/same is another forwarder's spool",
    ] {
        assert!(
            p.iter().any(|x| x.starts_with(expected)),
            "missing {expected:?} in {p:#?}"
        );
    }
}

#[test]
fn a_value_of_the_wrong_type_is_said_with_every_other_problem() {
    let p = problems(
        r#"
        [[flows]]
        id = "pacs"
        hosts = ["pacs.chu.local:104"]
        ports = ["443"]
        [limits]
        burst = 1.5
        [clients]
        allow = ["fe80::/129"]
        [routing]
        default = 5
    "#,
        &[],
    );
    for expected in [
        "flows[0].ports[0]: \"443\" is a string, where a whole number is expected (write 443 without quotes)",
        "limits.burst: 1.5 is a number with a fraction, where a whole number is expected",
        "routing.default: 5 is a whole number, where a string is expected",
        "clients.allow[0]: \"fe80::/129\" is not a CIDR (e.g. fd00:10:20::/48",
        "flows[0].hosts[0]: \"pacs.chu.local:104\": ports go in `ports` (hosts = [\"pacs.chu.local\"], ports = [104])",
    ] {
        assert!(
            p.iter().any(|x| x.starts_with(expected)),
            "missing {expected:?} in {p:#?}"
        );
    }
    // Each key once, and no Rust in the words.
    assert_eq!(
        p.iter()
            .filter(|x| x.starts_with("routing.default"))
            .count(),
        1,
        "{p:#?}"
    );
    let table = problems("[routing]\ndefault = [1]\n", &[]);
    assert!(
        !table
            .iter()
            .any(|x| x.contains("Raw") || x.contains("for key")),
        "{table:?}"
    );
    assert!(table[0].contains("a list, expected a string"), "{table:?}");
}
