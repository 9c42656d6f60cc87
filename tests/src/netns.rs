//! Test hosts in network namespaces the test creates and removes: a workstation, the jump
//! host, the outside, joined by veth pairs, with addresses from 198.18.0.0/15 (RFC 2544's
//! benchmarking range), never a real address.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A network namespace, deleted (with its veth ends) when dropped.
pub struct Netns {
    pub name: String,
}

/// Whether this machine lets the test create namespaces (root, `ip netns`, nft); the reason
/// when not.
pub fn unavailable() -> Option<String> {
    if !Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
    {
        return Some("network namespaces need root".into());
    }
    let probe = format!("passerelle-probe-{}", std::process::id());
    let added = Command::new("ip").args(["netns", "add", &probe]).output();
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    match added {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Some(format!(
                "ip netns add: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => return Some(format!("ip (iproute2) cannot run: {e}")),
    }
    if Command::new("nft").arg("--version").output().is_err() {
        return Some("nft (nftables) is not installed".into());
    }
    None
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Netns {
    /// A fresh namespace named after `role`, unique to this process, with loopback up.
    pub fn new(role: &str) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "pas-{role}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// A command inside the namespace, not yet run.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A shell line inside the namespace; panics with its stderr when it fails.
    pub fn sh(&self, line: &str) -> String {
        let out = run(&["ip", "netns", "exec", &self.name, "sh", "-c", line]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A shell line inside the namespace, its output whatever its exit.
    pub fn try_sh(&self, line: &str) -> Output {
        self.command("sh").args(["-c", line]).output().unwrap()
    }

    /// Joins `self` and `other` by a veth pair: `here` and `there` are `ip/prefix` for each
    /// end. Returns the two interfaces' names.
    pub fn link(&self, other: &Netns, here: &str, there: &str) -> (String, String) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let (a, b) = (
            format!("pa{}x{n}", std::process::id() % 100_000),
            format!("pb{}x{n}", std::process::id() % 100_000),
        );
        run(&[
            "ip",
            "link",
            "add",
            &a,
            "netns",
            &self.name,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &other.name,
        ]);
        self.sh(&format!("ip addr add {here} dev {a} && ip link set {a} up"));
        other.sh(&format!(
            "ip addr add {there} dev {b} && ip link set {b} up"
        ));
        (a, b)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
