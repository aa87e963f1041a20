//! Host facts reported to the gateway, and user lookups for the shell.

use std::ffi::{CStr, CString};

pub fn agent_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success
    // (we also bound the read with the buffer length).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(buf.get(..end).unwrap_or(&[])).into_owned()
}

/// First non-loopback IPv4 address, found by "connecting" a UDP socket (no
/// packet is sent), else 127.0.0.1.
pub fn ip_address() -> String {
    let probe = || -> std::io::Result<std::net::IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => ip.to_string(),
        _ => "127.0.0.1".into(),
    }
}

/// (NAME, VERSION_ID) from /etc/os-release.
pub fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    parse_os_release(&text)
}

pub fn parse_os_release(text: &str) -> (String, String) {
    let mut name = String::from("Linux");
    let mut version = String::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
            match k.trim() {
                "NAME" => name = v,
                "VERSION_ID" => version = v,
                _ => {}
            }
        }
    }
    (name, version)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub home: String,
    pub shell: String,
}

fn from_passwd(pw: *const libc::passwd) -> Option<UserInfo> {
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null and points at libc's static passwd record; we copy
    // the strings out immediately.
    unsafe {
        let p = &*pw;
        let s = |c: *const libc::c_char| {
            if c.is_null() {
                String::new()
            } else {
                CStr::from_ptr(c).to_string_lossy().into_owned()
            }
        };
        Some(UserInfo {
            name: s(p.pw_name),
            home: s(p.pw_dir),
            shell: s(p.pw_shell),
        })
    }
}

pub fn user_by_name(name: &str) -> Option<UserInfo> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string. getpwnam is not thread-safe
    // but we copy the result out at once; lookups are rare (one per session).
    from_passwd(unsafe { libc::getpwnam(c.as_ptr()) })
}

pub fn current_user() -> Option<UserInfo> {
    // SAFETY: see user_by_name.
    from_passwd(unsafe { libc::getpwuid(libc::geteuid()) })
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Extracts `<TokenValue>` from the channel-token XML answer. Hostile input:
/// bounded size, no entity expansion beyond the five XML escapes.
pub fn extract_token(xml: &[u8]) -> Option<String> {
    const MAX_BODY: usize = 64 * 1024;
    const MAX_TOKEN: usize = 8 * 1024;
    if xml.len() > MAX_BODY {
        return None;
    }
    let text = std::str::from_utf8(xml).ok()?;
    let start = text.find("<TokenValue>")? + "<TokenValue>".len();
    let rest = text.get(start..)?;
    let end = rest.find("</TokenValue>")?;
    let raw = rest.get(..end)?.trim();
    if raw.is_empty() || raw.len() > MAX_TOKEN {
        return None;
    }
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_extracted() {
        let xml = b"<CreateControlChannelResponse><MessageSchemaVersion>1.0</MessageSchemaVersion><TokenValue>abc&amp;def</TokenValue></CreateControlChannelResponse>";
        assert_eq!(extract_token(xml).as_deref(), Some("abc&def"));
    }

    #[test]
    fn token_hostile_inputs() {
        assert_eq!(extract_token(b""), None);
        assert_eq!(
            extract_token(b"<X><MessageSchemaVersion>1.0</MessageSchemaVersion></X>"),
            None
        );
        assert_eq!(extract_token(b"<TokenValue>unterminated"), None);
        assert_eq!(extract_token(b"</TokenValue><TokenValue>"), None);
        assert_eq!(extract_token(b"<TokenValue></TokenValue>"), None);
        assert_eq!(extract_token(&[0xff, 0xfe, 0x00]), None);
        let mut huge = b"<X><TokenValue>".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
        huge.extend_from_slice(b"</TokenValue></X>");
        assert_eq!(extract_token(&huge), None);
        let mut long = b"<TokenValue>".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9000));
        long.extend_from_slice(b"</TokenValue>");
        assert_eq!(extract_token(&long), None);
    }

    #[test]
    fn os_release_parsed() {
        let (n, v) = parse_os_release("NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\n");
        assert_eq!((n.as_str(), v.as_str()), ("Ubuntu", "24.04"));
    }

    #[test]
    fn host_facts_do_not_panic() {
        assert!(!hostname().is_empty());
        assert!(!ip_address().is_empty());
        assert!(current_user().is_some());
    }
}
