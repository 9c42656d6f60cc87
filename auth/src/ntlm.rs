//! NTLMv2 for proxy authentication (MS-NLMP): the Type 1 we send, the Type 2 we read, the
//! Type 3 we answer with. Never LM, never NTLMv1, no session key on the wire.

use hmac::{Hmac, Mac};
use md5::Md5;
use ntlmclient::{AuthenticateMessage, Flags, Message, NegotiateMessage};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::credentials::Credentials;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
const AV_EOL: u16 = 0;
const AV_NB_DOMAIN: u16 = 2;
const AV_TIMESTAMP: u16 = 7;
const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;

/// What we ask for in Type 1: Unicode, NTLM with extended session security, 128-bit.
/// No LM key, no key exchange: we never use a session key.
fn our_flags() -> Flags {
    Flags::NEGOTIATE_UNICODE
        | Flags::NEGOTIATE_OEM
        | Flags::REQUEST_TARGET
        | Flags::NEGOTIATE_NTLM
        | Flags::NEGOTIATE_ALWAYS_SIGN
        | Flags::NEGOTIATE_NTLM2_KEY
        | Flags::NEGOTIATE_128BIT
        | Flags::NEGOTIATE_56BIT
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NtlmError {
    #[error("the parent's NTLM challenge is not valid base64")]
    Base64,
    #[error("the parent's NTLM challenge is not a Type 2 message: {0}")]
    NotType2(&'static str),
    #[error("cannot encode the NTLM message: {0}")]
    Encode(String),
}

/// The fields of a Type 2 (CHALLENGE_MESSAGE) that the answer needs, and those worth a
/// debug line.
#[derive(Debug, Clone)]
pub struct Type2 {
    pub flags: u32,
    pub target_name: String,
    pub server_challenge: [u8; 8],
    /// Raw AV pairs, copied into the NTLMv2 blob as the server sent them.
    pub target_info: Vec<u8>,
    pub timestamp: Option<u64>,
    pub netbios_domain: Option<String>,
}

/// Type 1 (NEGOTIATE_MESSAGE), base64.
pub fn negotiate() -> Result<String, NtlmError> {
    let msg = Message::Negotiate(NegotiateMessage {
        flags: our_flags(),
        supplied_domain: String::new(),
        supplied_workstation: String::new(),
        os_version: Default::default(),
    });
    let bytes = msg
        .to_bytes()
        .map_err(|e| NtlmError::Encode(format!("{e:?}")))?;
    Ok(b64(&bytes))
}

/// Parses a base64 Type 2. Tolerates the short form without target info or version
/// (older servers), and never panics on hostile input.
pub fn parse_challenge(token: &str) -> Result<Type2, NtlmError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| NtlmError::Base64)?;
    parse_type2(&bytes)
}

fn parse_type2(b: &[u8]) -> Result<Type2, NtlmError> {
    if b.len() < 32 {
        return Err(NtlmError::NotType2("shorter than 32 bytes"));
    }
    if &b[0..8] != SIGNATURE {
        return Err(NtlmError::NotType2("no NTLMSSP signature"));
    }
    if u32le(b, 8) != Some(2) {
        return Err(NtlmError::NotType2("message type is not 2"));
    }
    let flags = u32le(b, 20).ok_or(NtlmError::NotType2("truncated"))?;
    let mut server_challenge = [0u8; 8];
    server_challenge.copy_from_slice(&b[24..32]);
    let target_name = sec_buffer(b, 12)
        .map(|raw| decode_string(raw, flags))
        .unwrap_or_default();
    // Target info is there only when the server says so (MS-NLMP 2.2.1.2); without the
    // flag, bytes 40.. may already be the target name (Squid's ntlm_fake_auth sends that).
    let target_info = if flags & NEGOTIATE_TARGET_INFO != 0 && b.len() >= 48 {
        sec_buffer(b, 40)
            .ok_or(NtlmError::NotType2(
                "target info points outside the message",
            ))?
            .to_vec()
    } else {
        Vec::new()
    };
    let mut timestamp = None;
    let mut netbios_domain = None;
    let mut rest = target_info.as_slice();
    while rest.len() >= 4 {
        let id = u16::from_le_bytes([rest[0], rest[1]]);
        let len = u16::from_le_bytes([rest[2], rest[3]]) as usize;
        let Some(value) = rest.get(4..4 + len) else {
            return Err(NtlmError::NotType2("truncated target info"));
        };
        match id {
            AV_EOL => break,
            AV_TIMESTAMP if len == 8 => {
                timestamp = Some(u64::from_le_bytes(value.try_into().unwrap_or([0; 8])))
            }
            AV_NB_DOMAIN => netbios_domain = Some(decode_string(value, 1)),
            _ => {}
        }
        rest = &rest[4 + len..];
    }
    Ok(Type2 {
        flags,
        target_name,
        server_challenge,
        target_info,
        timestamp,
        netbios_domain,
    })
}

