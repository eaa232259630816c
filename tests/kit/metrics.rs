//! Reading one series from the broker's `/metrics` (the HTTP endpoint, see
//! [`BrokerBuilder::with_http`](crate::BrokerBuilder::with_http)), without authentication.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a scrape may take.
const SCRAPE_WAIT: Duration = Duration::from_secs(10);

/// The value of `series` (`name` or `name{labels}`, exactly as exposed) on the broker's
/// `/metrics` at `http`, or `None` if it is not there. Panics unless the scrape succeeds.
pub fn metric(http: SocketAddr, series: &str) -> Option<f64> {
    let mut stream = TcpStream::connect(http).unwrap_or_else(|e| panic!("connect to {http}: {e}"));
    stream
        .set_read_timeout(Some(SCRAPE_WAIT))
        .expect("read timeout");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send the scrape request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the scrape");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "/metrics answered {}",
        response.lines().next().unwrap_or("nothing")
    );
    response.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(
            value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad sample `{line}`")),
        )
    })
}
