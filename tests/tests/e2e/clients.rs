//! What the clients a hospital runs show when Passerelle refuses or fails an HTTPS request:
//! most drop the page of a refused `CONNECT`, but many print the status line, whose reason
//! phrase says why and gives the request id. Each real client where it is installed; the
//! README's table is this test's.

use std::process::Command;

use passerelle_tests::harness::{read_audit_all, wait_until, Running};

/// Runs a client, bounded to a minute; its stdout and stderr together.
fn run(program: &str, args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg(program)
        .args(args)
        .current_dir(dir)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn an_https_refusal_says_why_in_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = Running::start(d, "").await;
    let proxy = gw.proxy();
    let hostport = proxy.trim_start_matches("http://").to_string();
    let (host, port) = hostport.split_once(':').unwrap();
    let url = "https://nowhere.invalid/";
    std::fs::write(
        d.join("T.java"),
        format!(
            "import java.net.*; import java.net.http.*;\n\
             public class T {{ public static void main(String[] a) throws Exception {{\n\
               var c = HttpClient.newBuilder().proxy(ProxySelector.of(new InetSocketAddress(\"{host}\", {port}))).build();\n\
               try {{ c.send(HttpRequest.newBuilder(URI.create(\"{url}\")).build(), HttpResponse.BodyHandlers.discarding()); }}\n\
               catch (Exception e) {{ System.out.println(e); }} }} }}\n"
        ),
    )
    .unwrap();
    let python_tunnel = format!(
        "import http.client\nc = http.client.HTTPSConnection('{host}', {port})\nc.set_tunnel('nowhere.invalid', 443)\n\
         try:\n    c.request('GET', '/')\nexcept Exception as e:\n    print(e)\n"
    );
    let node = format!(
        "const r=require('http').request({{host:'{host}',port:{port},method:'CONNECT',path:'nowhere.invalid:443'}});\
         r.on('connect',(res)=>{{console.log(res.statusCode+' '+res.statusMessage);process.exit(0)}});r.end();"
    );
    let https_proxy = format!("https_proxy={proxy}");
    let git_proxy = format!("http.proxy={proxy}");
    // (client, program, arguments, shows the reason phrase)
    let clients: Vec<(&str, &str, Vec<&str>, bool)> = vec![
        (
            "curl",
            "curl",
            vec!["-sS", "-o", "/dev/null", "-x", &proxy, url],
            false,
        ),
        (
            "curl -v",
            "curl",
            vec!["-sSv", "-o", "/dev/null", "-x", &proxy, url],
            true,
        ),
        (
            "Python http.client",
            "python3",
            vec!["-c", &python_tunnel],
            true,
        ),
        (
            "wget",
            "wget",
            vec![
                "-e",
                "use_proxy=yes",
                "-e",
                &https_proxy,
                "-O",
                "/dev/null",
                url,
            ],
            true,
        ),
        (
            "openssl s_client",
            "openssl",
            vec![
                "s_client",
                "-proxy",
                &hostport,
                "-connect",
                "nowhere.invalid:443",
            ],
            true,
        ),
        ("Node http", "node", vec!["-e", &node], true),
        (
            "git",
            "git",
            vec![
                "-c",
                &git_proxy,
                "ls-remote",
                "https://nowhere.invalid/x.git",
            ],
            false,
        ),
        ("Java HttpClient", "java", vec!["T.java"], false),
    ];
    let mut shown = Vec::new();
    for (name, program, args, reason) in &clients {
        if !installed(program) {
            eprintln!("{name}: not installed here, not checked");
            continue;
        }
        let before = read_audit_all(&d.join("audit.jsonl")).len();
        let output = run(program, args, d);
        let audit = d.join("audit.jsonl");
        let records = wait_until(std::time::Duration::from_secs(10), || {
            let records = read_audit_all(&audit);
            async move {
                if records.len() > before {
                    Ok(records)
                } else {
                    Err(format!("{name}: no new record"))
                }
            }
        })
        .await;
        let record = records
            .iter()
            .rev()
            .find(|r| r["reason"] == "no_flow")
            .unwrap_or_else(|| panic!("{name}: no refusal recorded"));
        let id = record["id"].as_str().unwrap();
        let phrase = format!("Refused by Passerelle: no_flow, id {id}");
        if *reason {
            assert!(
                output.contains(&phrase),
                "{name} does not show {phrase:?}:\n{output}"
            );
        } else {
            assert!(output.contains("403"), "{name}: {output}");
        }
        let line = output
            .lines()
            .find(|l| l.contains("no_flow"))
            .or_else(|| output.lines().find(|l| l.contains("403")))
            .unwrap_or_default()
            .trim()
            .to_string();
        shown.push(format!("| {name} | `{line}` |"));
    }
    let chromium = passerelle_tests::browser::load_through(url, &proxy).await;
    let seen = format!("{}\n{}", chromium.dom, chromium.console.join("\n"));
    assert!(seen.contains("ERR_TUNNEL_CONNECTION_FAILED"), "{seen}");
    shown.push("| Chromium | `ERR_TUNNEL_CONNECTION_FAILED` |".to_string());
    eprintln!("{}", shown.join("\n"));
    gw.stop().await;
}

#[tokio::test]
async fn the_readme_s_desk_recipe_lets_a_request_through_and_refuses_another() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let recipe = readme
        .split("<!-- desk -->")
        .nth(1)
        .expect("the desk recipe");
    let toml = recipe
        .split("cat > desk.toml <<'EOF'\n")
        .nth(1)
        .and_then(|rest| rest.split("\nEOF\n").next())
        .expect("desk.toml in the recipe");
    // The recipe's origin (python's http.server, as the README runs it) on a free port.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "hello from the origin\n").unwrap();
    let port = passerelle_tests::harness::free_port();
    let _origin = passerelle_tests::harness::Reaped::spawn(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .unwrap();
    passerelle_tests::harness::wait_listening(([127, 0, 0, 1], port).into()).await;
    let toml = toml.replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"));
    let gw = Running::start(dir.path(), &toml).await;
    let allowed =
        passerelle_tests::harness::curl(&["-x", &gw.proxy(), "http://covotem.desk.test/"]).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(allowed.body, "hello from the origin\n");
    let refused =
        passerelle_tests::harness::curl(&["-x", &gw.proxy(), "http://elsewhere.test/"]).await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.body.contains("refused: no allowed flow matches"),
        "{}",
        refused.body
    );
    gw.stop().await;
}
