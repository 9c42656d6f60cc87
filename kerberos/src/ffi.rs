//! MIT Kerberos as the host has it, loaded at run time (as Chromium does): no build dependency,
//! and the host's own configuration and `KRB5_TRACE`. The GSS-API (RFC 2744) from
//! `libgssapi_krb5.so.2` makes the security contexts; libkrb5 (`libkrb5.so.3`) makes the one AS
//! exchange that obtains a TGT, into a memory cache the caller owns. This is the crate's only
//! `unsafe` module: everything it gives out is a safe type that releases what it holds once.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;

type Status = u32;
type RawName = *mut c_void;
type RawCred = *mut c_void;
type RawCtx = *mut c_void;

#[repr(C)]
struct BufferDesc {
    length: usize,
    value: *mut c_void,
}

impl BufferDesc {
    fn empty() -> BufferDesc {
        BufferDesc {
            length: 0,
            value: std::ptr::null_mut(),
        }
    }

    /// A view of `bytes` for the library to read (never to free).
    fn of(bytes: &[u8]) -> BufferDesc {
        BufferDesc {
            length: bytes.len(),
            value: bytes.as_ptr() as *mut c_void,
        }
    }
}

#[repr(C)]
struct OidDesc {
    length: u32,
    elements: *mut c_void,
}

#[repr(C)]
struct OidSetDesc {
    count: usize,
    elements: *mut OidDesc,
}

#[repr(C)]
struct KeyValue {
    key: *const c_char,
    value: *const c_char,
}

#[repr(C)]
struct KeyValueSet {
    count: u32,
    elements: *const KeyValue,
}

const C_INITIATE: i32 = 1;
const C_INDEFINITE: u32 = 0xffff_ffff;
const C_GSS_CODE: i32 = 1;
const C_MECH_CODE: i32 = 2;
const S_CONTINUE_NEEDED: Status = 1;
/// GSS_S_CREDENTIALS_EXPIRED, a routine error.
pub const S_CREDENTIALS_EXPIRED: Status = 11 << 16;
/// GSS_S_NO_CRED.
pub const S_NO_CRED: Status = 7 << 16;
/// What a Windows client asks of the parent (RFC 2744 §5.19): prove itself (mutual), and
/// detect replayed and out-of-order messages.
pub const MUTUAL_FLAG: u32 = 2;
pub const REPLAY_FLAG: u32 = 4;
pub const SEQUENCE_FLAG: u32 = 8;

/// Routine errors live in bits 16..24; calling errors in 24..32.
pub fn is_error(major: Status) -> bool {
    major & 0xffff_0000 != 0
}

/// OIDs, DER-encoded bodies.
pub const NT_HOSTBASED_SERVICE: &[u8] =
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x01, 0x04];
pub const NT_KRB5_PRINCIPAL: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02, 0x01];
pub const MECH_SPNEGO: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
pub const MECH_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];

fn oid(body: &'static [u8]) -> OidDesc {
    OidDesc {
        length: body.len() as u32,
        elements: body.as_ptr() as *mut c_void,
    }
}

type ImportName =
    unsafe extern "C" fn(*mut u32, *const BufferDesc, *const OidDesc, *mut RawName) -> Status;
type ReleaseName = unsafe extern "C" fn(*mut u32, *mut RawName) -> Status;
type DisplayName =
    unsafe extern "C" fn(*mut u32, RawName, *mut BufferDesc, *mut *const OidDesc) -> Status;
type AcquireCred = unsafe extern "C" fn(
    *mut u32,
    RawName,
    u32,
    *const OidSetDesc,
    i32,
    *mut RawCred,
    *mut *mut c_void,
    *mut u32,
) -> Status;
type AcquireCredFrom = unsafe extern "C" fn(
    *mut u32,
    RawName,
    u32,
    *const OidSetDesc,
    i32,
    *const KeyValueSet,
    *mut RawCred,
    *mut *mut c_void,
    *mut u32,
) -> Status;
type InquireCred = unsafe extern "C" fn(
    *mut u32,
    RawCred,
    *mut RawName,
    *mut u32,
    *mut i32,
    *mut *mut c_void,
) -> Status;
type ReleaseCred = unsafe extern "C" fn(*mut u32, *mut RawCred) -> Status;
type InitSecContext = unsafe extern "C" fn(
    *mut u32,
    RawCred,
    *mut RawCtx,
    RawName,
    *const OidDesc,
    u32,
    u32,
    *const c_void,
    *const BufferDesc,
    *mut *const OidDesc,
    *mut BufferDesc,
    *mut u32,
    *mut u32,
) -> Status;
type DeleteSecContext = unsafe extern "C" fn(*mut u32, *mut RawCtx, *mut BufferDesc) -> Status;
type ReleaseBuffer = unsafe extern "C" fn(*mut u32, *mut BufferDesc) -> Status;
type DisplayStatus =
    unsafe extern "C" fn(*mut u32, u32, i32, *const OidDesc, *mut u32, *mut BufferDesc) -> Status;

