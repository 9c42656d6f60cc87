//! The commit the binary is built from, for `--version` and `passerelle_build_info`:
//! `PASSERELLE_COMMIT` when the packager sets it, else git's, else "unknown".
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PASSERELLE_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let commit = std::env::var("PASSERELLE_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=PASSERELLE_COMMIT={}",
        commit
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "unknown".to_string())
    );
}
