//! What a client's first bytes say about the name it wants: the SNI of a TLS ClientHello, or
//! the `Host` of an HTTP/1 request. Read-only parsing of bytes the relay holds; nothing is
//! decrypted or rewritten.
//!
//! Hand-written rather than rustls' `Acceptor`: the relay must forward the very bytes it read,
//! unchanged, to the upstream, and needs only the one extension; the parser below is bounded
//! by the slice and cannot fail open (anything it does not understand is `Garbled`).

/// What the first bytes are.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// More bytes are needed to decide.
    Incomplete,
    /// A TLS ClientHello with this server name (lower case), or none.
    Tls(Option<String>),
    /// An HTTP/1 request with this `Host` (lower case, port removed), or none; the method.
    Http {
        method: String,
        host: Option<String>,
    },
    /// Looks like TLS or HTTP but is malformed.
    Garbled,
    /// Neither: an opaque protocol (SSH, git://, …).
    Opaque,
}

/// Classifies `buf`, the bytes received so far.
pub fn sniff(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::Incomplete;
    }
    if buf[0] == 0x16 {
        return tls(buf);
    }
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == buf.len() && method_len < 16 {
        return Sniffed::Incomplete;
    }
    if (1..16).contains(&method_len) && buf[method_len] == b' ' {
        return http(buf, method_len);
    }
    Sniffed::Opaque
}

fn http(buf: &[u8], method_len: usize) -> Sniffed {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return Sniffed::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Sniffed::Garbled;
    };
    let method = head[..method_len].to_string();
    let mut host = None;
    for line in head.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            return Sniffed::Garbled;
        };
        if k.trim().eq_ignore_ascii_case("host") {
            if host.is_some() {
                // Two Host headers: which one the upstream believes is not ours to guess.
                return Sniffed::Garbled;
            }
            let v = v.trim();
            let name = match v.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => v,
            };
            host = Some(name.trim_end_matches('.').to_ascii_lowercase());
        }
    }
    Sniffed::Http { method, host }
}

/// A cursor over a slice that reports "need more" rather than failing.
struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|s| s[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|s| u16::from_be_bytes([s[0], s[1]]) as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|s| ((s[0] as usize) << 16) | ((s[1] as usize) << 8) | s[2] as usize)
    }
}

/// Only the first record is read: a ClientHello split across records (possible, rare in
/// practice) is `Garbled`, which the relay refuses.
fn tls(buf: &[u8]) -> Sniffed {
    if buf.len() < 5 {
        return Sniffed::Incomplete;
    }
    if buf[1] != 3 {
        return Sniffed::Garbled;
    }
    let record_len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if buf.len() < 5 + record_len {
        return Sniffed::Incomplete;
    }
    match client_hello_sni(&buf[5..5 + record_len]) {
        Some(sni) => Sniffed::Tls(sni),
        None => Sniffed::Garbled,
    }
}

/// The server name of a ClientHello handshake message (`Some(None)`: no SNI extension).
fn client_hello_sni(msg: &[u8]) -> Option<Option<String>> {
    let mut c = Cur { b: msg, at: 0 };
    if c.u8()? != 1 {
        return None; // not a ClientHello
    }
    let len = c.u24()?;
    let body = c.take(len)?;
    let mut c = Cur { b: body, at: 0 };
    c.take(2 + 32)?; // version, random
    let sid = c.u8()?;
    c.take(sid)?;
    let suites = c.u16()?;
    c.take(suites)?;
    let comp = c.u8()?;
    c.take(comp)?;
    if c.at == body.len() {
        return Some(None); // no extensions
    }
    let ext_len = c.u16()?;
    let exts = c.take(ext_len)?;
    let mut c = Cur { b: exts, at: 0 };
    while c.at < exts.len() {
        let ty = c.u16()?;
        let len = c.u16()?;
        let data = c.take(len)?;
        if ty == 0 {
            let mut d = Cur { b: data, at: 0 };
            let list = d.u16()?;
            let list = d.take(list)?;
            let mut l = Cur { b: list, at: 0 };
            while l.at < list.len() {
                let kind = l.u8()?;
                let n = l.u16()?;
                let name = l.take(n)?;
                if kind == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
                }
            }
            return None;
        }
    }
    Some(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ClientHello record naming `sni` (or no SNI extension).
    pub(crate) fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let n = name.as_bytes();
            let mut list = vec![0u8];
            list.extend((n.len() as u16).to_be_bytes());
            list.extend(n);
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend(list);
            exts.extend(0u16.to_be_bytes());
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(data);
        }
        // An unrelated extension (supported_groups) before the end.
        exts.extend([0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one suite
        body.extend([1, 0]); // null compression
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut hs = vec![1];
        hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend(body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn tls_server_name_is_read_from_the_client_hello() {
        let hello = client_hello(Some("PyPI.org"));
        assert_eq!(sniff(&hello), Sniffed::Tls(Some("pypi.org".into())));
        assert_eq!(sniff(&client_hello(None)), Sniffed::Tls(None));
        for cut in [1, 4, 5, 20, hello.len() - 1] {
            assert_eq!(sniff(&hello[..cut]), Sniffed::Incomplete, "{cut}");
        }
        let mut bad = hello.clone();
        bad[5] = 2; // ServerHello
        assert_eq!(sniff(&bad), Sniffed::Garbled);
        // A length pointing past the record never reads beyond it.
        let mut lying = hello.clone();
        let l = lying.len();
        lying[l - 9] = 0xff;
        assert!(matches!(sniff(&lying), Sniffed::Garbled | Sniffed::Tls(_)));
    }

    #[test]
    fn http_host_is_read_without_its_port() {
        let r = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: Example.COM:8080\r\n\r\n";
        assert_eq!(
            sniff(r),
            Sniffed::Http {
                method: "GET".into(),
                host: Some("example.com".into())
            }
        );
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: a"), Sniffed::Incomplete);
        assert_eq!(sniff(b"GE"), Sniffed::Incomplete);
        assert_eq!(
            sniff(b"GET / HTTP/1.0\r\n\r\n"),
            Sniffed::Http {
                method: "GET".into(),
                host: None
            }
        );
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n"),
            Sniffed::Garbled
        );
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.2\r\n"), Sniffed::Opaque);
        assert_eq!(sniff(b"\x00\x0egit-upload-pack"), Sniffed::Opaque);
    }
}
