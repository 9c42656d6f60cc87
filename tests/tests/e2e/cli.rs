//! The `passerelle` binary: check-config, print-default-config, hash-password, environment
//! overrides, signals (reload, graceful stop), and memory on a large download.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use passerelle_tests::harness::{curl, passerelle_bin, read_audit, Reaped, Running};
use passerelle_tests::origin::HttpOrigin;

fn check_config(file: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(passerelle_bin())
        .args(["check-config", "--config"])
        .arg(file)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_on_the_embedded_default_prints_the_flows() {
    let out = Command::new(passerelle_bin())
        .arg("check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("tlm-prod") && stdout.contains("covotem.esante-centre.fr"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Off (environment not enabled): portal-preprod, tlm-preprod"),
        "{stdout}"
    );
}

#[test]
fn check_config_reports_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
        typo_key = 1
        [listen]
        proxy = ["0.0.0.0:3128"]
        [[flows]]
        id = "hl7"
        hosts = ["hl7.chu.local"]
        ports = [70000]
        [routing]
        direct = ["10.0.0.0/40"]
        "#,
    )
    .unwrap();
    let (code, _, stderr) = check_config(&file, &[]);
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        "typo_key: unknown key",
        "clients.allow: listen.proxy has 0.0.0.0:3128, which is not loopback",
        "flows[0].ports[0]: 70000 is not a port",
        "routing.direct[0]:",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    let (code, _, stderr) = check_config(&file, &[("PASSERELLE__CLIENTS__ALLOW", "10.0.0.0/33")]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("clients.allow[0]: \"10.0.0.0/33\" is not a CIDR"),
        "{stderr}"
    );
}

#[test]
fn check_config_explains_mistakes_and_preflight_finds_what_start_would() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mistakes.toml");
    std::fs::write(
        &file,
        r#"
        [listen]
        proxy = "127.0.0.1:3129"
        [[flows]]
        id = "pacs"
        hosts = ["*.chu.local"]
        ips = ["10.0.0.1:104"]
        ports = [104]
        [[upstream]]
        url = "http://proxy.chu.local"
        auth = "ntlm"
        user = 'CHU\svc'
        password = "in the file"
        [limits]
        conect_timeout = "3s"
        "#,
    )
    .unwrap();
    let (code, _, stderr) = check_config(&file, &[]);
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        "limits.conect_timeout: unknown key; did you mean limits.connect_timeout?",
        "flows[0].hosts[0]: \"*.chu.local\": flows take exact names",
        "flows[0].ips[0]: \"10.0.0.1:104\" is an address and a port",
        "upstream[0].url: \"http://proxy.chu.local\" has no port, and a proxy has no default one",
        "upstream[0].password: secrets do not belong in the config file",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains(".?"), "a noise line: {stderr}");
    assert!(
        !stderr.contains("in the file"),
        "the secret was echoed: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 6, "one line per problem: {stderr}");

    // Valid, but the Covotem server would bypass the only way out: a warning.
    let bypass = dir.path().join("bypass.toml");
    std::fs::write(
        &bypass,
        "[routing]\ndefault = \"upstream\"\n[[upstream]]\nurl = \"http://proxy.chu.local:8080\"\n",
    )
    .unwrap();
    let (code, _, stderr) = check_config(&bypass, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: routing.bypass_covotem_server: the Covotem server goes direct"),
        "{stderr}"
    );

    // --preflight: what start would meet, with the key and the path.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(passerelle_bin())
        .args(["check-config", "--preflight"])
        .env(
            "PASSERELLE__LISTEN__PROXY",
            taken.local_addr().unwrap().to_string(),
        )
        .env("PASSERELLE__AUDIT__SINK", "file")
        .env(
            "PASSERELLE__AUDIT__PATH",
            dir.path().join("missing/audit.jsonl"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "listen.proxy[0]: cannot listen on {}",
            taken.local_addr().unwrap()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("audit.path: cannot open the audit sink"),
        "{stderr}"
    );
    assert!(stderr.contains("missing/audit.jsonl"), "{stderr}");
    // What start would meet is not the configuration's fault, and is not said to be.
    assert!(
        stderr.contains("the configuration is valid, but the service cannot start with it here")
            && !stderr.contains("is not valid"),
        "{stderr}"
    );
}

#[test]
fn check_config_shows_the_whole_boundary_and_warns_of_what_is_probably_not_meant() {
    let dir = tempfile::tempdir().unwrap();
    let keytab = dir.path().join("svc.keytab");
    std::fs::write(&keytab, b"not read by check-config").unwrap();
    let file = dir.path().join("boundary.toml");
    std::fs::write(
        &file,
        format!(
            "[listen]\nadmin = \"0.0.0.0:9090\"\nproxy_protocol_from = [\"10.9.0.5/32\"]\n\
             [clients]\nallow = [\"10.20.0.0/16\"]\n\
             [routing]\ndefault = \"direct\"\n\
             [[upstream]]\nurl = \"http://proxy.chu.local:8080\"\nauth = \"negotiate\"\nuser = \"svc@CHU.LOCAL\"\nkeytab_file = \"{}\"\n\
             [[flows]]\nid = \"pacs\"\nhosts = [\"10.1.2.3\"]\nports = [104]\n\
             [resolve]\nconnect_to = [\"a.test:80=127.0.0.1:8000\"]\n\
             [[audit.forward]]\nto = \"udp:127.0.0.1:514\"\nformat = \"ecs\"\n",
            keytab.display()
        ),
    )
    .unwrap();
    let (code, stdout, stderr) =
        check_config(&file, &[("PASSERELLE__LISTEN__PROXY", "0.0.0.0:3128")]);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "PROXY protocol required from 10.9.0.5/32",
        "Admin endpoint on 0.0.0.0:9090, for 127.0.0.0/8, ::1/128",
        "Parent http://proxy.chu.local:8080 (auth negotiate, account svc@CHU.LOCAL (Kerberos, SPN HTTP@proxy.chu.local))",
        "Reached at fixed addresses (resolve.connect_to): a.test:80 -> 127.0.0.1:8000",
        "Audit to stdout (json, chain without a key)",
        "Audit forwarded to udp:127.0.0.1:514 (ecs)",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The firewall rendered for the embedded default's loopback workstations lets nobody in.
    let out = Command::new(passerelle_bin())
        .arg("firewall")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("warning: clients.allow names only this host"),
        "{out:?}"
    );
    for warning in [
        "warning: upstream: no request goes through the parent",
        "warning: flows.pacs: 10.1.2.3 is an address of a private or local network",
        "warning: listen.admin: 0.0.0.0:9090 listens beyond this host, but admin.allow lets only this host in",
    ] {
        assert!(stderr.contains(warning), "missing {warning:?} in:\n{stderr}");
    }
}

