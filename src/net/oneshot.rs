//! One small HTTP/1.1 exchange on a fresh connection (`Connection: close`), for rare control
//! requests whose answers are small: `orca purge` fanning out to peers, and the `orca
//! warm/purge/inspect` subcommands calling the ops port. Chunk bytes never go this way.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer read (a header and a JSON body).
pub const MAX_ANSWER: usize = 4 << 20;

/// An answer: its status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (at most [`MAX_ANSWER`] bytes with the header).
    pub body: Vec<u8>,
}

/// Why an exchange failed (no answer: refused, cut, timed out, unreadable).
#[derive(Debug, thiserror::Error)]
pub enum OneshotError {
    /// Connecting, writing or reading failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer is not HTTP/1.x or is larger than [`MAX_ANSWER`].
    #[error("bad answer: {0}")]
    Bad(String),
}

/// Sends `method path` with `headers` (and no body) to `authority` (`host:port`) and reads the
/// answer, all within `deadline`.
///
/// # Errors
///
/// No complete answer within `deadline`.
pub async fn request(
    authority: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    deadline: Duration,
) -> Result<Answer, OneshotError> {
    tokio::time::timeout(
        deadline,
        exchange(authority, method, path_and_query, headers),
    )
    .await
    .map_err(|_| OneshotError::Timeout(deadline))?
}

async fn exchange(
    authority: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, OneshotError> {
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(|e| OneshotError::Io("connect", e))?;
    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| OneshotError::Io("write", e))?;
    let mut buf = Vec::new();
    let mut piece = [0u8; 16 * 1024];
    loop {
        let n = stream
            .read(&mut piece)
            .await
            .map_err(|e| OneshotError::Io("read", e))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&piece[..n]);
        if buf.len() > MAX_ANSWER {
            return Err(OneshotError::Bad(format!("over {MAX_ANSWER} bytes")));
        }
        if let Some(answer) = parse(&buf)? {
            return Ok(answer);
        }
    }
    parse_at_close(&buf)?
        .ok_or_else(|| OneshotError::Bad("the connection closed mid-answer".into()))
}

/// A complete answer in `buf`, `None` while more is needed. Without `Content-Length`, the body
/// runs to the end of the connection.
fn parse(buf: &[u8]) -> Result<Option<Answer>, OneshotError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| OneshotError::Bad(format!("status line {status_line:?}")))?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let body = &buf[end + 4..];
    match length {
        Some(len) if body.len() >= len => Ok(Some(Answer {
            status,
            body: body[..len].to_vec(),
        })),
        Some(_) => Ok(None),
        None => Ok(None),
    }
}

/// The answer when the connection closed: a body without `Content-Length` ends there.
fn parse_at_close(buf: &[u8]) -> Result<Option<Answer>, OneshotError> {
    if let Some(a) = parse(buf)? {
        return Ok(Some(a));
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    if head.to_ascii_lowercase().contains("content-length:") {
        return Ok(None);
    }
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| OneshotError::Bad("status line".into()))?;
    Ok(Some(Answer {
        status,
        body: buf[end + 4..].to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_by_length_or_at_close() {
        let full = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let a = parse(full).unwrap().unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"ok"[..]));
        assert!(parse(&full[..full.len() - 1]).unwrap().is_none());
        let open = b"HTTP/1.1 403 Forbidden\r\n\r\nno";
        assert!(parse(open).unwrap().is_none());
        assert_eq!(parse_at_close(open).unwrap().unwrap().body, b"no");
        assert!(parse(b"SSH-2.0\r\n\r\n").is_err());
    }
}
