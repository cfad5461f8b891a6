//! `--metrics ADDR`: the stack's counters in Prometheus text exposition over plain HTTP on a
//! kernel socket (so scraping works whatever the stack is doing).
use std::{
    io::{Read, Write},
    net::TcpListener,
    time::Duration,
};

use xsk_stack::StatsSource;

/// Serves `GET /metrics` until the stack stops.
pub fn serve(listener: TcpListener, source: StatsSource) {
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 4096];
        let mut n = 0;
        // Read until the end of the request head (bounded).
        while n < buf.len() {
            match c.read(&mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let path = match req.parse(&buf[..n]) {
            Ok(httparse::Status::Complete(_)) => req.path.unwrap_or(""),
            _ => "",
        };
        let (status, body) = match (path, source.stats()) {
            ("/metrics", Some(s)) => ("200 OK", s.to_prometheus()),
            ("/metrics", None) => ("503 Service Unavailable", "stack stopped\n".to_string()),
            _ => ("404 Not Found", "try /metrics\n".to_string()),
        };
        let _ = write!(
            c,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if source.stats().is_none() {
            break;
        }
    }
}