/// libkrb5's types, as `krb5.h` declares them.
type Krb5Context = *mut c_void;
type Krb5Principal = *mut c_void;
type Krb5Keytab = *mut c_void;
type Krb5Ccache = *mut c_void;
type Krb5Options = *mut c_void;
type Krb5Code = i32;

#[repr(C)]
struct Krb5Keyblock {
    magic: i32,
    enctype: i32,
    length: u32,
    contents: *mut u8,
}

#[repr(C)]
struct Krb5Data {
    magic: i32,
    length: u32,
    data: *mut c_char,
}

#[repr(C)]
struct Krb5Times {
    authtime: i32,
    starttime: i32,
    endtime: i32,
    renew_till: i32,
}

/// `krb5_creds`, filled by the initial-credentials calls and freed by
/// `krb5_free_cred_contents`.
#[repr(C)]
struct Krb5Creds {
    magic: i32,
    client: Krb5Principal,
    server: Krb5Principal,
    keyblock: Krb5Keyblock,
    times: Krb5Times,
    is_skey: u32,
    ticket_flags: i32,
    addresses: *mut c_void,
    ticket: Krb5Data,
    second_ticket: Krb5Data,
    authdata: *mut c_void,
}

/// `krb5_keytab_entry`, read by `krb5_kt_next_entry`.
#[repr(C)]
struct Krb5KeytabEntry {
    magic: i32,
    principal: Krb5Principal,
    timestamp: i32,
    vno: u32,
    key: Krb5Keyblock,
}

type InitContext = unsafe extern "C" fn(*mut Krb5Context) -> Krb5Code;
type FreeContext = unsafe extern "C" fn(Krb5Context);
type ParseName = unsafe extern "C" fn(Krb5Context, *const c_char, *mut Krb5Principal) -> Krb5Code;
type FreePrincipal = unsafe extern "C" fn(Krb5Context, Krb5Principal);
type UnparseName = unsafe extern "C" fn(Krb5Context, Krb5Principal, *mut *mut c_char) -> Krb5Code;
type FreeUnparsedName = unsafe extern "C" fn(Krb5Context, *mut c_char);
type KtResolve = unsafe extern "C" fn(Krb5Context, *const c_char, *mut Krb5Keytab) -> Krb5Code;
type KtClose = unsafe extern "C" fn(Krb5Context, Krb5Keytab) -> Krb5Code;
type KtStartSeqGet = unsafe extern "C" fn(Krb5Context, Krb5Keytab, *mut *mut c_void) -> Krb5Code;
type KtNextEntry = unsafe extern "C" fn(
    Krb5Context,
    Krb5Keytab,
    *mut Krb5KeytabEntry,
    *mut *mut c_void,
) -> Krb5Code;
type KtEndSeqGet = unsafe extern "C" fn(Krb5Context, Krb5Keytab, *mut *mut c_void) -> Krb5Code;
type FreeKeytabEntryContents = unsafe extern "C" fn(Krb5Context, *mut Krb5KeytabEntry) -> Krb5Code;
type CcResolve = unsafe extern "C" fn(Krb5Context, *const c_char, *mut Krb5Ccache) -> Krb5Code;
type CcDestroy = unsafe extern "C" fn(Krb5Context, Krb5Ccache) -> Krb5Code;
type CcClose = unsafe extern "C" fn(Krb5Context, Krb5Ccache) -> Krb5Code;
type OptAlloc = unsafe extern "C" fn(Krb5Context, *mut Krb5Options) -> Krb5Code;
type OptFree = unsafe extern "C" fn(Krb5Context, Krb5Options);
type OptSetOutCcache = unsafe extern "C" fn(Krb5Context, Krb5Options, Krb5Ccache) -> Krb5Code;
type InitCredsKeytab = unsafe extern "C" fn(
    Krb5Context,
    *mut Krb5Creds,
    Krb5Principal,
    Krb5Keytab,
    i32,
    *const c_char,
    Krb5Options,
) -> Krb5Code;
type InitCredsPassword = unsafe extern "C" fn(
    Krb5Context,
    *mut Krb5Creds,
    Krb5Principal,
    *const c_char,
    *const c_void,
    *mut c_void,
    i32,
    *const c_char,
    Krb5Options,
) -> Krb5Code;
type FreeCredContents = unsafe extern "C" fn(Krb5Context, *mut Krb5Creds);
type GetErrorMessage = unsafe extern "C" fn(Krb5Context, Krb5Code) -> *const c_char;
type FreeErrorMessage = unsafe extern "C" fn(Krb5Context, *const c_char);