/// Type 3 (AUTHENTICATE_MESSAGE) with an NTLMv2 response, base64. The domain is the
/// configured one, never the server's target name.
pub fn authenticate(
    creds: &Credentials,
    challenge: &Type2,
    workstation: &str,
) -> Result<String, NtlmError> {
    let mut client_challenge = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut client_challenge);
    let time = challenge.timestamp.unwrap_or_else(ntlm_time);
    let (nt_response, lm_response) = ntlmv2_response(creds, challenge, client_challenge, time);
    let server_flags = Flags::from_bits_retain(challenge.flags);
    let mut flags = (our_flags() & server_flags) | Flags::NEGOTIATE_NTLM;
    if !flags.contains(Flags::NEGOTIATE_UNICODE) {
        flags |= Flags::NEGOTIATE_OEM;
    }
    let msg = Message::Authenticate(AuthenticateMessage {
        lm_response,
        ntlm_response: nt_response,
        domain_name: creds.domain.clone(),
        user_name: creds.user.clone(),
        workstation_name: workstation.to_string(),
        session_key: Vec::new(),
        flags,
        os_version: Default::default(),
    });
    let bytes = Zeroizing::new(
        msg.to_bytes()
            .map_err(|e| NtlmError::Encode(format!("{e:?}")))?,
    );
    Ok(b64(&bytes))
}

/// MS-NLMP 3.3.2: NTOWFv2 = HMAC_MD5(NT hash, UPPER(user) ‖ domain), then NTProofStr over the
/// server challenge and the blob. When the server sent a timestamp, LmChallengeResponse is
/// Z(24) (3.1.5.1.2); otherwise LMv2.
fn ntlmv2_response(
    creds: &Credentials,
    challenge: &Type2,
    client_challenge: [u8; 8],
    time: u64,
) -> (Vec<u8>, Vec<u8>) {
    let nt_hash = creds.secret().nt_hash();
    let mut mac = hmac_md5(&nt_hash[..]);
    mac.update(&utf16le(&creds.user.to_uppercase()));
    mac.update(&utf16le(&creds.domain));
    let ntowf2 = Zeroizing::new(<[u8; 16]>::from(mac.finalize().into_bytes()));

    let mut blob = Vec::with_capacity(32 + challenge.target_info.len());
    blob.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    blob.extend_from_slice(&time.to_le_bytes());
    blob.extend_from_slice(&client_challenge);
    blob.extend_from_slice(&[0; 4]);
    blob.extend_from_slice(&challenge.target_info);
    blob.extend_from_slice(&[0; 4]);

    let mut mac = hmac_md5(&ntowf2[..]);
    mac.update(&challenge.server_challenge);
    mac.update(&blob);
    let proof = mac.finalize().into_bytes();
    let mut nt_response = proof.to_vec();
    nt_response.extend_from_slice(&blob);

    let lm_response = if challenge.timestamp.is_some() {
        vec![0; 24]
    } else {
        let mut mac = hmac_md5(&ntowf2[..]);
        mac.update(&challenge.server_challenge);
        mac.update(&client_challenge);
        let mut lm = mac.finalize().into_bytes().to_vec();
        lm.extend_from_slice(&client_challenge);
        lm
    };
    (nt_response, lm_response)
}

