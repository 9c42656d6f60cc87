//! NTLM Type 2 messages from a hostile parent: parsing never panics.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let token = base64::engine::general_purpose::STANDARD.encode(data);
    if let Ok(challenge) = passerelle_auth::ntlm::parse_challenge(&token) {
        let creds = passerelle_auth::Credentials::new("u", Some("D"), passerelle_auth::Secret::Password("p".into())).unwrap();
        let _ = passerelle_auth::ntlm::authenticate(&creds, &challenge, "W");
    }
});
