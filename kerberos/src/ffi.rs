//! The GSS-API (RFC 2744) as MIT Kerberos exports it from `libgssapi_krb5.so.2`, loaded at
//! run time (as Chromium does): no build dependency, and the host's own Kerberos
//! configuration, credential caches and `KRB5_TRACE`. Only this module is `unsafe`.

use std::ffi::{c_char, c_void};
use std::sync::OnceLock;

pub type Status = u32;
pub type Name = *mut c_void;
pub type Cred = *mut c_void;
pub type Ctx = *mut c_void;

#[repr(C)]
pub struct BufferDesc {
    pub length: usize,
    pub value: *mut c_void,
}

impl BufferDesc {
    pub fn empty() -> BufferDesc {
        BufferDesc {
            length: 0,
            value: std::ptr::null_mut(),
        }
    }

    /// A view of `bytes` for the library to read (never to free).
    pub fn of(bytes: &[u8]) -> BufferDesc {
        BufferDesc {
            length: bytes.len(),
            value: bytes.as_ptr() as *mut c_void,
        }
    }
}

#[repr(C)]
pub struct OidDesc {
    pub length: u32,
    pub elements: *mut c_void,
}

#[repr(C)]
pub struct KeyValue {
    pub key: *const c_char,
    pub value: *const c_char,
}

#[repr(C)]
pub struct KeyValueSet {
    pub count: u32,
    pub elements: *const KeyValue,
}

pub const C_INITIATE: i32 = 1;
pub const C_INDEFINITE: u32 = 0xffff_ffff;
pub const C_GSS_CODE: i32 = 1;
pub const C_MECH_CODE: i32 = 2;
pub const S_CONTINUE_NEEDED: Status = 1;
pub const S_CREDENTIALS_EXPIRED: Status = 11 << 16;
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

#[repr(C)]
pub struct OidSetDesc {
    pub count: usize,
    pub elements: *mut OidDesc,
}

pub fn oid(body: &'static [u8]) -> OidDesc {
    OidDesc {
        length: body.len() as u32,
        elements: body.as_ptr() as *mut c_void,
    }
}

type ImportName =
    unsafe extern "C" fn(*mut u32, *const BufferDesc, *const OidDesc, *mut Name) -> Status;
type ReleaseName = unsafe extern "C" fn(*mut u32, *mut Name) -> Status;
type DisplayName =
    unsafe extern "C" fn(*mut u32, Name, *mut BufferDesc, *mut *const OidDesc) -> Status;
type AcquireCred = unsafe extern "C" fn(
    *mut u32,
    Name,
    u32,
    *const c_void,
    i32,
    *mut Cred,
    *mut *mut c_void,
    *mut u32,
) -> Status;
type AcquireCredFrom = unsafe extern "C" fn(
    *mut u32,
    Name,
    u32,
    *const c_void,
    i32,
    *const KeyValueSet,
    *mut Cred,
    *mut *mut c_void,
    *mut u32,
) -> Status;
type AcquireCredWithPassword = unsafe extern "C" fn(
    *mut u32,
    Name,
    *const BufferDesc,
    u32,
    *const c_void,
    i32,
    *mut Cred,
    *mut *mut c_void,
    *mut u32,
) -> Status;
type InquireCred =
    unsafe extern "C" fn(*mut u32, Cred, *mut Name, *mut u32, *mut i32, *mut *mut c_void) -> Status;
