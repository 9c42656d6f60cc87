//! Hostile input, driven by a table: request smuggling shapes (tinyproxy's CVEs as a
//! checklist), odd IP spellings, malformed targets; then scenarios that need more than one
//! request: SNI checks, slowloris, rate limits, connection caps, reload under a tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use passerelle_tests::harness::{
    bounded, connect_from, curl, load_config, metric, pipelined_statuses, raw_exchange,
    wait_metric, Running, TestGateway,
};
use passerelle_tests::origin::{FlakyOrigin, HttpOrigin, TlsOrigin};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Case {
    name: &'static str,
    request: String,
    /// The status of the response.
    status: u16,
    /// The last audit record's `reason` (None: the request went through, reason null).
    reason: Option<&'static str>,
}

fn case(
    name: &'static str,
    request: impl Into<String>,
    status: u16,
    reason: Option<&'static str>,
) -> Case {
    Case {
        name,
        request: request.into(),
        status,
        reason,
    }
}

const O: &str = "http://origin.test";

fn table() -> Vec<Case> {
    let get = |path: &str, extra: &str| {
        format!("GET {O}{path} HTTP/1.1\r\nHost: origin.test\r\n{extra}\r\n")
    };
    let post = |extra: &str, body: &str| {
        format!("POST {O}/p HTTP/1.1\r\nHost: origin.test\r\n{extra}\r\n{body}")
    };
    let connect = |target: &str| format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    vec![
        // Framing: what hyper accepts is re-framed by the gateway; what it refuses is audited.
        case("plain GET is forwarded", get("/ok", ""), 200, None),
        // CL and TE together: read by TE (RFC 9112 §6.3), re-framed toward the origin.
        case("CL and TE together", post("Content-Length: 50\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), 200, None),
        case("two conflicting Content-Length", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), 400, Some("malformed_request")),
        case("two equal Content-Length", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), 200, None),
        case("Content-Length list", post("Content-Length: 5, 6\r\n", "hello!"), 400, Some("malformed_request")),
        case("negative Content-Length", post("Content-Length: -1\r\n", ""), 400, Some("malformed_request")),
        case("Content-Length with junk", post("Content-Length: 5x\r\n", "hello"), 400, Some("malformed_request")),
        case("TE odd case is still chunked", post("Transfer-Encoding: ChUnKeD\r\n", "5\r\nhello\r\n0\r\n\r\n"), 200, None),
        case("TE chunked then junk", post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n"), 400, Some("malformed_request")),
        case("TE trailing comma", post("Transfer-Encoding: chunked,\r\n", "5\r\nhello\r\n0\r\n\r\n"), 400, Some("malformed_request")),
        case("TE gzip, chunked is refused, not mangled", post("Transfer-Encoding: gzip, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), 501, Some("transfer_coding")),
        case("TE without chunked", post("Transfer-Encoding: gzip\r\n", "hello"), 400, Some("malformed_request")),
        case("over-long chunk size", post("Transfer-Encoding: chunked\r\n", "fffffffffffffffffff\r\nx\r\n0\r\n\r\n"), 400, Some("client_body_error")),
        case("bad chunk size", post("Transfer-Encoding: chunked\r\n", "zz\r\nx\r\n0\r\n\r\n"), 400, Some("client_body_error")),
        case("white space before the colon", get("/", "X-Bad : 1\r\n"), 400, Some("malformed_request")),
        case("obs-fold", get("/", "X-Folded: a\r\n  b\r\n"), 400, Some("malformed_request")),
        case("header without a colon", get("/", "NoColonHere\r\n"), 400, Some("malformed_request")),
        case("NUL in a header value", get("/", "X-Nul: a\0b\r\n"), 400, Some("malformed_request")),
        case("space in the method", format!("GE T {O}/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"), 400, Some("malformed_request")),
        case("HTTP/2.0 request line", format!("GET {O}/ HTTP/2.0\r\nHost: origin.test\r\n\r\n"), 400, Some("malformed_request")),
        case("Connection naming Host", get("/ok", "Connection: host, close\r\n"), 200, None),
        case("Connection naming Content-Length", post("Connection: content-length\r\nContent-Length: 5\r\n", "hello"), 200, None),
        case("Connection naming itself", get("/ok", "Connection: connection\r\n"), 200, None),
        case("Host differs from the URI", "GET http://origin.test/ok HTTP/1.1\r\nHost: evil.example\r\n\r\n", 200, None),
        case("userinfo in the URI", "GET http://admin:pw@origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n", 400, Some("bad_request")),
        case("huge header", get("/", &format!("X-Big: {}\r\n", "a".repeat(70_000))), 431, Some("header_too_large")),
        case("URI too long", get(&format!("/{}", "u".repeat(9000)), ""), 414, Some("uri_too_long")),
        case("absolute-form https://", "GET https://covotem.esante-centre.fr/ HTTP/1.1\r\nHost: covotem.esante-centre.fr\r\n\r\n", 400, Some("https_forward")),
        case("origin-form on the proxy port", "GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n", 400, Some("origin_form")),
        case("TRACE", format!("TRACE {O}/ HTTP/1.1\r\nHost: origin.test\r\n\r\n"), 405, Some("method_not_allowed")),
        case("our own Via: a loop", get("/", "Via: 1.1 other, 1.1 passerelle\r\n"), 508, Some("loop")),
        // Targets.
        case("CONNECT without a port", connect("covotem.esante-centre.fr"), 400, Some("bad_request")),
        case("CONNECT to port 0", connect("covotem.esante-centre.fr:0"), 400, Some("bad_request")),
        case("CONNECT with userinfo", connect("user@covotem.esante-centre.fr:443"), 400, Some("bad_request")),
        case("CONNECT outside the flow's ports", connect("covotem.esante-centre.fr:22"), 403, Some("port_not_open")),
        case("CONNECT to an unknown host", connect("evil.example:443"), 403, Some("no_flow")),
        case("CONNECT to a preprod host", connect("covotem-preprod.esante-centre.fr:443"), 403, Some("flow_disabled")),
        case("decimal IPv4 for loopback", connect("2130706433:443"), 403, Some("no_flow")),
        case("hex dotted IPv4", connect("0x7f.0.0.1:443"), 403, Some("no_flow")),
        case("short IPv4", connect("127.1:443"), 403, Some("no_flow")),
        case("octal IPv4", connect("0177.0.0.1:443"), 403, Some("no_flow")),
        case("IPv4-mapped IPv6", connect("[::ffff:127.0.0.1]:443"), 403, Some("no_flow")),
        case("IPv6 loopback", connect("[::1]:443"), 403, Some("no_flow")),
        case("NAT64 of loopback", connect("[64:ff9b::7f00:1]:443"), 403, Some("no_flow")),
        case("invalid IPv4", connect("256.1.1.1:443"), 400, Some("bad_request")),
        // Allowed tunnels that the client leaves at once: 200, then `client_gone`.
        case("documented IP in hex reaches its flow", connect("0xa48af39e:443"), 200, Some("client_gone")),
        case("documented IP, IPv4-mapped", connect("[::ffff:164.138.243.158]:443"), 200, Some("client_gone")),
        case("name with a trailing dot and capitals", connect("COVOTEM.esante-centre.fr.:443"), 200, Some("client_gone")),
        case("percent-encoded host", connect("covotem%2eesante-centre.fr:443"), 400, Some("malformed_request")),
        // Ports are what is written, or a 400: never the default in disguise.
        case("a port with a letter", "GET http://origin.test:8o/ HTTP/1.1\r\nHost: origin.test\r\n\r\n", 400, Some("bad_request")),
        case("a port over 65535", "GET http://origin.test:65536/ HTTP/1.1\r\nHost: origin.test\r\n\r\n", 400, Some("bad_request")),
        case("a signed port", "GET http://origin.test:+80/ HTTP/1.1\r\nHost: origin.test\r\n\r\n", 400, Some("bad_request")),
        case("CONNECT to a port over 65535", connect("covotem.esante-centre.fr:65979"), 400, Some("bad_request")),
    ]
}

async fn hostile_gateway(origin: SocketAddr, tls: SocketAddr) -> TestGateway {
    let config = format!(
        "[[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [80]\n\
         [resolve]\nconnect_to = [\"origin.test:80={origin}\", \"covotem.esante-centre.fr:443={tls}\", \"164.138.243.158:443={tls}\"]\n\
         [limits]\nmax_uri_bytes = 8192\nsni_timeout = \"1s\"\nrequests_per_second = 1000\nburst = 1000\n"
    );
    TestGateway::start(&config).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hostile_table() {
    let origin = HttpOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsOrigin::start(&["covotem.esante-centre.fr"], dir.path()).await;
    let table = table();
    assert!(table.len() >= 40, "the table has {} cases", table.len());
    let mut failures = Vec::new();
    for case in &table {
        let gw = hostile_gateway(origin.addr, tls.addr).await;
        let before = (origin.connections(), tls.connections());
        let response = raw_exchange(gw.addr, case.request.as_bytes()).await;
        let status_ok = response.starts_with(&format!("HTTP/1.1 {} ", case.status));
        let records = gw.stop().await;
        // What went through reached the test's own peer (the origin, or the TLS origin that
        // connect_to maps the Covotem server's name and address to), never another address;
        // what policy refused reached nobody.
        let after = (origin.connections(), tls.connections());
        let reached = match case.status {
            200 if case.request.starts_with("CONNECT") => {
                after.1 == before.1 + 1 && after.0 == before.0
            }
            200 => after.0 > before.0 && after.1 == before.1,
            403 => after == before,
            _ => true,
        };
        if !reached {
            failures.push(format!(
                "{}: peers' connections went from {before:?} to {after:?} (origin, TLS origin)",
                case.name
            ));
        }
        let reason = records
            .last()
            .map(|r| r["reason"].clone())
            .unwrap_or(Value::String("<no record>".into()));
        let reason_ok = match case.reason {
            Some(expected) => reason == expected,
            None => reason.is_null() && !records.is_empty(),
        };
        if !status_ok || !reason_ok {
            let head = response.lines().next().unwrap_or("<closed>").to_string();
            failures.push(format!(
                "{}: expected {} / {:?}, got {head:?} / {reason}",
                case.name, case.status, case.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

/// Sends CONNECT and returns the stream once the gateway answered 200.
async fn open_tunnel(gw: &TestGateway, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            bounded(s.read(&mut byte)).await.unwrap(),
            1,
            "closed before the head ended"
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

fn tls_client(sni: bool) -> tokio_rustls::TlsConnector {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    config.enable_sni = sni;
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_through(
    gw: &TestGateway,
    target: &str,
    name: &str,
    sni: bool,
) -> Result<String, std::io::Error> {
    let stream = open_tunnel(gw, target).await;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(10),
        tls_client(sni).connect(name, stream),
    )
    .await??;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    bounded(tls.read_to_string(&mut out)).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_must_name_a_host_of_the_flow() {
    let origin = HttpOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsOrigin::start(&["covotem.esante-centre.fr", "evil.example"], dir.path()).await;
    let gw = hostile_gateway(origin.addr, tls.addr).await;

    let ok = tls_through(
        &gw,
        "covotem.esante-centre.fr:443",
        "covotem.esante-centre.fr",
        true,
    )
    .await
    .unwrap();
    assert!(
        ok.contains("hello over TLS from covotem.esante-centre.fr"),
        "{ok}"
    );
    let rec = gw.nth_record_for("covotem.esante-centre.fr", 1).await;
    assert_eq!(rec["sni"], "covotem.esante-centre.fr");

    assert!(
        tls_through(&gw, "covotem.esante-centre.fr:443", "evil.example", true)
            .await
            .is_err(),
        "SNI mismatch passed"
    );
    let rec = gw.nth_record_for("covotem.esante-centre.fr", 2).await;
    assert_eq!(
        (rec["reason"].as_str(), rec["decision"].as_str()),
        (Some("sni_mismatch"), Some("deny")),
        "{rec}"
    );
    assert_eq!(rec["sni"], "evil.example");

    assert!(
        tls_through(
            &gw,
            "covotem.esante-centre.fr:443",
            "covotem.esante-centre.fr",
            false
        )
        .await
        .is_err(),
        "no SNI passed"
    );
    assert_eq!(
        gw.nth_record_for("covotem.esante-centre.fr", 3).await["reason"],
        "no_sni"
    );

    // An IP target (ICE candidates) may come without SNI.
    let ok = tls_through(
        &gw,
        "164.138.243.158:443",
        "covotem.esante-centre.fr",
        false,
    )
    .await
    .unwrap();
    assert!(ok.contains("hello over TLS from none"), "{ok}");

    let mut s = open_tunnel(&gw, "covotem.esante-centre.fr:443").await;
    s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "non-TLS bytes went through");
    assert_eq!(
        gw.nth_record_for("covotem.esante-centre.fr", 4).await["reason"],
        "not_tls"
    );

    let _quiet = open_tunnel(&gw, "covotem.esante-centre.fr:443").await;
    assert_eq!(
        gw.nth_record_for("covotem.esante-centre.fr", 5).await["reason"],
        "sni_timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_hello_split_into_tiny_segments_still_passes() {
    let origin = HttpOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsOrigin::start(&["covotem.esante-centre.fr"], dir.path()).await;
    let gw = hostile_gateway(origin.addr, tls.addr).await;
    let stream = open_tunnel(&gw, "covotem.esante-centre.fr:443").await;
    stream.set_nodelay(true).unwrap();
    let trickle = Trickle {
        inner: stream,
        written: 0,
    };
    let name = rustls::pki_types::ServerName::try_from("covotem.esante-centre.fr").unwrap();
    let mut tls = tls_client(true)
        .connect(name, trickle)
        .await
        .expect("handshake through a trickled hello");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    bounded(tls.read_to_string(&mut out)).await.unwrap();
    assert!(out.contains("hello over TLS"), "{out}");
    drop(tls);
    assert_eq!(
        gw.record_for("covotem.esante-centre.fr").await["sni"],
        "covotem.esante-centre.fr"
    );
}

/// Writes its first 600 bytes (the ClientHello) 7 bytes at a time.
struct Trickle {
    inner: TcpStream,
    written: usize,
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = if self.written < 600 {
            buf.len().min(7)
        } else {
            buf.len()
        };
        let result = std::pin::Pin::new(&mut self.inner).poll_write(cx, &buf[..n]);
        if let std::task::Poll::Ready(Ok(n)) = result {
            self.written += n;
            if self.written < 600 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        result
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_visio_ports_are_not_tls_and_are_not_checked() {
    let peer = passerelle_tests::origin::half_close_peer().await;
    let config = format!("[resolve]\nconnect_to = [\"visio-equinix2.covalia.fr:8084={peer}\", \"visio-equinix2.covalia.fr:443={peer}\"]\n");
    let gw = TestGateway::start(&config).await;
    for port in [8084, 443] {
        let mut s = open_tunnel(&gw, &format!("visio-equinix2.covalia.fr:{port}")).await;
        s.write_all(b"\x00\x01 media, not TLS").await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = String::new();
        bounded(s.read_to_string(&mut answer)).await.unwrap();
        assert_eq!(answer, "got 17 bytes", "port {port}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_cut_after_the_header_timeout() {
    let gw = TestGateway::start("[limits]\nheader_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let started = std::time::Instant::now();
    // A byte every 200 ms: the head would take 16 s; the gateway gives it one.
    for byte in
        b"GET http://covotem.esante-centre.fr/ HTTP/1.1\r\nHost: covotem.esante-centre.fr\r\n\r\n"
    {
        if s.write_all(&[*byte]).await.is_err() || started.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The gateway closed the connection (a reset counts), at most after a 408: never a
    // connection still open, never an answer to the request.
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "the slow connection was still open 10 s after its header timeout"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "the slow client was served: {answer}"
    );
    let records = gw.records(1).await;
    assert_eq!(
        records.last().map(|r| r["reason"].clone()),
        Some(Value::from("header_timeout")),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_rate_is_limited_per_client() {
    // A burst of 20, one more per second: 40 requests sent at once get 20 answers, then
    // refusals (the bucket refills by one per second: only a run slower than ten seconds could
    // let more than ten of the rest through).
    let gw = TestGateway::start("[limits]\nrequests_per_second = 1\nburst = 20\n").await;
    const REQUEST: &[u8] = b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n";
    let statuses = pipelined_statuses(gw.addr, REQUEST, 40).await;
    assert!(statuses[..20].iter().all(|s| *s == 403), "{statuses:?}");
    let limited = statuses[20..].iter().filter(|s| **s == 429).count();
    assert!(limited >= 10, "{statuses:?}");
    let records = gw.records(40).await;
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "rate_limited" && r["status"] == 429),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_caps_per_client_and_in_total() {
    let admin = [("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")];
    let gw =
        TestGateway::start_with_env("[limits]\nmax_connections_per_client = 2\n", &admin).await;
    let metrics = format!("http://{}", gw.gateway().admin_addr().unwrap());
    let _a = TcpStream::connect(gw.addr).await.unwrap();
    let _b = TcpStream::connect(gw.addr).await.unwrap();
    wait_metric(&metrics, "passerelle_client_connections", 2.0).await;
    let third = raw_exchange(gw.addr, b"").await;
    assert!(third.starts_with("HTTP/1.1 503"), "{third:?}");
    assert_eq!(
        gw.records(1).await.last().unwrap()["reason"],
        "client_connection_limit"
    );

    let gw = TestGateway::start_with_env("[limits]\nmax_connections = 2\n", &admin).await;
    let metrics = format!("http://{}", gw.gateway().admin_addr().unwrap());
    let _a = TcpStream::connect(gw.addr).await.unwrap();
    let _b = TcpStream::connect(gw.addr).await.unwrap();
    wait_metric(&metrics, "passerelle_client_connections", 2.0).await;
    let third = raw_exchange(
        gw.addr,
        b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(
        third, "",
        "over the total, the connection is closed before reading"
    );
    assert_eq!(
        gw.records(1).await.last().unwrap()["reason"],
        "too_many_connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipelined_second_request_gets_its_own_decision() {
    let origin = HttpOrigin::start().await;
    let gw = TestGateway::start(&format!("[[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"origin.test:80={}\"]\n", origin.addr)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET http://origin.test/1 HTTP/1.1\r\nHost: origin.test\r\n\r\nGET http://evil.example/2 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut all = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.contains("HTTP/1.1 403"), "{all}");
    assert_eq!(gw.record_for("evil.example").await["reason"], "no_flow");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_survives_a_reload_that_removes_its_flow() {
    let peer = passerelle_tests::origin::half_close_peer().await;
    let with_flow = format!("[[flows]]\nid = \"raw\"\nhosts = [\"raw.test\"]\nports = [7000]\n[resolve]\nconnect_to = [\"raw.test:7000={peer}\"]\n");
    let gw = TestGateway::start(&with_flow).await;
    let mut tunnel = open_tunnel(&gw, "raw.test:7000").await;
    tunnel.write_all(b"before ").await.unwrap();

    let invalid = load_config("[limits]\nburst = 0\n", &gw.dir, &[]);
    assert!(gw.gateway().reload(invalid, "test").await.is_err());
    let still = raw_exchange(
        gw.addr,
        b"CONNECT raw.test:7000 HTTP/1.1\r\nHost: raw.test:7000\r\n\r\n",
    )
    .await;
    assert!(
        still.starts_with("HTTP/1.1 200"),
        "an invalid reload changed the policy: {still}"
    );

    let without = load_config("", &gw.dir, &[]);
    gw.gateway().reload(without, "test").await.unwrap();
    let refused = raw_exchange(
        gw.addr,
        b"CONNECT raw.test:7000 HTTP/1.1\r\nHost: raw.test:7000\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    tunnel.write_all(b"after").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut answer = String::new();
    bounded(tunnel.read_to_string(&mut answer)).await.unwrap();
    assert_eq!(
        answer, "got 12 bytes",
        "the open tunnel kept passing bytes across the reload"
    );
    let records = gw.stop().await;
    let reloads: Vec<&Value> = records.iter().filter(|r| r["event"] == "reload").collect();
    assert_eq!(reloads.len(), 2);
    assert_eq!(reloads[0]["decision"], "deny");
    assert_eq!(reloads[1]["decision"], "allow");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let origin = HttpOrigin::start().await;
    let gw = TestGateway::start(&format!(
        "[[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"origin.test:80={}\"]\n[limits]\nheader_timeout = \"1s\"\n",
        origin.addr
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = bounded(s.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "an idle keep-alive connection stayed open for 10 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
}

// ---- Findings of the hostile review (issue 9), each failing before its fix. ----

/// A gateway with the admin listener; returns it and the admin base URL.
async fn with_admin(config: &str) -> (TestGateway, String) {
    let gw =
        TestGateway::start_with_env(config, &[("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")]).await;
    let admin = format!("http://{}", gw.gateway().admin_addr().unwrap());
    (gw, admin)
}

#[tokio::test(flavor = "multi_thread")]
async fn tunnels_hold_their_client_connection_slot() {
    let peer = passerelle_tests::origin::half_close_peer().await;
    let (gw, admin) = with_admin(&format!(
        "[[flows]]\nid = \"raw\"\nhosts = [\"raw.test\"]\nports = [7000]\n\
         [resolve]\nconnect_to = [\"raw.test:7000={peer}\"]\n\
         [limits]\nmax_connections_per_client = 3\nmax_connections = 5\n"
    ))
    .await;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(open_tunnel(&gw, "raw.test:7000").await);
    }
    wait_metric(&admin, "passerelle_tunnels_active", 3.0).await;
    assert_eq!(
        metric(&admin, "passerelle_client_connections").await,
        Some(3.0),
        "open tunnels are not counted as client connections"
    );
    let fourth = raw_exchange(
        gw.addr,
        b"CONNECT raw.test:7000 HTTP/1.1\r\nHost: raw.test:7000\r\n\r\n",
    )
    .await;
    assert!(
        fourth.starts_with("HTTP/1.1 503"),
        "a fourth tunnel: {fourth:?}"
    );
    // A tunnel that closes gives its slot back.
    let mut first = tunnels.remove(0);
    first.shutdown().await.unwrap();
    let mut rest = String::new();
    bounded(first.read_to_string(&mut rest)).await.unwrap();
    wait_metric(&admin, "passerelle_client_connections", 2.0).await;
    let again = open_tunnel(&gw, "raw.test:7000").await;
    drop(again);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssrf_refusal_is_recorded_as_a_refusal() {
    let origin = HttpOrigin::start().await;
    let port = origin.addr.port();
    let flow = format!(
        "[[flows]]\nid = \"lan\"\nhosts = [\"localhost\", \"six-to-four.test\", \"siit.test\"]\nports = [{port}]\n"
    );
    let (gw, admin) = with_admin(&flow).await;
    let r = curl(&["-x", &gw.proxy(), &format!("http://localhost:{port}/")]).await;
    assert_eq!(r.status, 403, "{r:?}");
    let rec = gw.record_for("localhost").await;
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["reason"], "internal_address", "{rec}");
    assert_eq!(rec["flow"], "lan", "{rec}");
    let m = curl(&[&format!("{admin}/metrics")]).await.body;
    assert!(
        m.contains("passerelle_requests_total{kind=\"forward\",decision=\"deny\",route=\"direct\",flow=\"lan\"} 1"),
        "{m}"
    );
    // Names resolving to IPv6 forms that embed a loopback address (a resolver of the test's
    // own, in a private mount namespace).
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::with_env(dir.path(), &flow, &[])
        .closed_dns(&[
            ("six-to-four.test", "2002:7f00:1::1".parse().unwrap()),
            ("siit.test", "::ffff:0:7f00:1".parse().unwrap()),
        ])
        .start()
        .await;
    for host in ["six-to-four.test", "siit.test"] {
        let r = curl(&["-x", &gw.proxy(), &format!("http://{host}:{port}/")]).await;
        assert_eq!(r.status, 403, "{host}: {r:?}");
    }
    let records = passerelle_tests::harness::wait_records(&gw.audit, 2).await;
    assert!(
        records
            .iter()
            .all(|r| r["decision"] == "deny" && r["reason"] == "internal_address"),
        "{records:?}"
    );
    gw.stop().await;
    assert_eq!(origin.connections(), 0, "the origin was reached");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_may_have_reached_the_origin_is_not_sent_twice() {
    let origin = FlakyOrigin::start().await;
    let gw = TestGateway::start(&format!(
        "[[flows]]\nid = \"site\"\nhosts = [\"flaky.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"flaky.test:80={}\"]\n",
        origin.addr
    ))
    .await;
    // Each case: a first GET leaves a pooled connection; the next request dies on it after
    // the origin read it.
    for (method, body, resent) in [
        ("DELETE", None, false),
        ("POST", None, false),
        ("PATCH", Some("x"), false),
        ("GET", None, true),
    ] {
        let first = format!("/first-{method}");
        let r = curl(&["-x", &gw.proxy(), &format!("http://flaky.test{first}")]).await;
        assert_eq!(r.status, 200, "{r:?}");
        let path = format!("/{method}");
        let mut args = vec!["-x".to_string(), gw.proxy(), "-X".into(), method.into()];
        if let Some(body) = body {
            args.extend(["-d".into(), body.into()]);
        }
        args.push(format!("http://flaky.test{path}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(&args).await;
        let times = origin
            .seen()
            .iter()
            .filter(|s| **s == format!("{method} {path}"))
            .count();
        if resent {
            assert_eq!(times, 2, "a safe request is retried on a new connection");
            assert_eq!(r.status, 200, "{r:?}");
        } else {
            assert_eq!(times, 1, "{method} reached the origin {times} times");
            assert_eq!(r.status, 502, "{method}: {r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_checks_clients_at_accept_caps_connections_and_audits() {
    let (gw, admin) = with_admin("[admin]\nallow = [\"127.0.0.2/32\"]\n").await;
    let admin_addr = gw.gateway().admin_addr().unwrap();
    // From 127.0.0.1: closed at accept, audited.
    let refused = curl(&[&format!("{admin}/metrics")]).await;
    assert_eq!(refused.status, 0, "{refused:?}");
    let rec = gw.records(1).await;
    let rec = rec
        .iter()
        .find(|r| r["event"] == "admin")
        .expect("an admin record");
    assert_eq!(rec["decision"], "deny");
    assert_eq!(rec["reason"], "client_not_allowed");
    assert!(
        rec["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{rec}"
    );

    // From 127.0.0.2: allowed, but capped: idle sockets beyond the cap are closed, and the
    // proxy listener still accepts.
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect_from([127, 0, 0, 2], admin_addr).await.unwrap());
    }
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 4,
        "only {closed} of 20 idle admin connections were refused"
    );
    let r = curl(&["-x", &gw.proxy(), "http://evil.example/"]).await;
    assert_eq!(r.status, 403, "the proxy stopped accepting: {r:?}");
}

/// Sends a raw request from 127.0.0.2 and returns the answer.
async fn exchange_from(addr: SocketAddr, request: &str) -> String {
    let mut s = connect_from([127, 0, 0, 2], addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_needs_its_header_names_its_client_and_keeps_the_rate_buckets() {
    let config =
        "[admin]\nallow = [\"127.0.0.2/32\"]\n[limits]\nrequests_per_second = 1\nburst = 30\n";
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::with_env(
        dir.path(),
        config,
        &[("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0")],
    )
    .start()
    .await;
    let admin_addr: SocketAddr = gw
        .admin()
        .await
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    // A page on a workstation could post text/plain cross-site: refused without the header.
    let forged = exchange_from(
        admin_addr,
        "POST /reload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
    )
    .await;
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    // Use up the burst, then reload with the header: the limiter is not reset. The bucket
    // refills one per second: a fresh burst of 30 is told from the refill whatever the load.
    const REQUEST: &[u8] = b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n";
    let proxy_addr: SocketAddr = ([127, 0, 0, 1], gw.port).into();
    let first = pipelined_statuses(proxy_addr, REQUEST, 31).await;
    assert!(first[..30].iter().all(|s| *s == 403), "{first:?}");
    assert_eq!(first[30], 429, "{first:?}");
    let ok = exchange_from(
        admin_addr,
        "POST /reload HTTP/1.1\r\nHost: x\r\nX-Passerelle-Reload: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // The forged reload, thirty refusals, the 429, the reload.
    let records = passerelle_tests::harness::wait_records(&gw.audit, 33).await;
    let reload = records
        .iter()
        .find(|r| r["event"] == "reload")
        .expect("a reload record");
    assert!(
        reload["client"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.2:"),
        "{reload}"
    );
    let refusal = records
        .iter()
        .find(|r| r["reason"] == "reload_unconfirmed")
        .expect("the forged reload was audited");
    assert_eq!(refusal["decision"], "deny");
    let after = pipelined_statuses(proxy_addr, REQUEST, 30).await;
    let passed = after.iter().filter(|s| **s == 403).count();
    assert!(
        passed < 15,
        "a reload handed out a fresh burst: {passed} of 30 passed: {after:?}"
    );
    gw.signal("HUP");
    // ... then those thirty and the reload by signal.
    let records = passerelle_tests::harness::wait_records(&gw.audit, 64).await;
    let by_signal = records.iter().filter(|r| r["event"] == "reload").nth(1);
    assert_eq!(
        by_signal.map(|r| r["client"].clone()),
        Some("signal:SIGHUP".into())
    );
    gw.stop().await;
}

/// A flood of connections refused at accept (a host outside `clients.allow`) is counted one by
/// one, and written at most 100 at once, then 20 a second per reason: the next record written
/// says how many it stands for. The disk does not fill; nothing goes unsaid.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_refusals_is_counted_whole_and_written_folded() {
    let (gw, admin) = with_admin("[clients]\nallow = [\"127.0.0.2/32\"]\n").await;
    const FLOOD: usize = 600;
    for _ in 0..FLOOD {
        drop(TcpStream::connect(gw.addr).await.unwrap());
    }
    wait_metric(
        &admin,
        "passerelle_client_connections_refused_total{limit=\"not_allowed\"}",
        FLOOD as f64,
    )
    .await;
    let folded = metric(&admin, "passerelle_audit_refusals_folded_total")
        .await
        .unwrap_or(0.0);
    let written = gw.records(100).await.len();
    assert!(folded >= 1.0, "nothing was folded: {written} written");
    // One more refusal at a time until one is written: it names what it stands for.
    let record = passerelle_tests::harness::wait_until(Duration::from_secs(20), || async {
        drop(TcpStream::connect(gw.addr).await.unwrap());
        passerelle_tests::harness::read_audit(&gw.audit_path)
            .into_iter()
            .find(|r| {
                r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("more like it"))
            })
            .ok_or_else(|| "no record says how many it stands for yet".to_string())
    })
    .await;
    let records = passerelle_tests::harness::read_audit(&gw.audit_path);
    assert!(
        records.len() < FLOOD / 2,
        "{} records for {FLOOD} refusals",
        records.len()
    );
    let detail = record["detail"].as_str().unwrap();
    let stands_for: usize = detail
        .split('(')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{detail}"));
    assert!(stands_for >= 1, "{detail}");
    assert_eq!(record["reason"], "client_not_allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_outside_the_allow_list_get_no_connection_budget() {
    let origin = HttpOrigin::start().await;
    let (gw, admin) = with_admin(&format!(
        "[clients]\nallow = [\"127.0.0.2/32\"]\n[admin]\nallow = [\"127.0.0.1/32\"]\n[limits]\nmax_connections = 4\nmax_connections_per_client = 4\n\
         [[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"origin.test:80={}\"]\n",
        origin.addr
    ))
    .await;
    // Ten idle sockets from a host that is not allowed: each closed at accept.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    wait_metric(
        &admin,
        "passerelle_client_connections_refused_total{limit=\"not_allowed\"}",
        10.0,
    )
    .await;
    for s in &mut idle {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "not closed: {n:?}");
    }
    // The allowed client still has the whole budget.
    let answer = exchange_from(
        gw.addr,
        "GET http://origin.test/ok HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let records = gw.records(2).await;
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "client_not_allowed" && r["decision"] == "deny"),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn squid_lines_cannot_be_forged_with_unicode_separators() {
    let origin = HttpOrigin::start().await;
    let gw = TestGateway::start_with_env(
        &format!(
            "[[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"origin.test:80={}\"]\n",
            origin.addr
        ),
        &[("PASSERELLE__AUDIT__FORMAT", "squid")],
    )
    .await;
    // No ASCII space: NBSP, NEL and U+2028 do the splitting for a Unicode-aware parser.
    let forged = "GET http://origin.test/a\u{2028}1.0\u{a0}6.6.6.6\u{a0}TCP_MISS/200\u{85}b HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(gw.addr, forged.as_bytes()).await;
    let dir = gw.shutdown().await;
    let log = std::fs::read(dir.path().join("audit.jsonl")).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the forged URL was not forwarded: {answer}"
    );
    assert!(log.is_ascii(), "non-ASCII reached the Squid line: {text:?}");
    assert!(
        text.contains("/a%E2%80%A81.0%C2%A06.6.6.6%C2%A0TCP_MISS/200%C2%85b"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(!text.contains("6.6.6.6 "), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_to_a_plain_http_port_is_served_as_http_inside() {
    let origin = HttpOrigin::start().await;
    let gw = TestGateway::start(&format!(
        "[[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"origin.test:80={}\"]\n",
        origin.addr
    ))
    .await;
    let mut tunnel = open_tunnel(&gw, "origin.test:80").await;
    // Inside: another Host (domain fronting) is rewritten to the CONNECT's target.
    tunnel
        .write_all(b"GET /inside?q=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 16384];
    let n = tokio::time::timeout(Duration::from_secs(10), tunnel.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let seen: Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["headers"]["host"][0], "origin.test", "{seen}");
    // Absolute-form toward another host inside the tunnel: refused.
    tunnel
        .write_all(b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), tunnel.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 400"));
    drop(tunnel);
    let records = gw.stop().await;
    let inside = records
        .iter()
        .find(|r| r["path"] == "/inside")
        .expect("a record for the request inside the tunnel");
    assert_eq!(inside["method"], "GET");
    assert_eq!(inside["decision"], "allow");
    assert_eq!(inside["status"], 200);
    assert!(records
        .iter()
        .any(|r| r["method"] == "CONNECT" && r["port"] == 80));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parent_that_is_ourselves_is_refused_and_connect_carries_via() {
    let port = passerelle_tests::harness::free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("loop.toml");
    std::fs::write(
        &file,
        format!("[[upstream]]\nurl = \"http://localhost:{port}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(passerelle_tests::harness::passerelle_bin())
        .args(["check-config", "--config"])
        .arg(&file)
        .env("PASSERELLE__LISTEN__PROXY", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("one of Passerelle's own listeners"),
        "{stderr}"
    );

    // Two gateways that are each other's parent: the CONNECT carries Via, the second one
    // sees its own token and stops it (no recursion until the rate limiter bites).
    let second_port = passerelle_tests::harness::free_port();
    let first = TestGateway::start(&format!(
        "[routing]\ndefault = \"upstream\"\nbypass_covotem_server = false\n[[upstream]]\nurl = \"http://127.0.0.1:{second_port}\"\n"
    ))
    .await;
    let second = TestGateway::start_with_env(
        &format!(
            "[routing]\ndefault = \"upstream\"\nbypass_covotem_server = false\n[[upstream]]\nurl = \"http://{}\"\n",
            first.addr
        ),
        &[("PASSERELLE__LISTEN__PROXY", &format!("127.0.0.1:{second_port}"))],
    )
    .await;
    let r = raw_exchange(
        first.addr,
        b"CONNECT covotem.esante-centre.fr:443 HTTP/1.1\r\nHost: covotem.esante-centre.fr:443\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    let at_second = second.stop().await;
    assert_eq!(at_second.len(), 1, "{at_second:?}");
    assert_eq!(at_second[0]["reason"], "loop");
    let at_first = first.stop().await;
    assert_eq!(at_first.len(), 1, "{at_first:?}");
    assert_eq!(at_first[0]["reason"], "parent_refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keep_alive_connection_going_idle_is_not_a_refusal() {
    let origin = HttpOrigin::start().await;
    let (gw, admin) = with_admin(&format!(
        "[[flows]]\nid = \"site\"\nhosts = [\"origin.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"origin.test:80={}\"]\n[limits]\nheader_timeout = \"1s\"\n",
        origin.addr
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = bounded(s.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    wait_metric(&admin, "passerelle_idle_connections_closed_total", 1.0).await;
    let records = gw.records(1).await;
    assert_eq!(
        records.len(),
        1,
        "an idle keep-alive close was audited: {records:?}"
    );
    assert_eq!(records[0]["decision"], "allow");
    // A connection that never sent a head is still a refusal.
    let _silent = TcpStream::connect(gw.addr).await.unwrap();
    let records = gw.records(2).await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[1]["decision"], "deny");
    assert_eq!(records[1]["reason"], "header_timeout");
}