/// The libraries' entry points (they stay loaded for the process's life).
struct Api {
    _gssapi: libloading::Library,
    _krb5: libloading::Library,
    import_name: ImportName,
    release_name: ReleaseName,
    display_name: DisplayName,
    acquire_cred: AcquireCred,
    acquire_cred_from: AcquireCredFrom,
    inquire_cred: InquireCred,
    release_cred: ReleaseCred,
    init_sec_context: InitSecContext,
    delete_sec_context: DeleteSecContext,
    release_buffer: ReleaseBuffer,
    display_status: DisplayStatus,
    init_context: InitContext,
    free_context: FreeContext,
    parse_name: ParseName,
    free_principal: FreePrincipal,
    unparse_name: UnparseName,
    free_unparsed_name: FreeUnparsedName,
    kt_resolve: KtResolve,
    kt_close: KtClose,
    kt_start_seq_get: KtStartSeqGet,
    kt_next_entry: KtNextEntry,
    kt_end_seq_get: KtEndSeqGet,
    free_keytab_entry_contents: FreeKeytabEntryContents,
    cc_resolve: CcResolve,
    cc_destroy: CcDestroy,
    cc_close: CcClose,
    opt_alloc: OptAlloc,
    opt_free: OptFree,
    opt_set_out_ccache: OptSetOutCcache,
    init_creds_keytab: InitCredsKeytab,
    init_creds_password: InitCredsPassword,
    free_cred_contents: FreeCredContents,
    get_error_message: GetErrorMessage,
    free_error_message: FreeErrorMessage,
}

const GSSAPI: &[&str] = &["libgssapi_krb5.so.2", "libgssapi_krb5.so"];
const KRB5: &[&str] = &["libkrb5.so.3", "libkrb5.so"];

/// The libraries, loaded once; `Err` says what is missing and how to get it. Callers check it
/// before anything else, so that a host without them hears that, not another failure.
fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// Whether MIT Kerberos can be used here, and if not, why (every library tried, each error).
pub fn available() -> Result<(), String> {
    api().map(|_| ())
}

