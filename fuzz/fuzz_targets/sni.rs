//! The ClientHello peek on arbitrary first bytes: never panics, never waits forever.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use passerelle_gateway::sni::read_client_hello;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    runtime.block_on(async {
        let mut reader = data;
        let mut seen = Vec::new();
        let _ = read_client_hello(&mut reader, Duration::from_millis(50), &mut seen).await;
        assert!(seen.len() <= data.len());
    });
});
