//! Hostile input, driven by a table: request smuggling shapes (tinyproxy's CVEs as a
//! checklist), odd IP spellings, malformed targets; then scenarios that need more than one
//! request: SNI checks, slowloris, rate limits, connection caps, reload under a tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use passerelle_tests::harness::{curl, load_config, raw_exchange, TestGateway};
use passerelle_tests::origin::{HttpOrigin, TlsOrigin};
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
        let response = raw_exchange(gw.addr, case.request.as_bytes()).await;
        let status_ok = response.starts_with(&format!("HTTP/1.1 {} ", case.status));
        let records = gw.stop().await;
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
            s.read(&mut byte).await.unwrap(),
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
    tls.read_to_string(&mut out).await?;
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
    tokio::time::sleep(Duration::from_millis(1500)).await;
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
    tls.read_to_string(&mut out).await.unwrap();
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
        s.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "got 17 bytes", "port {port}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_cut_after_the_header_timeout() {
    let gw = TestGateway::start("[limits]\nheader_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in
        b"GET http://covotem.esante-centre.fr/ HTTP/1.1\r\nHost: covotem.esante-centre.fr\r\n\r\n"
    {
        if s.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    assert!(
        closed || n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        "the slow client was served"
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
    let gw = TestGateway::start("[limits]\nrequests_per_second = 1\nburst = 3\n").await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            curl(&["-x", &gw.proxy(), "http://evil.example/"])
                .await
                .status,
        );
    }
    assert_eq!(&statuses[..3], &[403, 403, 403], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let records = gw.records(6).await;
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "rate_limited" && r["status"] == 429),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_caps_per_client_and_in_total() {
    let gw = TestGateway::start("[limits]\nmax_connections_per_client = 2\n").await;
    let _a = TcpStream::connect(gw.addr).await.unwrap();
    let _b = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = raw_exchange(gw.addr, b"").await;
    assert!(third.starts_with("HTTP/1.1 503"), "{third:?}");
    assert_eq!(
        gw.records(1).await.last().unwrap()["reason"],
        "client_connection_limit"
    );

    let gw = TestGateway::start("[limits]\nmax_connections = 2\n").await;
    let _a = TcpStream::connect(gw.addr).await.unwrap();
    let _b = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
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
    assert!(gw.gateway().reload(invalid).is_err());
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
    gw.gateway().reload(without).unwrap();
    let refused = raw_exchange(
        gw.addr,
        b"CONNECT raw.test:7000 HTTP/1.1\r\nHost: raw.test:7000\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");

    tunnel.write_all(b"after").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut answer = String::new();
    tunnel.read_to_string(&mut answer).await.unwrap();
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
    let n = s.read(&mut buf).await.unwrap();
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
