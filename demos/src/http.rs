//! The HTTP/1.1 part of http-hello: parse requests with httparse, answer `GET /` with a small
//! fixed body and 404 otherwise, keep connections alive as HTTP/1.0 and 1.1 say.

/// The body of `GET /`.
pub const HELLO: &[u8] = b"Hello from the AF_XDP stack!\n";
/// Requests with larger headers are refused.
pub const MAX_HEADER: usize = 8 * 1024;

/// What to do with the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Need more bytes.
    More,
    /// Send `response`, drop `consumed` bytes, and close afterwards if `close`.
    Respond {
        response: Vec<u8>,
        consumed: usize,
        close: bool,
    },
}

fn response(status: &str, body: &[u8], keep_alive: bool, http10: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nServer: xsk-stack-http-hello\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    if !keep_alive {
        r.extend_from_slice(b"Connection: close\r\n");
    } else if http10 {
        r.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// Looks at the start of `buf` for one complete request.
pub fn step(buf: &[u8]) -> Step {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEADER {
                let response = response("431 Request Header Fields Too Large", b"", false, false);
                return Step::Respond {
                    response,
                    consumed: buf.len(),
                    close: true,
                };
            }
            Step::More
        }
        Err(_) => Step::Respond {
            response: response("400 Bad Request", b"bad request\n", false, false),
            consumed: buf.len(),
            close: true,
        },
        Ok(httparse::Status::Complete(head)) => {
            let http10 = req.version == Some(0);
            let mut keep_alive = !http10;
            let mut body_len = 0usize;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("connection") {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if v.contains("close") {
                        keep_alive = false;
                    } else if v.contains("keep-alive") {
                        keep_alive = true;
                    }
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    match std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok())
                    {
                        Some(n) if n <= 1 << 20 => body_len = n,
                        _ => {
                            let response =
                                response("400 Bad Request", b"bad content-length\n", false, false);
                            return Step::Respond {
                                response,
                                consumed: buf.len(),
                                close: true,
                            };
                        }
                    }
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    let response = response(
                        "501 Not Implemented",
                        b"chunked bodies are not supported\n",
                        false,
                        false,
                    );
                    return Step::Respond {
                        response,
                        consumed: buf.len(),
                        close: true,
                    };
                }
            }
            if buf.len() < head + body_len {
                return Step::More;
            }
            let (status, body) = match (req.method, req.path) {
                (Some("GET") | Some("HEAD"), Some("/")) => ("200 OK", HELLO),
                (Some("GET") | Some("HEAD"), _) => ("404 Not Found", &b"not found\n"[..]),
                _ => ("405 Method Not Allowed", &b"method not allowed\n"[..]),
            };
            let mut response = response(status, body, keep_alive, http10);
            if req.method == Some("HEAD") {
                response.truncate(response.len() - body.len());
            }
            Step::Respond {
                response,
                consumed: head + body_len,
                close: !keep_alive,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &Step) -> String {
        match s {
            Step::Respond { response, .. } => String::from_utf8_lossy(response).into_owned(),
            Step::More => "MORE".into(),
        }
    }

    #[test]
    fn get_root_keeps_alive_with_content_length() {
        let s = step(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /");
        let t = text(&s);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(t.contains(&format!("Content-Length: {}\r\n", HELLO.len())));
        assert!(t.ends_with(std::str::from_utf8(HELLO).unwrap()));
        assert!(matches!(
            s,
            Step::Respond {
                consumed: 27,
                close: false,
                ..
            }
        ));
    }

    #[test]
    fn other_paths_are_404_and_http10_closes() {
        let s = step(b"GET /nope HTTP/1.0\r\n\r\n");
        assert!(text(&s).starts_with("HTTP/1.1 404 Not Found"));
        assert!(matches!(s, Step::Respond { close: true, .. }));
        let s = step(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(text(&s).contains("Connection: keep-alive"));
        assert!(matches!(s, Step::Respond { close: false, .. }));
    }

    #[test]
    fn partial_garbage_and_oversized_requests() {
        assert_eq!(step(b"GET / HTTP/1.1\r\nHost:"), Step::More);
        assert!(text(&step(b"\x00\x01 garbage\r\n\r\n")).starts_with("HTTP/1.1 400"));
        let big = [
            b"GET / HTTP/1.1\r\nX: ".as_slice(),
            &vec![b'a'; MAX_HEADER + 1],
        ]
        .concat();
        assert!(text(&step(&big)).starts_with("HTTP/1.1 431"));
        assert!(text(&step(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"))
            .starts_with("HTTP/1.1 400"));
        assert!(text(&step(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ))
        .starts_with("HTTP/1.1 501"));
    }

    /// Seeded property test (stable-Rust stand-in for cargo-fuzz): any bytes, and mutations of
    /// real requests, give a response or "more", never a panic, and never consume more than given.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seeds: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
            b"POST /x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
            b"HEAD / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for i in 0..50_000 {
            let mut buf: Vec<u8> = if i % 2 == 0 {
                let s = seeds[(next() % 3) as usize].to_vec();
                let mut s = s;
                for _ in 0..1 + next() % 4 {
                    let at = (next() % s.len() as u64) as usize;
                    s[at] = next() as u8;
                }
                s.truncate((next() % (s.len() as u64 + 1)) as usize);
                s
            } else {
                (0..next() % 200).map(|_| next() as u8).collect()
            };
            if let Step::Respond {
                consumed, response, ..
            } = step(&buf)
            {
                assert!(consumed <= buf.len());
                assert!(response.starts_with(b"HTTP/1.1 "));
            }
            buf.clear();
        }
    }

    #[test]
    fn bodies_are_waited_for_and_skipped() {
        assert_eq!(
            step(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab"),
            Step::More
        );
        let s = step(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdGET");
        assert!(text(&s).starts_with("HTTP/1.1 405"));
        assert!(matches!(s, Step::Respond { consumed: 42, .. }));
    }
}