fn open(names: &[&str]) -> Result<libloading::Library, String> {
    let mut tried = Vec::new();
    for name in names {
        // SAFETY: loading MIT's Kerberos libraries runs their initialisers, which have no
        // preconditions; nothing else in the process loads a conflicting copy.
        match unsafe { libloading::Library::new(*name) } {
            Ok(lib) => return Ok(lib),
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(tried.join("; "))
}

fn load() -> Result<Api, String> {
    let missing = |e: String| {
        format!(
            "Kerberos needs MIT Kerberos (libgssapi_krb5.so.2 and libkrb5.so.3: apt install \
             libgssapi-krb5-2, or dnf install krb5-libs): {e}"
        )
    };
    let gssapi = open(GSSAPI).map_err(missing)?;
    let krb5 = open(KRB5).map_err(missing)?;
    macro_rules! symbol {
        ($lib:expr, $name:literal) => {
            // SAFETY: the symbol's type is its RFC 2744 / MIT gssapi_ext.h / krb5.h prototype,
            // declared above with the type of its field.
            *unsafe { $lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| missing(format!("no {} ({e})", $name)))?
        };
    }
    Ok(Api {
        import_name: symbol!(gssapi, "gss_import_name"),
        release_name: symbol!(gssapi, "gss_release_name"),
        display_name: symbol!(gssapi, "gss_display_name"),
        acquire_cred: symbol!(gssapi, "gss_acquire_cred"),
        acquire_cred_from: symbol!(gssapi, "gss_acquire_cred_from"),
        inquire_cred: symbol!(gssapi, "gss_inquire_cred"),
        release_cred: symbol!(gssapi, "gss_release_cred"),
        init_sec_context: symbol!(gssapi, "gss_init_sec_context"),
        delete_sec_context: symbol!(gssapi, "gss_delete_sec_context"),
        release_buffer: symbol!(gssapi, "gss_release_buffer"),
        display_status: symbol!(gssapi, "gss_display_status"),
        init_context: symbol!(krb5, "krb5_init_context"),
        free_context: symbol!(krb5, "krb5_free_context"),
        parse_name: symbol!(krb5, "krb5_parse_name"),
        free_principal: symbol!(krb5, "krb5_free_principal"),
        unparse_name: symbol!(krb5, "krb5_unparse_name"),
        free_unparsed_name: symbol!(krb5, "krb5_free_unparsed_name"),
        kt_resolve: symbol!(krb5, "krb5_kt_resolve"),
        kt_close: symbol!(krb5, "krb5_kt_close"),
        kt_start_seq_get: symbol!(krb5, "krb5_kt_start_seq_get"),
        kt_next_entry: symbol!(krb5, "krb5_kt_next_entry"),
        kt_end_seq_get: symbol!(krb5, "krb5_kt_end_seq_get"),
        free_keytab_entry_contents: symbol!(krb5, "krb5_free_keytab_entry_contents"),
        cc_resolve: symbol!(krb5, "krb5_cc_resolve"),
        cc_destroy: symbol!(krb5, "krb5_cc_destroy"),
        cc_close: symbol!(krb5, "krb5_cc_close"),
        opt_alloc: symbol!(krb5, "krb5_get_init_creds_opt_alloc"),
        opt_free: symbol!(krb5, "krb5_get_init_creds_opt_free"),
        opt_set_out_ccache: symbol!(krb5, "krb5_get_init_creds_opt_set_out_ccache"),
        init_creds_keytab: symbol!(krb5, "krb5_get_init_creds_keytab"),
        init_creds_password: symbol!(krb5, "krb5_get_init_creds_password"),
        free_cred_contents: symbol!(krb5, "krb5_free_cred_contents"),
        get_error_message: symbol!(krb5, "krb5_get_error_message"),
        free_error_message: symbol!(krb5, "krb5_free_error_message"),
        _gssapi: gssapi,
        _krb5: krb5,
    })
}

/// A failed GSS-API call: its major and minor status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GssStatus {
    pub major: u32,
    pub minor: u32,
}

/// A failed libkrb5 call: its com_err code and the library's words for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Krb5Failure {
    pub code: i32,
    pub message: String,
}

/// A name imported into the GSS-API, released when dropped.
pub struct Name(RawName);

// SAFETY: a GSS name is immutable once imported: MIT lets any thread read it, and this type
// only ever hands it to calls that read it.
unsafe impl Send for Name {}

impl Name {
    pub fn import(text: &str, kind: &'static [u8]) -> Result<Name, GssStatus> {
        let api = api().map_err(|_| GssStatus {
            major: u32::MAX,
            minor: 0,
        })?;
        let mut minor = 0;
        let mut name: RawName = std::ptr::null_mut();
        let buffer = BufferDesc::of(text.as_bytes());
        let kind = oid(kind);
        // SAFETY: valid pointers to locals; the library copies the buffer.
        let major = unsafe { (api.import_name)(&mut minor, &buffer, &kind, &mut name) };
        if is_error(major) {
            return Err(GssStatus { major, minor });
        }
        Ok(Name(name))
    }

    /// The name as the library prints it (`svc@REALM`).
    pub fn display(&self) -> String {
        let Ok(api) = api() else {
            return String::new();
        };
        let mut minor = 0;
        let mut out = BufferDesc::empty();
        // SAFETY: a valid name and an output buffer the library fills and `take` releases.
        let major =
            unsafe { (api.display_name)(&mut minor, self.0, &mut out, std::ptr::null_mut()) };
        if is_error(major) {
            return String::new();
        }
        take(api, &mut out).map_or_else(String::new, |b| String::from_utf8_lossy(&b).into_owned())
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        if let (Ok(api), false) = (api(), self.0.is_null()) {
            let mut minor = 0;
            // SAFETY: a name this type imported, released once.
            unsafe { (api.release_name)(&mut minor, &mut self.0) };
        }
    }
}

/// A GSS credential handle, released when dropped.
pub struct Cred(RawCred);

// SAFETY: MIT's krb5 mechanism guards each credential with a mutex of its own
// (`krb5_gss_cred_id_rec.lock`, taken by every call that reads or refreshes it), so one
// credential may be used by several threads at once. MIT does not document this as a promise;
// it is how its code has been since 1.x, and what Chromium and Samba rely on too.
unsafe impl Send for Cred {}
unsafe impl Sync for Cred {}