#[test]
fn check_config_survives_hostile_but_valid_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.toml");
    // Thousands of ports once made the table's column width overflow (a panic, exit 101).
    let ports: Vec<String> = (1000..6000).map(|p| p.to_string()).collect();
    std::fs::write(
        &file,
        format!(
            "[[flows]]\nid = \"wide\"\nhosts = [\"wide.chu.local\"]\nports = [{}, 7000, 7002]\n",
            ports.join(", ")
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = check_config(&file, &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("1000-5999, 7000, 7002"), "{stdout}");
}

#[test]
fn durations_are_bounded_and_cidrs_have_no_host_bits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("long.toml");
    std::fs::write(
        &file,
        "[limits]\nidle_timeout = \"300000000000years\"\nconnect_timeout = \"2h\"\n\
         [clients]\nallow = [\"10.20.30.1/24\"]\n\
         [[flows]]\nid = \"f\"\nhosts = [\"f.chu.local\"]\nports = [443]\nidle_timeout = \"9999d\"\n",
    )
    .unwrap();
    let (code, _, stderr) = check_config(&file, &[]);
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        "limits.idle_timeout:",
        "limits.connect_timeout: \"2h\" is longer than the most this key takes (10m)",
        "flows[0].idle_timeout: \"9999d\" is longer than the most this key takes (7days)",
        "clients.allow[0]: \"10.20.30.1/24\" has host bits set: did you mean 10.20.30.0/24?",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn the_printed_default_and_every_deploy_example_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(passerelle_bin())
        .arg("print-default-config")
        .output()
        .unwrap();
    let default = dir.path().join("default.toml");
    std::fs::write(&default, &out.stdout).unwrap();
    let (code, stdout, stderr) = check_config(&default, &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.is_empty(),
        "the default configuration has warnings: {stderr}"
    );
    // The examples as shipped, secrets not read (they are not here), and the configuration
    // embedded in the Kubernetes manifest; none with a warning.
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(deploy.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    let manifest = std::fs::read_to_string(deploy.join("kubernetes/passerelle.yaml")).unwrap();
    let embedded: String = manifest
        .split("passerelle.toml: |\n")
        .nth(1)
        .expect("the ConfigMap's passerelle.toml")
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let k8s = dir.path().join("kubernetes.toml");
    std::fs::write(&k8s, embedded).unwrap();
    files.push(k8s);
    assert!(files.len() >= 5, "{files:?}");
    for path in &files {
        let out = Command::new(passerelle_bin())
            .args(["check-config", "--without-secrets", "--config"])
            .arg(path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "{}:\n{stderr}",
            path.display()
        );
    }
    // Without --without-secrets, a missing secret is a problem with its key.
    let ntlm = deploy.join("examples/jump-host-ntlm.toml");
    let (code, _, stderr) = check_config(&ntlm, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("upstream[0].password_file: cannot read the secret file /etc/passerelle/upstream-password"),
        "{stderr}"
    );
}

#[test]
fn hash_password_prints_the_nt_hash() {
    let mut child = Command::new(passerelle_bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "a4f49c406510bdcab6824ee7c30fd852"
    );
}

/// On a terminal (a pseudo-terminal from util-linux's `script`), the password is asked twice,
/// never echoed (each line is typed only once its prompt shows, so the terminal's echo would
/// show it), and a mistyped confirmation prints nothing.
#[test]
fn hash_password_asks_twice_on_a_terminal_without_echo() {
    const TYPED: &str = "Zebra-horse7";
    let expected = {
        let mut child = Command::new(passerelle_bin())
            .arg("hash-password")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{TYPED}").unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(expected.len(), 32, "{expected}");
    let on_a_terminal = |first: &str, second: &str| {
        use std::io::{Read, Write};
        let mut child = Reaped(
            Command::new("script")
                .args(["-qec"])
                .arg(format!("{} hash-password", passerelle_bin().display()))
                .arg("/dev/null")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("script (util-linux) runs"),
        );
        let mut stdin = child.0.stdin.take().unwrap();
        let mut stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut seen = String::new();
        let wait_for = |needle: &str, seen: &mut String| {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while !seen.contains(needle) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                    Err(_) => break,
                }
            }
        };
        wait_for("Password: ", &mut seen);
        assert!(seen.contains("Password: "), "no first prompt: {seen:?}");
        writeln!(stdin, "{first}").unwrap();
        wait_for("Again: ", &mut seen);
        assert!(seen.contains("Again: "), "no second prompt: {seen:?}");
        writeln!(stdin, "{second}").unwrap();
        drop(stdin);
        let code = child.0.wait().unwrap().code();
        // The rest of what it printed, until the reader sees the end.
        while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(10)) {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        (code, seen)
    };
    let (code, text) = on_a_terminal(TYPED, TYPED);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&expected), "{text}");
    assert!(!text.contains(TYPED), "the password was echoed: {text:?}");
    let (code, text) = on_a_terminal(TYPED, "Zebra-horse8");
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("differ") && !text.contains(&expected),
        "{text}"
    );
    assert!(
        !text.contains("Zebra-horse"),
        "a password was echoed: {text:?}"
    );
}