type ReleaseCred = unsafe extern "C" fn(*mut u32, *mut Cred) -> Status;
type StoreCredInto = unsafe extern "C" fn(
    *mut u32,
    Cred,
    i32,
    *const OidDesc,
    u32,
    u32,
    *const KeyValueSet,
    *mut *mut c_void,
    *mut i32,
) -> Status;
type InitSecContext = unsafe extern "C" fn(
    *mut u32,
    Cred,
    *mut Ctx,
    Name,
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
type DeleteSecContext = unsafe extern "C" fn(*mut u32, *mut Ctx, *mut BufferDesc) -> Status;
type ReleaseBuffer = unsafe extern "C" fn(*mut u32, *mut BufferDesc) -> Status;
type DisplayStatus =
    unsafe extern "C" fn(*mut u32, u32, i32, *const OidDesc, *mut u32, *mut BufferDesc) -> Status;

/// The library's entry points (the library stays loaded for the process's life).
pub struct Api {
    _lib: libloading::Library,
    pub import_name: ImportName,
    pub release_name: ReleaseName,
    pub display_name: DisplayName,
    pub acquire_cred: AcquireCred,
    pub acquire_cred_from: AcquireCredFrom,
    pub acquire_cred_with_password: AcquireCredWithPassword,
    pub inquire_cred: InquireCred,
    pub release_cred: ReleaseCred,
    pub store_cred_into: StoreCredInto,
    pub init_sec_context: InitSecContext,
    pub delete_sec_context: DeleteSecContext,
    pub release_buffer: ReleaseBuffer,
    pub display_status: DisplayStatus,
}

const LIBRARIES: &[&str] = &["libgssapi_krb5.so.2", "libgssapi_krb5.so"];

/// The GSS-API, loaded once; `Err` says what is missing and how to get it.
pub fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> Result<Api, String> {
    let mut last = String::new();
    for name in LIBRARIES {
        // SAFETY: loading MIT's GSS-API library runs its initialisers, which have no
        // preconditions; nothing else in the process loads a conflicting copy.
        match unsafe { libloading::Library::new(*name) } {
            Ok(lib) => return bind(lib),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!(
        "Kerberos needs MIT Kerberos' GSS-API library (libgssapi_krb5.so.2: apt install \
         libgssapi-krb5-2, or dnf install krb5-libs): {last}"
    ))
}

fn bind(lib: libloading::Library) -> Result<Api, String> {
    macro_rules! symbol {
        ($name:literal) => {
            // SAFETY: the symbol's type is the RFC 2744 / MIT gssapi_ext.h prototype above.
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| format!("libgssapi_krb5 has no {}: {e}", $name))?
        };
    }
    Ok(Api {
        import_name: symbol!("gss_import_name"),
        release_name: symbol!("gss_release_name"),
        display_name: symbol!("gss_display_name"),
        acquire_cred: symbol!("gss_acquire_cred"),
        acquire_cred_from: symbol!("gss_acquire_cred_from"),
        acquire_cred_with_password: symbol!("gss_acquire_cred_with_password"),
        inquire_cred: symbol!("gss_inquire_cred"),
        release_cred: symbol!("gss_release_cred"),
        store_cred_into: symbol!("gss_store_cred_into"),
        init_sec_context: symbol!("gss_init_sec_context"),
        delete_sec_context: symbol!("gss_delete_sec_context"),
        release_buffer: symbol!("gss_release_buffer"),
        display_status: symbol!("gss_display_status"),
        _lib: lib,
    })
}

/// A name imported into the library, released when dropped.
pub struct OwnedName(pub Name);

// SAFETY: MIT's GSS-API objects may be used from any thread, one call at a time; the types
// holding them give no shared mutable access.
unsafe impl Send for OwnedName {}
unsafe impl Sync for OwnedName {}

impl OwnedName {
    pub fn import(text: &str, kind: &'static [u8]) -> Result<OwnedName, (Status, u32)> {
        let api = api().map_err(|_| (u32::MAX, 0))?;
        let mut minor = 0;
        let mut name: Name = std::ptr::null_mut();
        let buffer = BufferDesc::of(text.as_bytes());
        let kind = oid(kind);
        // SAFETY: valid pointers to locals; the library copies the buffer.
        let major = unsafe { (api.import_name)(&mut minor, &buffer, &kind, &mut name) };
        if is_error(major) {
            return Err((major, minor));
        }
        Ok(OwnedName(name))
    }

    /// The name as the library prints it (`svc@REALM`).
    pub fn display(&self) -> String {
        let Ok(api) = api() else {
            return String::new();
        };
        let mut minor = 0;
        let mut out = BufferDesc::empty();
        // SAFETY: a valid name and an output buffer the library fills and we release.
        let major =
            unsafe { (api.display_name)(&mut minor, self.0, &mut out, std::ptr::null_mut()) };
        if is_error(major) {
            return String::new();
        }
        take(api, &mut out).map_or_else(String::new, |b| String::from_utf8_lossy(&b).into_owned())
    }
}

impl Drop for OwnedName {
    fn drop(&mut self) {
        if let (Ok(api), false) = (api(), self.0.is_null()) {
            let mut minor = 0;
            // SAFETY: a name this type imported, released once.
            unsafe { (api.release_name)(&mut minor, &mut self.0) };
        }
    }
}

/// A credential handle, released when dropped.
pub struct OwnedCred(pub Cred);

// SAFETY: see OwnedName.
unsafe impl Send for OwnedCred {}
unsafe impl Sync for OwnedCred {}

impl Drop for OwnedCred {
    fn drop(&mut self) {
        if let (Ok(api), false) = (api(), self.0.is_null()) {
            let mut minor = 0;
            // SAFETY: a handle this type owns, released once.
            unsafe { (api.release_cred)(&mut minor, &mut self.0) };
        }
    }
}

/// A security context, deleted when dropped.
pub struct OwnedCtx(pub Ctx);

// SAFETY: see OwnedName.
unsafe impl Send for OwnedCtx {}

impl Drop for OwnedCtx {
    fn drop(&mut self) {
        if let (Ok(api), false) = (api(), self.0.is_null()) {
            let mut minor = 0;
            // SAFETY: a context this type owns, deleted once, no output token wanted.
            unsafe { (api.delete_sec_context)(&mut minor, &mut self.0, std::ptr::null_mut()) };
        }
    }
}

/// Copies a buffer the library filled, then releases it.
pub fn take(api: &Api, buffer: &mut BufferDesc) -> Option<Vec<u8>> {
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

/// The library's words for a status (major or minor).
pub fn describe(code: u32, kind: i32) -> String {
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
