//! Request smuggling and framing, over raw TLS sockets.
//!
//! The backend here parses as leniently as the weakest real backend might (first
//! `Transfer-Encoding: chunked` wins, else the first `Content-Length`, bare LF ends
//! a line) and records the raw bytes of every request it sees. An attack works when
//! such a backend sees a request the client did not send as one: here, any request
//! for `/smuggled`, or more requests than the client meant. For every vector the
//! gateway must refuse the request, or pass on one normalized request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{DEADLINE, LoopbackServer, TestGateway};

/// What a lenient backend answers each request with, unless told otherwise.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A backend recording each request's raw bytes, answering each with `response`.
struct RawBackend {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    _server: LoopbackServer,
}

impl RawBackend {
    fn start(response: &'static [u8]) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let server =
            LoopbackServer::start(move |stream| serve_leniently(stream, log.clone(), response));
        Self {
            address: server.address,
            requests,
            _server: server,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("log")
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
}

/// Where a request's head ends (after the blank line), accepting bare LFs.
fn head_end(buffer: &[u8]) -> Option<usize> {
    (0..buffer.len()).find_map(|i| {
        if buffer[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buffer[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if buffer[i..].starts_with(b"\n\r\n") {
            Some(i + 3)
        } else {
            None
        }
    })
}

/// The length of a chunked body at the start of `body`, if complete.
fn chunked_length(body: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = body[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size_text = String::from_utf8_lossy(&body[at..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers end with an empty line.
            let end = body[at..].windows(2).position(|w| w == b"\r\n")? + at;
            if end == at {
                return Some(at + 2);
            }
            at = end + 2;
            continue;
        }
        at = at.checked_add(size)?.checked_add(2)?;
        if at > body.len() {
            return None;
        }
    }
}

/// How long the request at the start of `buffer` is, if all of it has arrived.
fn lenient_length(buffer: &[u8]) -> Option<usize> {
    let end = head_end(buffer)?;
    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
    let mut chunked = false;
    let mut length = None;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim() {
            "transfer-encoding" if value.contains("chunked") => chunked = true,
            "content-length" if length.is_none() => length = value.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    if chunked {
        return chunked_length(&buffer[end..]).map(|n| end + n);
    }
    let total = end + length.unwrap_or(0);
    (buffer.len() >= total).then_some(total)
}

async fn serve_leniently(
    mut stream: tokio::net::TcpStream,
    log: Arc<Mutex<Vec<Vec<u8>>>>,
    response: &'static [u8],
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while let Some(length) = lenient_length(&buffer) {
            let request: Vec<u8> = buffer.drain(..length).collect();
            log.lock().expect("log").push(request);
            if stream.write_all(response).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                // Whatever is left was a request too, to a lenient reader.
                if !buffer.is_empty() {
                    log.lock().expect("log").push(std::mem::take(&mut buffer));
                }
                return;
            }
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

fn gateway(backend: &RawBackend) -> TestGateway {
    TestGateway::start(&format!(
        r#"[backends.raw]
address = "{}"
connect_timeout = "500ms"
read_timeout = "2s"

[rate_limits.classes]
once = "1/h per ip"

[[route]]
id = "private"
path_prefix = "/private"
backend = "raw"
auth = "token"

[[route]]
id = "limited"
path_prefix = "/limited"
backend = "raw"
auth = "public"
rate_limit = ["once"]

[[route]]
id = "all"
path_prefix = "/"
backend = "raw"
auth = "public"
"#,
        backend.address
    ))
}

/// Sends `bytes` on one TLS connection; returns everything the gateway answered
/// until it closed the connection or was quiet for half a second, and whether it
/// closed the connection.
async fn exchange_and_close(gateway: &TestGateway, bytes: &[u8]) -> (String, bool) {
    exchange_waiting(gateway, bytes, Duration::from_millis(500)).await
}

/// [`exchange_and_close`], waiting up to `quiet` for each further byte.
async fn exchange_waiting(gateway: &TestGateway, bytes: &[u8], quiet: Duration) -> (String, bool) {
    let mut stream = gateway.tls().connect_http1().await;
    stream.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + DEADLINE;
    let closed = loop {
        assert!(Instant::now() < deadline, "the gateway kept talking");
        match tokio::time::timeout(quiet, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => break true,
            Err(_) => break false,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// The status codes of the responses in `answer`, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .match_indices("HTTP/1.")
        .filter(|(at, _)| {
            *at == 0 || answer[..*at].ends_with('\n') || answer[..*at].ends_with("ok")
        })
        .filter_map(|(at, _)| answer[at..].split(' ').nth(1)?.parse().ok())
        .collect()
}

/// The smuggled request hidden in each vector.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// A request with `headers` and `body`, followed by nothing: the body holds the
/// smuggled request when the vector wants it there.
fn post(headers: &str, body: &str) -> String {
    format!("POST /upload HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n{body}")
}

/// Chunked framing that ends before the smuggled request.
fn chunked_then_smuggled() -> String {
    format!("0\r\n\r\n{SMUGGLED}")
}

struct Vector {
    name: &'static str,
    bytes: String,
    expect: Expect,
}

/// What the gateway must do beyond never letting the smuggled request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 400, and the backend sees nothing.
    Refused,
    /// A 4xx answer; the backend may have seen the head before the body went bad.
    RefusedInTheBody,
    /// Refused, or forwarded as one normalized request and answered.
    Either,
    /// Answered by the gateway itself with this status; the backend sees nothing.
    Denied(u16),
    /// 401 or 429 for the first request, then either the second (`/pipelined`)
    /// forwarded and answered in order, or the connection closed with nothing
    /// forwarded.
    Pipelined,
}

fn vectors() -> Vec<Vector> {
    let smuggling_body = chunked_then_smuggled();
    let cl = smuggling_body.len();
    let mut vectors = vec![
        // RFC 9112 §6.3: the chunked framing wins, Content-Length is dropped, and
        // the connection closes after the answer, so the rest is never read.
        Vector {
            name: "CL+TE",
            bytes: post(
                &format!("Content-Length: {cl}\r\nTransfer-Encoding: chunked\r\n"),
                &smuggling_body,
            ),
            expect: Expect::Either,
        },
        Vector {
            name: "TE+CL",
            bytes: post(
                &format!("Transfer-Encoding: chunked\r\nContent-Length: {cl}\r\n"),
                &smuggling_body,
            ),
            expect: Expect::Either,
        },
        Vector {
            name: "duplicate Content-Length, conflicting",
            bytes: post("Content-Length: 0\r\nContent-Length: 44\r\n", SMUGGLED),
            expect: Expect::Refused,
        },
        Vector {
            name: "Content-Length list",
            bytes: post("Content-Length: 0, 44\r\n", SMUGGLED),
            expect: Expect::Refused,
        },
        Vector {
            name: "chunk size overflow",
            bytes: post(
                "Transfer-Encoding: chunked\r\n",
                &format!("10000000000000000000001\r\nx\r\n0\r\n\r\n{SMUGGLED}"),
            ),
            expect: Expect::RefusedInTheBody,
        },
        Vector {
            name: "NUL in a header value",
            bytes: format!("GET /a HTTP/1.1\r\nHost: localhost\r\nX-A: a\0b\r\n\r\n{SMUGGLED}"),
            expect: Expect::Refused,
        },
        Vector {
            name: "CR in a header value",
            bytes: format!("GET /a HTTP/1.1\r\nHost: localhost\r\nX-A: a\rb\r\n\r\n{SMUGGLED}"),
            expect: Expect::Refused,
        },
        Vector {
            name: "space before the colon",
            bytes: post(
                &format!("Content-Length: {cl}\r\nTransfer-Encoding : chunked\r\n"),
                &smuggling_body,
            ),
            expect: Expect::Refused,
        },
    ];
    for (name, value, expect) in [
        ("TE xchunked", "xchunked", Expect::Refused),
        ("TE chunked, identity", "chunked, identity", Expect::Refused),
        ("TE identity, chunked", "identity, chunked", Expect::Refused),
        ("TE quoted", "\"chunked\"", Expect::Refused),
        ("TE chunked twice", "chunked, chunked", Expect::Refused),
        // Legal spellings of `chunked`: normalized like CL+TE.
        ("TE tab", "\tchunked", Expect::Either),
        ("TE upper case", "CHUNKED", Expect::Either),
    ] {
        vectors.push(Vector {
            name,
            bytes: post(
                &format!("Content-Length: {cl}\r\nTransfer-Encoding: {value}\r\n"),
                &smuggling_body,
            ),
            expect,
        });
    }
    for (name, value) in [
        ("Content-Length plus sign", "+44"),
        ("Content-Length negative", "-1"),
        ("Content-Length hex", "0x2c"),
        ("Content-Length two numbers", "0 44"),
    ] {
        vectors.push(Vector {
            name,
            bytes: post(&format!("Content-Length: {value}\r\n"), SMUGGLED),
            expect: Expect::Refused,
        });
    }
    // Not necessarily errors, but never two requests at the backend.
    vectors.extend([
        Vector {
            name: "duplicate Content-Length, same value",
            bytes: post("Content-Length: 44\r\nContent-Length: 44\r\n", SMUGGLED),
            expect: Expect::Either,
        },
        Vector {
            name: "second TE header",
            bytes: post(
                &format!(
                    "Content-Length: {cl}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"
                ),
                &smuggling_body,
            ),
            expect: Expect::Either,
        },
        Vector {
            name: "bare LF line ends",
            bytes: format!(
                "POST /upload HTTP/1.1\nHost: localhost\nContent-Length: {}\n\n{SMUGGLED}",
                SMUGGLED.len()
            ),
            expect: Expect::Either,
        },
        Vector {
            name: "obs-fold",
            bytes: post(
                &format!("X-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: {cl}\r\n"),
                &smuggling_body,
            ),
            expect: Expect::Either,
        },
        Vector {
            name: "HTTP/1.0 with Transfer-Encoding",
            bytes: format!(
                "POST /upload HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: {cl}\r\n\r\n{smuggling_body}"
            ),
            expect: Expect::Either,
        },
        Vector {
            name: "Expect: 100-continue with the body sent early",
            bytes: post(
                &format!("Expect: 100-continue\r\nContent-Length: {}\r\n", SMUGGLED.len()),
                SMUGGLED,
            ),
            expect: Expect::Either,
        },
        Vector {
            name: "Upgrade with an early payload",
            bytes: format!(
                "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n{SMUGGLED}"
            ),
            expect: Expect::Either,
        },
        Vector {
            name: "body after a gateway 401",
            bytes: format!(
                "POST /private/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
            expect: Expect::Denied(401),
        },
        Vector {
            name: "a pipelined request after a gateway 401",
            bytes: "GET /private/x HTTP/1.1\r\nHost: localhost\r\n\r\nGET /pipelined HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
            expect: Expect::Pipelined,
        },
        // `/limited` allows one request per hour: the runner spends it first.
        Vector {
            name: "body after a gateway 429",
            bytes: format!(
                "POST /limited/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
            expect: Expect::Denied(429),
        },
        Vector {
            name: "chunked body after a gateway 429",
            bytes: format!(
                "POST /limited/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
            expect: Expect::Denied(429),
        },
        Vector {
            name: "a pipelined request after a gateway 429",
            bytes: "GET /limited/x HTTP/1.1\r\nHost: localhost\r\n\r\nGET /pipelined HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
            expect: Expect::Pipelined,
        },
    ]);
    vectors
}

#[tokio::test]
async fn framing_attacks_are_refused_or_normalized_and_never_smuggle_a_request() {
    let mut failures = Vec::new();
    for vector in vectors() {
        // A backend and gateway per vector: a poisoned connection cannot leak into
        // the next one, and the backend's log is this vector's alone.
        let backend = RawBackend::start(OK);
        let gateway = gateway(&backend);
        let spent = if vector.bytes.contains(" /limited/") {
            let reply = gateway.tls().get("/limited/spend", "").await;
            assert_eq!(reply.status, 200, "{}: spending the limit", vector.name);
            backend.requests().len()
        } else {
            0
        };
        let (answer, closed) = exchange_and_close(&gateway, vector.bytes.as_bytes()).await;
        let seen = backend.requests().split_off(spent);
        let statuses = statuses(&answer);
        // A request *line* for it: the smuggled text may travel as a body.
        let smuggled = seen.iter().any(|r| r.starts_with("GET /smuggled"));
        let first = statuses.first().copied();
        let client_error = first.is_some_and(|s| (400..500).contains(&s));
        let framed_twice = seen.iter().any(|request| {
            let head = request
                .split("\r\n\r\n")
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            let lengths = head.matches("\ncontent-length:").count();
            let encodings = head.matches("\ntransfer-encoding:").count();
            lengths > 1 || encodings > 1 || (lengths > 0 && encodings > 0)
        });
        let problem = if smuggled {
            Some("the backend saw the smuggled request".to_owned())
        } else if framed_twice {
            Some("a request reached the backend with two framings".to_owned())
        } else if seen.len() > 1 {
            Some(format!("the backend saw {} requests", seen.len()))
        } else if vector.expect == Expect::Refused && !(first == Some(400) && seen.is_empty()) {
            Some("not refused before the backend".to_owned())
        } else if let Expect::Denied(status) = vector.expect
            && !(first == Some(status) && seen.is_empty())
        {
            Some(format!("not answered {status} by the gateway"))
        } else if vector.expect == Expect::RefusedInTheBody && !client_error {
            Some("not refused".to_owned())
        } else if vector.expect == Expect::Pipelined
            && !(matches!(first, Some(401 | 429))
                && ((statuses.len() == 2
                    && statuses[1] == 200
                    && seen.len() == 1
                    && seen[0].starts_with("GET /pipelined "))
                    || (statuses.len() == 1 && seen.is_empty() && closed)))
        {
            Some("the pipelined request was not answered in order".to_owned())
        } else if first.is_none() && !seen.is_empty() {
            Some("forwarded, but the client got no answer".to_owned())
        } else {
            None
        };
        eprintln!(
            "{:<48} client {statuses:?}, backend saw {} request(s){}",
            vector.name,
            seen.len(),
            if closed { ", closed" } else { "" }
        );
        if let Some(problem) = problem {
            failures.push(format!(
                "{}: {problem}; client got {statuses:?}; backend saw {seen:?}",
                vector.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Responses a broken or hostile backend might send, and a marker that must never
/// reach the client (the second, smuggled response).
const BAD_RESPONSES: &[(&str, &[u8])] = &[
    (
        "response split: two responses for one request",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 2\r\n\r\nXX",
    ),
    (
        "Content-Length and Transfer-Encoding",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nX-Smuggled: yes\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "conflicting Content-Length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\nokHTTP/1.1 200 OK\r\nX-Smuggled: yes\r\n\r\n",
    ),
    (
        "status code out of range",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    ),
    ("not HTTP at all", b"SSH-2.0-OpenSSH_9.6\r\n"),
    (
        "NUL in a header value",
        b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok",
    ),
    (
        "body shorter than its Content-Length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nok",
    ),
];

#[tokio::test]
async fn malformed_backend_responses_never_reach_the_client_as_two() {
    let mut failures = Vec::new();
    for (name, response) in BAD_RESPONSES {
        let backend = RawBackend::start(response);
        let gateway = gateway(&backend);
        // Two requests on one client connection: a poisoned upstream connection
        // reused for the second would hand it the smuggled response.
        // Longer than the backend's read_timeout (2 s): a truncated body ends there.
        let (answer, closed) = exchange_waiting(
            &gateway,
            b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\nGET /two HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        let statuses = statuses(&answer);
        eprintln!(
            "{name:<48} client {statuses:?}{}",
            if closed { ", closed" } else { "" }
        );
        if !closed {
            failures.push(format!("{name}: the connection stayed open"));
        }
        if answer.to_ascii_lowercase().contains("x-smuggled") {
            failures.push(format!("{name}: the smuggled response reached the client"));
        }
        if statuses.is_empty() || statuses.len() > 2 {
            failures.push(format!("{name}: client got {statuses:?}"));
        }
        if statuses
            .iter()
            .any(|s| !(*s == 200 || (500..600).contains(s)))
        {
            failures.push(format!("{name}: client got {statuses:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