impl Cred {
    /// Initiator credentials for `name` (`None`: the default principal) from the process's
    /// credential cache (`KRB5CCNAME`), for every mechanism.
    pub fn from_default_cache(name: Option<&Name>) -> Result<(Cred, u32), GssStatus> {
        let api = api().map_err(|_| GssStatus {
            major: u32::MAX,
            minor: 0,
        })?;
        let (mut minor, mut cred, mut lifetime) = (0, std::ptr::null_mut(), 0u32);
        let desired = name.map_or(std::ptr::null_mut(), |n| n.0);
        // SAFETY: valid pointers to locals; no mechanism set (all of them).
        let major = unsafe {
            (api.acquire_cred)(
                &mut minor,
                desired,
                C_INDEFINITE,
                std::ptr::null(),
                C_INITIATE,
                &mut cred,
                std::ptr::null_mut(),
                &mut lifetime,
            )
        };
        if is_error(major) {
            return Err(GssStatus { major, minor });
        }
        Ok((Cred(cred), lifetime))
    }

    /// Initiator credentials for `name` from the credential cache `ccache` (`MEMORY:…`) alone:
    /// no keytab, so the library never makes an AS exchange of its own.
    pub fn from_cache(name: Option<&Name>, ccache: &str) -> Result<(Cred, u32), GssStatus> {
        let api = api().map_err(|_| GssStatus {
            major: u32::MAX,
            minor: 0,
        })?;
        let key = CString::new("ccache").expect("no NUL");
        let value = CString::new(ccache.replace('\0', "")).expect("no NUL left");
        let element = KeyValue {
            key: key.as_ptr(),
            value: value.as_ptr(),
        };
        let store = KeyValueSet {
            count: 1,
            elements: &element,
        };
        let (mut minor, mut cred, mut lifetime) = (0, std::ptr::null_mut(), 0u32);
        let desired = name.map_or(std::ptr::null_mut(), |n| n.0);
        // SAFETY: the store and the strings it points to live until the call returns; the
        // handle it returns is owned by the `Cred` made of it.
        let major = unsafe {
            (api.acquire_cred_from)(
                &mut minor,
                desired,
                C_INDEFINITE,
                std::ptr::null(),
                C_INITIATE,
                &store,
                &mut cred,
                std::ptr::null_mut(),
                &mut lifetime,
            )
        };
        if is_error(major) {
            return Err(GssStatus { major, minor });
        }
        Ok((Cred(cred), lifetime))
    }