/// Kills a process by pid when dropped (one this test started outside its own process group).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// The log is coloured for a person at a terminal, plain with `NO_COLOR` (and, as every
/// other test's log file shows, when stderr is not a terminal).
#[test]
fn log_colours_only_on_a_terminal_without_no_color() {
    use std::io::BufRead;
    let first_log_line = |no_color: &str| {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("script")
            .arg("-qec")
            .arg(format!(
                "echo pid $$; NO_COLOR={no_color} exec {} run",
                passerelle_bin().display()
            ))
            .arg("/dev/null")
            .env("PASSERELLE__LISTEN__PROXY", "127.0.0.1:0")
            .env("PASSERELLE__AUDIT__PATH", dir.path().join("audit.jsonl"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs");
        let mut child = Reaped(child);
        let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
        // `script` runs the shell in a session of its own, which `script`'s process group
        // does not reach: the gateway is killed by its own pid, whatever happens below.
        let gateway = KillOnDrop(
            lines
                .next()
                .and_then(|l| l.ok()?.trim().strip_prefix("pid ")?.parse::<u32>().ok())
                .expect("the shell's pid"),
        );
        let line = lines
            .map_while(Result::ok)
            .find(|l| l.contains("listening on"))
            .expect("a listening line");
        drop(gateway);
        child.0.wait().unwrap();
        line
    };
    assert!(
        first_log_line("").contains('\x1b'),
        "a terminal gets colours"
    );
    assert!(
        !first_log_line("1").contains('\x1b'),
        "NO_COLOR is honoured"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn env_override_sets_the_listener_and_sigterm_flushes_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(dir.path(), "").await;
    let r = curl(&["-x", &gw.proxy(), "http://evil.example/"]).await;
    assert_eq!(r.status, 403);
    assert!(!gw.log().contains('\x1b'), "no colour codes in a log file");
    let audit = gw.audit.clone();
    assert_eq!(gw.stop().await, 0, "graceful stop exits 0");
    let records = read_audit(&audit);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["reason"], "no_flow");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_a_valid_config_and_keeps_the_old_one_when_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let origin = HttpOrigin::start().await;
    let flow = format!(
        "[[flows]]\nid = \"site\"\nhosts = [\"site.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"site.test:80={}\"]\n",
        origin.addr
    );
    let gw = Running::start(dir.path(), &flow).await;
    assert_eq!(
        curl(&["-x", &gw.proxy(), "http://site.test/"]).await.status,
        200
    );

    std::fs::write(dir.path().join("passerelle.toml"), "[limits]\nburst = -1\n").unwrap();
    gw.signal("HUP");
    gw.wait_log("reload.refused").await;
    assert_eq!(
        curl(&["-x", &gw.proxy(), "http://site.test/"]).await.status,
        200,
        "an invalid reload keeps the old policy"
    );

    std::fs::write(dir.path().join("passerelle.toml"), "").unwrap();
    gw.signal("HUP");
    let mut status = 0;
    for _ in 0..100 {
        status = curl(&["-x", &gw.proxy(), "http://site.test/"]).await.status;
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status, 403,
        "the reloaded policy no longer has the site flow"
    );
    let audit = gw.audit.clone();
    assert_eq!(gw.stop().await, 0);
    let reloads: Vec<_> = read_audit(&audit)
        .into_iter()
        .filter(|r| r["event"] == "reload")
        .collect();
    assert_eq!(reloads.len(), 2, "{reloads:?}");
    assert_eq!(reloads[0]["decision"], "deny");
    assert_eq!(reloads[0]["reason"], "config_invalid");
    assert!(
        reloads[0]["detail"]
            .as_str()
            .unwrap()
            .contains("limits.burst"),
        "{}",
        reloads[0]
    );
    assert_eq!(reloads[0]["client"], "signal:SIGHUP");
    assert_eq!(reloads[1]["decision"], "allow");
    assert_ne!(reloads[1]["digest_before"], reloads[1]["digest_after"]);
}

/// The threads of a running process named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == name)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_threads_are_read_at_start_and_a_reload_says_it_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(dir.path(), "").await;
    assert_eq!(threads_named(gw.pid(), "passerelle-io"), 1, "the default");
    gw.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(dir.path(), "[limits]\nworker_threads = 3\n").await;
    assert_eq!(threads_named(gw.pid(), "passerelle-io"), 3);
    std::fs::write(
        dir.path().join("passerelle.toml"),
        "[limits]\nworker_threads = 2\n",
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_log("limits.worker_threads changes take effect at the next restart")
        .await;
    assert_eq!(threads_named(gw.pid(), "passerelle-io"), 3);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_tunnels_hold_no_buffers() {
    // 400 tunnels that each carried a few bytes both ways, then went quiet (the visio's):
    // what each costs the process once the bytes are through.
    let dir = tempfile::tempdir().unwrap();
    let peer = passerelle_tests::origin::echo_peer().await;
    let flow = format!(
        "[[flows]]\nid = \"raw\"\nhosts = [\"raw.test\"]\nports = [7000]\n\
         [resolve]\nconnect_to = [\"raw.test:7000={peer}\"]\n\
         [limits]\nmax_connections_per_client = 1000\nrequests_per_second = 100000\nburst = 100000\n"
    );
    let gw = Running::start(dir.path(), &flow).await;
    let addr: std::net::SocketAddr = gw.proxy().trim_start_matches("http://").parse().unwrap();
    let open = |n: usize| async move {
        let mut held = Vec::new();
        for _ in 0..n {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"CONNECT raw.test:7000 HTTP/1.1\r\nHost: raw.test\r\n\r\n")
                .await
                .unwrap();
            let mut head = [0u8; 512];
            let mut got = 0;
            while !head[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut head[got..]))
                    .await
                    .expect("the CONNECT's answer within 10 s")
                    .unwrap();
                assert!(n > 0, "closed before answering the CONNECT");
                got += n;
            }
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            s.write_all(b"ping").await.unwrap();
            let mut pong = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut pong))
                .await
                .expect("the echo within 10 s")
                .unwrap();
            assert_eq!(&pong, b"ping");
            held.push(s);
        }
        held
    };
    // A first batch warms the allocator and the runtime up; the second is measured.
    let warm = open(100).await;
    let before = gw.rss_kib();
    let measured = open(400).await;
    let per_tunnel = (gw.rss_kib().saturating_sub(before)) as f64 / 400.0;
    assert!(
        per_tunnel < 12.0,
        "{per_tunnel:.1} KiB per idle tunnel: buffers are held while nothing flows"
    );
    drop((warm, measured));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_gigabyte_download_streams_in_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let origin = HttpOrigin::start().await;
    let flow = format!(
        "[[flows]]\nid = \"big\"\nhosts = [\"big.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"big.test:80={}\"]\n",
        origin.addr
    );
    let gw = Running::start(dir.path(), &flow).await;
    let gib = (1u64 << 30).to_string();
    let r = curl(&[
        "-x",
        &gw.proxy(),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}\n",
        &format!("http://big.test/bytes/{gib}"),
    ])
    .await;
    assert_eq!(r.exit, 0, "{r:?}");
    assert!(r.body.starts_with(&gib), "downloaded {:?}", r.body);
    let peak = gw.peak_rss_kib();
    assert!(
        peak < 100 * 1024,
        "peak RSS {peak} KiB for a 1 GiB download: the body was buffered"
    );
    let audit = gw.audit.clone();
    gw.stop().await;
    let rec = read_audit(&audit).pop().unwrap();
    assert_eq!(rec["bytes_down"].as_u64().unwrap(), 1u64 << 30);
}

