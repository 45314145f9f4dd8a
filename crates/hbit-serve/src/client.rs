//! A small blocking HTTP/1.1 client for loopback use: the server's tests and `hbit bench serve`
//! (which must time each streamed token as it arrives, so it reads server-sent events off the
//! socket itself). One request per connection; chunked and sized bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> std::io::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(std::io::Error::other)
    }
}

/// Largest body or chunk this client accepts (a broken server cannot make it allocate more).
const MAX_BODY_BYTES: usize = 256 << 20;

fn bad(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

/// An open response whose body is still arriving.
pub struct OpenResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Content-Length of a body that is not chunked.
    left: Option<usize>,
    finished: bool,
}

/// Sends a request with `body` (JSON when given) and reads the status line and headers.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<OpenResponse> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    request.push_str("\r\n");
    let mut writer = stream.try_clone()?;
    writer.write_all(request.as_bytes())?;
    if let Some(b) = body {
        writer.write_all(b)?;
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed inside the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let left = find("content-length").and_then(|v| v.parse().ok());
    Ok(OpenResponse {
        status,
        headers,
        reader,
        chunked,
        left,
        finished: false,
    })
}

impl OpenResponse {
    /// The next bytes of the body (an empty vector at its end).
    pub fn next_bytes(&mut self) -> std::io::Result<Vec<u8>> {
        if self.finished {
            return Ok(Vec::new());
        }
        let mut buf = Vec::new();
        if self.chunked {
            let mut size = String::new();
            if self.reader.read_line(&mut size)? == 0 {
                return Err(bad("connection closed inside a chunked body"));
            }
            let size = size.trim();
            let n = usize::from_str_radix(size.split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                self.finished = true;
                return Ok(buf);
            }
            if n > MAX_BODY_BYTES {
                return Err(bad(format!("a chunk of {n} bytes")));
            }
            buf.resize(n, 0);
            self.reader.read_exact(&mut buf)?;
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf)?;
            return Ok(buf);
        }
        match self.left {
            Some(n) if n > MAX_BODY_BYTES => return Err(bad(format!("a body of {n} bytes"))),
            Some(n) => {
                buf.resize(n, 0);
                self.reader.read_exact(&mut buf)?;
            }
            None => {
                self.reader.read_to_end(&mut buf)?;
            }
        }
        self.finished = true;
        Ok(buf)
    }

    /// The rest of the body.
    pub fn read_all(mut self) -> std::io::Result<HttpResponse> {
        let mut body = Vec::new();
        loop {
            let piece = self.next_bytes()?;
            if piece.is_empty() {
                break;
            }
            body.extend_from_slice(&piece);
        }
        Ok(HttpResponse {
            status: self.status,
            headers: self.headers,
            body,
        })
    }

    /// Server-sent events' `data:` payloads as they arrive, each with its arrival time.
    pub fn events(self) -> SseEvents {
        SseEvents {
            response: self,
            pending: Vec::new(),
        }
    }
}

pub struct SseEvents {
    response: OpenResponse,
    pending: Vec<u8>,
}

impl Iterator for SseEvents {
    type Item = std::io::Result<(Instant, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(end) = find_blank_line(&self.pending) {
                let event: Vec<u8> = self.pending.drain(..end.1).collect();
                let text = String::from_utf8_lossy(&event[..end.0]).to_string();
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue; // a comment or keep-alive
                }
                return Some(Ok((Instant::now(), data.join("\n"))));
            }
            match self.response.next_bytes() {
                Ok(b) if b.is_empty() => return None,
                Ok(b) => self.pending.extend_from_slice(&b),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// (end of the event's text, end of its terminating blank line) in `buf`.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, i + 2));
        }
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, i + 4));
        }
    }
    None
}

/// A whole request and response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> std::io::Result<HttpResponse> {
    send(addr, method, path, headers, body, Duration::from_secs(60))?.read_all()
}

/// `POST path` with a JSON body.
pub fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> std::io::Result<HttpResponse> {
    request(addr, "POST", path, &[], Some(body.to_string().as_bytes()))
}