    /// The principal the credential is for.
    pub fn principal(&self) -> Option<String> {
        let api = api().ok()?;
        let mut minor = 0;
        let mut name: RawName = std::ptr::null_mut();
        // SAFETY: a valid credential handle; the name it returns is owned below.
        let major = unsafe {
            (api.inquire_cred)(
                &mut minor,
                self.0,
                &mut name,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let name = Name(name);
        (!is_error(major)).then(|| name.display())
    }
}

impl Drop for Cred {
    fn drop(&mut self) {
        if let (Ok(api), false) = (api(), self.0.is_null()) {
            let mut minor = 0;
            // SAFETY: a handle this type owns, released once.
            unsafe { (api.release_cred)(&mut minor, &mut self.0) };
        }
    }
}

/// One security context, deleted when dropped.
pub struct SecurityContext(RawCtx);

// SAFETY: a context is used by one thread at a time (the owner moves it between the blocking
// pool's threads, never shares it).
unsafe impl Send for SecurityContext {}

/// What one `gss_init_sec_context` call gave.
pub struct Step {
    /// The token to send (empty: none).
    pub token: Vec<u8>,
    /// The context is established: no token is expected back.
    pub complete: bool,
    /// The flags the mechanism granted (`MUTUAL_FLAG`…).
    pub flags: u32,
}

impl SecurityContext {
    pub fn new() -> SecurityContext {
        SecurityContext(std::ptr::null_mut())
    }

    /// The next step of the context toward `target` through `mech`, asking for `flags`, with
    /// the peer's `input` token if any.
    pub fn step(
        &mut self,
        cred: &Cred,
        target: &Name,
        mech: &'static [u8],
        flags: u32,
        input: Option<&[u8]>,
    ) -> Result<Step, GssStatus> {
        let api = api().map_err(|_| GssStatus {
            major: u32::MAX,
            minor: 0,
        })?;
        let mech = oid(mech);
        let input = input.map(BufferDesc::of);
        let mut output = BufferDesc::empty();
        let (mut minor, mut granted) = (0, 0u32);
        // SAFETY: the handles are owned by their types and live through the call; the input
        // buffer outlives it; the output buffer is released by `take`.
        let major = unsafe {
            (api.init_sec_context)(
                &mut minor,
                cred.0,
                &mut self.0,
                target.0,
                &mech,
                flags,
                0,
                std::ptr::null(),
                input
                    .as_ref()
                    .map_or(std::ptr::null(), |b| b as *const BufferDesc),
                std::ptr::null_mut(),
                &mut output,
                &mut granted,
                std::ptr::null_mut(),
            )
        };
        let token = take(api, &mut output).unwrap_or_default();
        if is_error(major) {
            return Err(GssStatus { major, minor });
        }
        Ok(Step {
            token,
            complete: major & S_CONTINUE_NEEDED == 0,
            flags: granted,
        })
    }
}

impl Default for SecurityContext {
    fn default() -> Self {
        SecurityContext::new()
    }
}

impl Drop for SecurityContext {
    fn drop(&mut self) {
        if let (Ok(api), false) = (api(), self.0.is_null()) {
            let mut minor = 0;
            // SAFETY: a context this type owns, deleted once, no output token wanted.
            unsafe { (api.delete_sec_context)(&mut minor, &mut self.0, std::ptr::null_mut()) };
        }
    }
}

/// Copies a buffer the library filled, then releases it.
fn take(api: &Api, buffer: &mut BufferDesc) -> Option<Vec<u8>> {
    if buffer.value.is_null() {
        return None;
    }
    // SAFETY: the library filled `length` bytes at `value`.
    let bytes =
        unsafe { std::slice::from_raw_parts(buffer.value as *const u8, buffer.length) }.to_vec();
    let mut minor = 0;
    // SAFETY: a buffer the library allocated, released once.
    unsafe { (api.release_buffer)(&mut minor, buffer) };
    Some(bytes)
}

/// The library's words for a GSS status: the minor (mechanism) code when there is one, else
/// the major.
pub fn describe(status: GssStatus) -> String {
    let (code, kind) = if status.minor != 0 {
        (status.minor, C_MECH_CODE)
    } else {
        (status.major, C_GSS_CODE)
    };
    let Ok(api) = api() else {
        return format!("status {code:#x}");
    };
    let mut words = Vec::new();
    let mut message_context = 0u32;
    loop {
        let mut minor = 0;
        let mut out = BufferDesc::empty();
        // SAFETY: valid pointers; the library fills `out`, which `take` releases.
        let major = unsafe {
            (api.display_status)(
                &mut minor,
                code,
                kind,
                std::ptr::null(),
                &mut message_context,
                &mut out,
            )
        };
        if is_error(major) {
            break;
        }
        if let Some(text) = take(api, &mut out) {
            words.push(String::from_utf8_lossy(&text).into_owned());
        }
        if message_context == 0 || words.len() > 8 {
            break;
        }
    }
    words.join("; ")
}

/// A libkrb5 context, for one acquisition (MIT's contexts are not shared between threads).
pub struct Krb5(Krb5Context, &'static Api);

impl Krb5 {
    pub fn new() -> Result<Krb5, Krb5Failure> {
        let api = api().map_err(|message| Krb5Failure { code: -1, message })?;
        let mut ctx: Krb5Context = std::ptr::null_mut();
        // SAFETY: a pointer to a local the library fills.
        let code = unsafe { (api.init_context)(&mut ctx) };
        if code != 0 {
            return Err(Krb5Failure {
                code,
                message: format!("cannot read the Kerberos configuration (error {code})"),
            });
        }
        Ok(Krb5(ctx, api))
    }

    fn failure(&self, code: Krb5Code) -> Krb5Failure {
        // SAFETY: a valid context; the message is the library's, freed once below.
        let message = unsafe {
            let text = (self.1.get_error_message)(self.0, code);
            let owned = if text.is_null() {
                format!("error {code}")
            } else {
                CStr::from_ptr(text).to_string_lossy().into_owned()
            };
            (self.1.free_error_message)(self.0, text);
            owned
        };
        Krb5Failure { code, message }
    }

    fn principal(&self, name: &str) -> Result<Principal<'_>, Krb5Failure> {
        let text = CString::new(name.replace('\0', "")).expect("no NUL left");
        let mut principal: Krb5Principal = std::ptr::null_mut();
        // SAFETY: a valid context and string; the principal is owned by the value made of it.
        let code = unsafe { (self.1.parse_name)(self.0, text.as_ptr(), &mut principal) };
        if code != 0 {
            return Err(self.failure(code));
        }
        Ok(Principal(principal, self))
    }

    fn keytab(&self, path: &str) -> Result<Keytab<'_>, Krb5Failure> {
        let text = CString::new(format!("FILE:{}", path.replace('\0', ""))).expect("no NUL");
        let mut keytab: Krb5Keytab = std::ptr::null_mut();
        // SAFETY: a valid context and string; the handle is owned by the value made of it.
        let code = unsafe { (self.1.kt_resolve)(self.0, text.as_ptr(), &mut keytab) };
        if code != 0 {
            return Err(self.failure(code));
        }
        Ok(Keytab(keytab, self, path.to_string()))
    }

    /// The keytab's entries: principal, key version, encryption type (in the keytab's order).
    pub fn keytab_entries(&self, path: &str) -> Result<Vec<KeytabEntry>, Krb5Failure> {
        let keytab = self.keytab(path)?;
        let mut cursor: *mut c_void = std::ptr::null_mut();
        // SAFETY: a valid context and keytab; the cursor is ended below.
        let code = unsafe { (self.1.kt_start_seq_get)(self.0, keytab.0, &mut cursor) };
        if code != 0 {
            return Err(self.failure(code));
        }
        let mut entries = Vec::new();
        loop {
            // SAFETY: an all-zero entry is a valid empty one for the library to fill.
            let mut entry: Krb5KeytabEntry = unsafe { std::mem::zeroed() };
            // SAFETY: valid context, keytab and cursor; the entry's contents are freed below.
            let code = unsafe { (self.1.kt_next_entry)(self.0, keytab.0, &mut entry, &mut cursor) };
            if code != 0 {
                break;
            }
            let principal = self.unparse(entry.principal);
            entries.push(KeytabEntry {
                principal,
                kvno: entry.vno,
                enctype: entry.key.enctype,
            });
            // SAFETY: an entry the library filled, freed once.
            unsafe { (self.1.free_keytab_entry_contents)(self.0, &mut entry) };
        }
        // SAFETY: the cursor started above, ended once.
        unsafe { (self.1.kt_end_seq_get)(self.0, keytab.0, &mut cursor) };
        Ok(entries)
    }

    fn unparse(&self, principal: Krb5Principal) -> String {
        let mut text: *mut c_char = std::ptr::null_mut();
        // SAFETY: a principal the library gave; the string is freed once below.
        unsafe {
            if (self.1.unparse_name)(self.0, principal, &mut text) != 0 || text.is_null() {
                return String::new();
            }
            let owned = CStr::from_ptr(text).to_string_lossy().into_owned();
            (self.1.free_unparsed_name)(self.0, text);
            owned
        }
    }

    /// One AS exchange for `client` with the keys of `keytab` (or, given `password`, with it),
    /// its TGT stored in the credential cache `ccache` (`MEMORY:…`), which it initialises.
    /// Returns the principal and when the TGT ends (seconds since the epoch).
    pub fn initial_credentials(
        &self,
        client: Option<&str>,
        keytab: Option<&str>,
        password: Option<&str>,
        ccache: &str,
    ) -> Result<(String, i64), Krb5Failure> {
        let keytab = keytab.map(|k| self.keytab(k)).transpose()?;
        let client = match (client, &keytab) {
            (Some(name), _) => self.principal(name)?,
            (None, Some(_)) => {
                let path = keytab_path(&keytab);
                let first = self
                    .keytab_entries(&path)?
                    .into_iter()
                    .next()
                    .ok_or_else(|| Krb5Failure {
                        code: KT_NOTFOUND,
                        message: format!("the keytab {path} holds no key"),
                    })?;
                self.principal(&first.principal)?
            }
            (None, None) => {
                return Err(Krb5Failure {
                    code: CC_NOTFOUND,
                    message: "no principal to ask credentials for".to_string(),
                })
            }
        };
        let cache = self.cache(ccache)?;
        let mut options: Krb5Options = std::ptr::null_mut();
        // SAFETY: a valid context; the options are freed once below.
        let code = unsafe { (self.1.opt_alloc)(self.0, &mut options) };
        if code != 0 {
            return Err(self.failure(code));
        }
        // SAFETY: valid context, options and cache.
        let code = unsafe { (self.1.opt_set_out_ccache)(self.0, options, cache.0) };
        // SAFETY: an all-zero krb5_creds is the empty value the library fills and
        // krb5_free_cred_contents frees.
        let mut creds: Krb5Creds = unsafe { std::mem::zeroed() };
        let code = if code != 0 {
            code
        } else {
            match (&keytab, password) {
                // SAFETY: valid context, principal, keytab and options; `creds` is freed below.
                (Some(keytab), _) => unsafe {
                    (self.1.init_creds_keytab)(
                        self.0,
                        &mut creds,
                        client.0,
                        keytab.0,
                        0,
                        std::ptr::null(),
                        options,
                    )
                },
                (None, Some(password)) => {
                    // NUL-terminated, zeroed when dropped.
                    let mut secret = zeroize::Zeroizing::new(password.as_bytes().to_vec());
                    secret.retain(|b| *b != 0);
                    secret.push(0);
                    // SAFETY: as above; no prompter (the password is given); the password's
                    // bytes outlive the call and are zeroed after it.
                    unsafe {
                        (self.1.init_creds_password)(
                            self.0,
                            &mut creds,
                            client.0,
                            secret.as_ptr() as *const c_char,
                            std::ptr::null(),
                            std::ptr::null_mut(),
                            0,
                            std::ptr::null(),
                            options,
                        )
                    }
                }
                (None, None) => CC_NOTFOUND,
            }
        };
        let endtime = i64::from(creds.times.endtime);
        // SAFETY: creds filled (or left zeroed) by the call; options allocated above; each
        // freed once.
        unsafe {
            (self.1.free_cred_contents)(self.0, &mut creds);
            (self.1.opt_free)(self.0, options);
        }
        // The cache now holds the TGT (on success): its handle closes with `cache`, the cache
        // stays until the caller destroys it.
        drop(cache);
        if code != 0 {
            return Err(self.failure(code));
        }
        Ok((self.unparse(client.0), endtime))
    }

    fn cache(&self, name: &str) -> Result<Cache<'_>, Krb5Failure> {
        let text = CString::new(name.replace('\0', "")).expect("no NUL left");
        let mut cache: Krb5Ccache = std::ptr::null_mut();
        // SAFETY: a valid context and string; the handle is owned by the value made of it.
        let code = unsafe { (self.1.cc_resolve)(self.0, text.as_ptr(), &mut cache) };
        if code != 0 {
            return Err(self.failure(code));
        }
        Ok(Cache(cache, self))
    }