#[test]
fn help_says_what_passerelle_does_and_describes_every_argument() {
    let help = |args: &[&str]| {
        let out = Command::new(passerelle_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&["--help"]);
    assert!(
        top.starts_with("Lets a hospital's workstations reach the Covotem"),
        "{top}"
    );
    let commands = [
        &["run"][..],
        &["check-config"],
        &["print-default-config"],
        &["firewall"],
        &["hash-password"],
        &["doctor"],
        &["report"],
        &["audit", "verify"],
        &["audit", "keygen"],
    ];
    for command in commands {
        let text = help(&[command, &["-h"]].concat());
        // Each option and argument has its words on its line (`-h` keeps them there).
        for line in text
            .lines()
            .filter(|l| l.starts_with("  -") || l.starts_with("  <"))
        {
            let described = line
                .trim()
                .split("  ")
                .filter(|p| !p.trim().is_empty())
                .count()
                >= 2;
            assert!(
                described,
                "{command:?}: {line:?} has no description:\n{text}"
            );
        }
        // --config where a configuration is read, and only there.
        let reads = matches!(command[0], "run" | "check-config" | "firewall" | "doctor");
        assert_eq!(text.contains("--config"), reads, "{command:?}:\n{text}");
    }
}

#[test]
fn a_forwarder_that_cannot_start_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("forward.toml");
    // A spool under a file: its directory cannot be made.
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    std::fs::write(
        &file,
        format!(
            "[[audit.forward]]\nto = \"tcp:127.0.0.1:9\"\nspool_dir = \"{}\"\n",
            blocker.join("spool").display()
        ),
    )
    .unwrap();
    let out = Command::new(passerelle_bin())
        .args(["run", "--config"])
        .arg(&file)
        .env("PASSERELLE__LISTEN__PROXY", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let said = "audit.forward: tcp:127.0.0.1:9: cannot open the spool";
    assert_eq!(stderr.matches(said).count(), 1, "{stderr}");
    assert_eq!(stderr.matches("Not a directory").count(), 1, "{stderr}");
}
