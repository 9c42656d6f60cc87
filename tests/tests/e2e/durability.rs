//! The audit under pressure: a sink that stops reading makes requests wait and loses
//! nothing (or, with on_full = "drop", leaves a visible gap); SIGTERM with requests in flight
//! loses no record.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use passerelle_tests::harness::{
    curl, raw_exchange, read_audit, wait_metric, wait_until, Running, TestGateway,
};
use passerelle_tests::origin::HttpOrigin;
use serde_json::Value;

const REQUESTS: usize = 600;

/// A gateway auditing into a FIFO that nobody reads yet; returns the gateway, the
/// (non-blocking) read end, and the directory that holds the FIFO.
async fn gateway_on_a_stalled_fifo(
    on_full: &str,
) -> (TestGateway, std::fs::File, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    const O_NONBLOCK: i32 = 0o4000;
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let fifo_text = fifo.display().to_string();
    let gw = TestGateway::start_with_env(
        &format!("[audit]\nqueue = 8\non_full = \"{on_full}\"\n[limits]\nrequests_per_second = 100000\nburst = 100000\n"),
        &[
            ("PASSERELLE__AUDIT__PATH", fifo_text.as_str()),
            ("PASSERELLE__LISTEN__ADMIN", "127.0.0.1:0"),
        ],
    )
    .await;
    (gw, reader, dir)
}

/// Fires REQUESTS refused requests, a few at a time; returns how many have been answered.
fn fire(gw: &TestGateway) -> Arc<AtomicUsize> {
    let answered = Arc::new(AtomicUsize::new(0));
    let addr = gw.addr;
    for worker in 0..8 {
        let answered = answered.clone();
        tokio::spawn(async move {
            for _ in (worker..REQUESTS).step_by(8) {
                let r = raw_exchange(addr, b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await;
                if r.starts_with("HTTP/1.1 403") {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    answered
}

/// Reads the FIFO until `lines` lines or the deadline.
fn drain(reader: std::fs::File, lines: usize, deadline: Duration) -> Vec<Value> {
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    while out.len() < lines && started.elapsed() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => out.push(serde_json::from_str(line.trim()).unwrap()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_sink_makes_requests_wait_and_loses_nothing() {
    let (gw, reader, _dir) = gateway_on_a_stalled_fifo("block").await;
    let answered = fire(&gw);
    // The writer is stuck on the FIFO once its queue is full: from then on requests wait.
    let admin = format!("http://{}", gw.gateway().admin_addr().unwrap());
    wait_metric(&admin, "passerelle_audit_queue_records", 8.0).await;
    let before = answered.load(Ordering::SeqCst);
    assert!(
        before < REQUESTS,
        "all {REQUESTS} requests were answered while the sink was stalled"
    );
    let records =
        tokio::task::spawn_blocking(move || drain(reader, REQUESTS, Duration::from_secs(60)))
            .await
            .unwrap();
    assert_eq!(
        records.len(),
        REQUESTS,
        "records lost ({before} answered before draining)"
    );
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=REQUESTS as u64).collect::<Vec<_>>(),
        "seq has gaps or disorder"
    );
    assert_eq!(answered.load(Ordering::SeqCst), REQUESTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_full_drop_answers_everyone_and_leaves_a_visible_gap() {
    let (gw, reader, _dir) = gateway_on_a_stalled_fifo("drop").await;
    let answered = fire(&gw);
    wait_until(Duration::from_secs(30), || async {
        match answered.load(Ordering::SeqCst) {
            REQUESTS => Ok(()),
            n => Err(format!(
                "{n} of {REQUESTS} answered: requests waited despite on_full = drop"
            )),
        }
    })
    .await;
    // Stopping writes what was kept (the stop ends only once the writer has written it all,
    // which the reader takes).
    let stopping = tokio::spawn(async move { gw.shutdown().await });
    let records =
        tokio::task::spawn_blocking(move || drain(reader, REQUESTS, Duration::from_secs(10)))
            .await
            .unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(30), stopping).await;
    assert!(
        matches!(stopped, Ok(Ok(_))),
        "the gateway did not stop cleanly: {stopped:?}"
    );
    assert!(records.len() < REQUESTS, "nothing was dropped");
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_requests_in_flight_loses_no_record() {
    let origin = HttpOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[flows]]\nid = \"site\"\nhosts = [\"site.test\"]\nports = [80]\n[resolve]\nconnect_to = [\"site.test:80={}\"]\n",
        origin.addr
    );
    let gw = Running::start(dir.path(), &config).await;
    let mut downloads = Vec::new();
    for i in 0..40 {
        let proxy = gw.proxy();
        downloads.push(tokio::spawn(async move {
            curl(&[
                "-x",
                &proxy,
                "-o",
                "/dev/null",
                &format!("http://site.test/slow/20?n={i}"),
            ])
            .await
        }));
    }
    // Every download has reached the origin before the stop; each takes two seconds.
    let seen = origin.wait_seen(40).await;
    assert_eq!(seen.len(), 40, "not every download reached the origin");
    gw.signal("TERM");
    // Those whose last byte the origin had not sent yet were in flight at SIGTERM.
    let in_flight = 40 - origin.finished();
    let mut finished = 0;
    for d in downloads {
        let r = d.await.unwrap();
        if r.status == 200 && r.exit == 0 {
            finished += 1;
        }
    }
    let audit = gw.audit.clone();
    assert_eq!(gw.wait().await, 0, "graceful stop exits 0");
    assert_eq!(finished, 40, "requests in flight were cut");
    let records: Vec<Value> = read_audit(&audit)
        .into_iter()
        .filter(|r| r["path"] == "/slow/20")
        .collect();
    assert_eq!(records.len(), 40, "records lost at shutdown");
    assert!(
        records
            .iter()
            .all(|r| r["bytes_down"] == 20 * 1024 && r["reason"].is_null()),
        "{records:?}"
    );
    assert!(
        in_flight >= 20,
        "only {in_flight} of 40 downloads were still in flight at SIGTERM"
    );
}