    /// Destroys the credential cache `ccache` (a memory cache lives in a table of the library
    /// until then, with the keys it holds).
    pub fn destroy_cache(&self, ccache: &str) -> Result<(), Krb5Failure> {
        let cache = self.cache(ccache)?;
        let raw = cache.0;
        std::mem::forget(cache);
        // SAFETY: a cache resolved above, destroyed once (which also closes the handle).
        let code = unsafe { (self.1.cc_destroy)(self.0, raw) };
        match code {
            0 => Ok(()),
            code => Err(self.failure(code)),
        }
    }
}

fn keytab_path(keytab: &Option<Keytab<'_>>) -> String {
    keytab.as_ref().map(|k| k.2.clone()).unwrap_or_default()
}

impl Drop for Krb5 {
    fn drop(&mut self) {
        // SAFETY: a context this type made, freed once after everything made from it.
        unsafe { (self.1.free_context)(self.0) };
    }
}

/// `KRB5_KT_NOTFOUND` and `KRB5_CC_NOTFOUND`, for failures this module reports itself.
pub const KT_NOTFOUND: i32 = -1_765_328_203;
pub const CC_NOTFOUND: i32 = -1_765_328_243;

struct Principal<'a>(Krb5Principal, &'a Krb5);

impl Drop for Principal<'_> {
    fn drop(&mut self) {
        // SAFETY: a principal parsed in this context, freed once.
        unsafe { (self.1 .1.free_principal)(self.1 .0, self.0) };
    }
}

struct Keytab<'a>(Krb5Keytab, &'a Krb5, String);

impl Drop for Keytab<'_> {
    fn drop(&mut self) {
        // SAFETY: a keytab resolved in this context, closed once.
        unsafe { (self.1 .1.kt_close)(self.1 .0, self.0) };
    }
}

/// A resolved cache handle, closed when dropped (the cache itself stays).
struct Cache<'a>(Krb5Ccache, &'a Krb5);

impl Drop for Cache<'_> {
    fn drop(&mut self) {
        // SAFETY: a handle resolved in this context, closed once.
        unsafe { (self.1 .1.cc_close)(self.1 .0, self.0) };
    }
}

/// A keytab entry, as `klist -k` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeytabEntry {
    pub principal: String,
    pub kvno: u32,
    pub enctype: i32,
}
