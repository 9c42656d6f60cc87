//! The `passerelle` binary: check-config, print-default-config, hash-password, env overrides.

use passerelle_tests::harness::passerelle_bin;

#[test]
fn check_config_on_the_embedded_default_prints_the_flows() {
    let out = std::process::Command::new(passerelle_bin())
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
}