fn hmac_md5(key: &[u8]) -> Hmac<Md5> {
    <Hmac<Md5> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Tenths of a microsecond since 1601-01-01 (FILETIME).
fn ntlm_time() -> u64 {
    const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH_AS_FILETIME + since_unix.as_nanos() as u64 / 100
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn decode_string(raw: &[u8], flags: u32) -> String {
    if flags & Flags::NEGOTIATE_UNICODE.bits() != 0 {
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(raw).into_owned()
    }
}

fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn sec_buffer(b: &[u8], at: usize) -> Option<&[u8]> {
    let len = u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
    let offset = u32le(b, at + 4)? as usize;
    if len == 0 {
        return Some(&[]);
    }
    b.get(offset..offset.checked_add(len)?)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;
    use base64::Engine;

    /// MS-NLMP 4.2.4: user "User", domain "Domain", password "Password".
    fn spec_creds() -> Credentials {
        Credentials::new("User", Some("Domain"), Secret::Password("Password".into())).unwrap()
    }

    fn spec_target_info() -> Vec<u8> {
        let mut ti = Vec::new();
        for (id, s) in [(AV_NB_DOMAIN, "Domain"), (1u16, "Server")] {
            let v = utf16le(s);
            ti.extend_from_slice(&id.to_le_bytes());
            ti.extend_from_slice(&(v.len() as u16).to_le_bytes());
            ti.extend_from_slice(&v);
        }
        ti.extend_from_slice(&[0, 0, 0, 0]);
        ti
    }

    #[test]
    fn ntlmv2_matches_the_ms_nlmp_test_vector() {
        // MS-NLMP 4.2.4.2.2: NTProofStr for server challenge 0123456789abcdef, client
        // challenge aa*8, time 0, and the spec's target info.
        let challenge = Type2 {
            flags: 0,
            target_name: "Server".into(),
            server_challenge: [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            target_info: spec_target_info(),
            timestamp: None,
            netbios_domain: None,
        };
        let (nt, lm) = ntlmv2_response(&spec_creds(), &challenge, [0xaa; 8], 0);
        assert_eq!(hex::encode(&nt[..16]), "68cd0ab851e51c96aabc927bebef6a1c");
        assert_eq!(
            hex::encode(&lm),
            "86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa"
        );
    }

    #[test]
    fn nt_hash_secret_gives_the_same_answer_as_the_password() {
        let challenge = parse_type2(&type2_bytes(true)).unwrap();
        let by_hash = Credentials::new(
            "Domain\\User",
            None,
            Secret::parse_nt_hash("a4f49c406510bdcab6824ee7c30fd852").unwrap(),
        )
        .unwrap();
        let a = ntlmv2_response(&spec_creds(), &challenge, [7; 8], 42);
        let b = ntlmv2_response(&by_hash, &challenge, [7; 8], 42);
        assert_eq!(a, b);
        assert_eq!(
            a.1,
            vec![0; 24],
            "with a server timestamp, LM response is Z(24)"
        );
    }

    fn type2_bytes(with_info: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(SIGNATURE);
        b.extend_from_slice(&2u32.to_le_bytes());
        let name = utf16le("SRV");
        let mut ti = Vec::new();
        ti.extend_from_slice(&AV_TIMESTAMP.to_le_bytes());
        ti.extend_from_slice(&8u16.to_le_bytes());
        ti.extend_from_slice(&123u64.to_le_bytes());
        ti.extend_from_slice(&[0, 0, 0, 0]);
        let header = if with_info { 48 } else { 32 };
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(&(header as u32).to_le_bytes());
        b.extend_from_slice(&(our_flags().bits() | 0x0080_0000).to_le_bytes());
        b.extend_from_slice(&[9; 8]);
        if with_info {
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&(ti.len() as u16).to_le_bytes());
            b.extend_from_slice(&(ti.len() as u16).to_le_bytes());
            b.extend_from_slice(&((header + name.len()) as u32).to_le_bytes());
        }
        b.extend_from_slice(&name);
        if with_info {
            b.extend_from_slice(&ti);
        }
        b
    }

    #[test]
    fn type2_with_and_without_target_info() {
        let t = parse_type2(&type2_bytes(true)).unwrap();
        assert_eq!(t.target_name, "SRV");
        assert_eq!(t.server_challenge, [9; 8]);
        assert_eq!(t.timestamp, Some(123));
        let t = parse_type2(&type2_bytes(false)).unwrap();
        assert_eq!(t.target_name, "SRV");
        assert!(t.target_info.is_empty());
        assert_eq!(t.timestamp, None);
    }

    #[test]
    fn a_type2_without_the_target_info_flag_has_none() {
        // Squid's ntlm_fake_auth: no TARGET_INFO flag, the target name at offset 40, and a
        // target name buffer pointing nowhere.
        let t =
            parse_challenge("TlRMTVNTUAACAAAACQAJAK6qqqoHggiibdQVQKB8L0QAAAAAAAA6AFdPUktHUk9VUA==")
                .unwrap();
        assert!(t.target_info.is_empty());
        assert_eq!(t.target_name, "");
        assert_eq!(
            t.server_challenge,
            [0x6d, 0xd4, 0x15, 0x40, 0xa0, 0x7c, 0x2f, 0x44]
        );
    }

    #[test]
    fn hostile_type2_is_an_error_not_a_panic() {
        let good = type2_bytes(true);
        for cut in 0..good.len() {
            let _ = parse_type2(&good[..cut]);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed as usize) % b.len();
                b[i] = (seed >> 32) as u8;
            }
            let _ = parse_type2(&b);
        }
        assert!(parse_challenge("!!!").is_err());
        assert!(parse_type2(b"NTLMSSP\0\x01\0\0\0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").is_err());
    }

    #[test]
    fn type3_carries_our_domain_and_no_session_key() {
        let challenge = parse_type2(&type2_bytes(true)).unwrap();
        let token = authenticate(&spec_creds(), &challenge, "PASSERELLE").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .unwrap();
        let Ok(Message::Authenticate(m)) = Message::try_from(bytes.as_slice()) else {
            panic!("not a Type 3");
        };
        assert_eq!(m.domain_name, "Domain");
        assert_eq!(m.user_name, "User");
        assert!(m.session_key.is_empty());
        assert_eq!(m.lm_response, vec![0; 24]);
        assert!(
            m.ntlm_response.len() > 24,
            "an NTLMv2 response, not a 24-byte v1 one"
        );
        let neg = negotiate().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(neg)
            .unwrap();
        assert_eq!(&bytes[..12], b"NTLMSSP\0\x01\0\0\0");
        assert_eq!(u32le(&bytes, 12), Some(our_flags().bits()));
    }
}
