//! A tiny blocking HTTP/1.1 client over a plain `TcpStream` (one request per connection), and a
//! reader for the Prometheus text format: enough to check the broker's HTTP endpoint without
//! trusting an HTTP library to paper over mistakes.

use base64::Engine;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }
}

/// Sends one request; `auth` adds `Authorization: Basic`. Errors are I/O errors (for example
/// a refused connection once the broker is gone).
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> io::Result<Response> {
    send(addr, method, path, auth, None)
}

/// Sends one request with `body` (JSON) when given.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: Option<&str>,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some((user, password)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        head.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or(""));
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw, method == "HEAD").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed response: {}", String::from_utf8_lossy(&raw)),
        )
    })
}

fn parse(raw: &[u8], head_request: bool) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = &raw[split + 4..];
    // RFC 9110 section 6.4.1: no body after HEAD, 204 or 304 whatever the headers say.
    let bodiless = head_request || status == 204 || status == 304;
    // The broker sends whole bodies with a length; a chunked body would fail this check.
    let length = match headers.iter().find(|(n, _)| n == "content-length") {
        _ if bodiless => 0,
        Some((_, v)) => v.parse::<usize>().ok()?,
        None => return None,
    };
    if body.len() < length {
        return None;
    }
    body = &body[..length];
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

pub fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<(&str, &str)>) -> Response {
    try_request(addr, method, path, auth)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, None)
}

/// A management API request as guest (who may connect from loopback).
pub fn api(addr: SocketAddr, method: &str, path: &str) -> Response {
    request(addr, method, path, Some(("guest", "guest")))
}

/// A management API request as guest with a JSON body.
pub fn api_with(addr: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    send(addr, method, path, Some(("guest", "guest")), Some(body))
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// One `/metrics` response, by series: `name{labels}` exactly as exposed.
pub struct Scrape {
    pub text: String,
    series: HashMap<String, f64>,
}

impl Scrape {
    pub fn value(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }

    /// Every sample line as (series, value), in order.
    pub fn samples(&self) -> impl Iterator<Item = (&str, &str)> {
        self.text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
    }
}

pub fn scrape(addr: SocketAddr) -> Scrape {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    let content_type = response.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content-type {content_type}"
    );
    let mut scrape = Scrape {
        text: response.body,
        series: HashMap::new(),
    };
    let parsed: Vec<(String, f64)> = scrape
        .samples()
        .map(|(series, value)| {
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad sample value in `{series} {v}`")),
            };
            (series.to_string(), value)
        })
        .collect();
    scrape.series.extend(parsed);
    scrape
}

/// The series of one queue's metric, labels in the broker's order.
pub fn queue_series(metric: &str, queue: &str) -> String {
    format!("{metric}{{vhost=\"/\",queue=\"{queue}\"}}")
}

/// Waits until `series` shows `expected`; panics with the last value seen otherwise.
pub fn wait_for_metric(addr: SocketAddr, series: &str, expected: f64) {
    let mut last = None;
    let reached = rosetta_tests::wait_until(crate::support::WAIT, || {
        last = scrape(addr).value(series);
        last == Some(expected)
    });
    assert!(reached, "{series}: expected {expected}, last saw {last:?}");
}
