//! RESP framing: commands in (multibulk arrays, or inline lines for telnet), replies out in
//! RESP2 or RESP3.
//!
//! The parser is bounded: every announced length is checked before the bytes are waited
//! for (a bulk string within `max_bulk_bytes`, at most `max_args` of them), a line must end
//! within `max_inline_bytes`, and arguments are copied only once the command is complete. The
//! command as a whole is bounded by the connection (`resp.max-command-bytes`, less before the
//! client logs in). An error
//! means the stream cannot be re-synchronised: the server answers it and closes the
//! connection, as Redis does.

/// Limits of one command.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string, in bytes.
    pub max_bulk_bytes: usize,
    /// Most arguments.
    pub max_args: usize,
    /// Longest header or inline line, in bytes.
    pub max_inline_bytes: usize,
}

/// A command that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Bad syntax or a limit passed.
    #[error("Protocol error: {0}")]
    Protocol(String),
}

fn protocol(m: impl Into<String>) -> ParseError {
    ParseError::Protocol(m.into())
}

/// A parsed command: its arguments and the bytes it used.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// Finds `\r\n` in `buf` from `from`; refuses a line longer than `max` bytes.
fn line_end(buf: &[u8], from: usize, max: usize) -> Result<Option<usize>, ParseError> {
    let window = &buf[from..buf.len().min(from + max + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(p) => Ok(Some(from + p)),
        None if window.len() >= max + 2 => Err(protocol("too big inline request")),
        None => Ok(None),
    }
}

/// Parses a non-negative decimal within `max`.
fn number(digits: &[u8], what: &str, max: usize) -> Result<usize, ParseError> {
    let text = std::str::from_utf8(digits).map_err(|_| protocol(format!("invalid {what}")))?;
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(protocol(format!("invalid {what}")));
    }
    let n: usize = text.parse().map_err(|_| protocol(format!("invalid {what}")))?;
    if n > max {
        return Err(protocol(format!("invalid {what}: {n} > {max}")));
    }
    Ok(n)
}

/// Parses one command off the front of `buf`: its arguments and the bytes used; `None`
/// while incomplete. An empty inline line yields an empty command (skipped by callers).
pub fn parse_command(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, ParseError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    if first != b'*' {
        return parse_inline(buf, limits);
    }
    let Some(end) = line_end(buf, 1, limits.max_inline_bytes)? else { return Ok(None) };
    let count = if buf[1..end] == *b"-1" { 0 } else { number(&buf[1..end], "multibulk length", limits.max_args)? };
    // Find every argument first, copy only once the command is complete: a large command
    // arriving in many reads is scanned again on each (its headers only), never copied again.
    let mut at = end + 2;
    let mut spans = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let Some(&marker) = buf.get(at) else { return Ok(None) };
        if marker != b'$' {
            return Err(protocol(format!("expected '$', got '{}'", marker.escape_ascii())));
        }
        let Some(end) = line_end(buf, at + 1, limits.max_inline_bytes)? else { return Ok(None) };
        let len = number(&buf[at + 1..end], "bulk length", limits.max_bulk_bytes)?;
        let start = end + 2;
        if buf.len() < start + len + 2 {
            return Ok(None);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err(protocol("bulk string not terminated by CRLF"));
        }
        spans.push((start, len));
        at = start + len + 2;
    }
    Ok(Some((spans.into_iter().map(|(start, len)| buf[start..start + len].to_vec()).collect(), at)))
}

/// An inline command: one line of space-separated words (double quotes group words).
fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, ParseError> {
    let newline = buf.iter().take(limits.max_inline_bytes + 1).position(|b| *b == b'\n');
    let Some(nl) = newline else {
        return if buf.len() > limits.max_inline_bytes { Err(protocol("too big inline request")) } else { Ok(None) };
    };
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let mut args = Vec::new();
    let mut word = Vec::new();
    let (mut in_quotes, mut has_word) = (false, false);
    for &b in line {
        match b {
            b'"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            b' ' | b'\t' if !in_quotes => {
                if has_word {
                    args.push(std::mem::take(&mut word));
                    has_word = false;
                }
            }
            _ => {
                word.push(b);
                has_word = true;
            }
        }
    }
    if in_quotes {
        return Err(protocol("unbalanced quotes in request"));
    }
    if has_word {
        args.push(word);
    }
    if args.len() > limits.max_args {
        return Err(protocol("too many arguments"));
    }
    Ok(Some((args, nl + 1)))
}

/// A reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...` (the text includes the error code).
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$3\r\nfoo` .
    Bulk(Vec<u8>),
    /// The null reply (`$-1` in RESP2, `_` in RESP3).
    Null,
    /// The null array (`*-1` in RESP2, `_` in RESP3): an aborted EXEC.
    NullArray,
    /// `*n` .
    Array(Vec<Reply>),
    /// A map (RESP3 `%n`; a flat array of keys and values in RESP2).
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// `-ERR {msg}`.
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    /// A bulk string of text.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(s.into().into_bytes())
    }

    /// Appends the encoding of `self` in protocol version `resp` (2 or 3).
    pub fn encode(&self, resp: u8, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => {
                out.push(b'+');
                out.extend(s.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
                out.extend_from_slice(b"\r\n");
            }
            Reply::Error(s) => {
                out.push(b'-');
                out.extend(s.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
                out.extend_from_slice(b"\r\n");
            }
            Reply::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
            Reply::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null if resp >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::NullArray if resp >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.encode(resp, out);
                }
            }
            Reply::Map(pairs) => {
                if resp >= 3 {
                    out.extend_from_slice(format!("%{}\r\n", pairs.len()).as_bytes());
                } else {
                    out.extend_from_slice(format!("*{}\r\n", pairs.len() * 2).as_bytes());
                }
                for (k, v) in pairs {
                    k.encode(resp, out);
                    v.encode(resp, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_bulk_bytes: 16, max_args: 4, max_inline_bytes: 32 };

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_parses_whole_and_waits_for_more() {
        let cmd = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nxy\r\n*1\r\n$4\r\nPING\r\n";
        let first_len = cmd.len() - b"*1\r\n$4\r\nPING\r\n".len();
        for cut in 0..first_len {
            assert_eq!(parse_command(&cmd[..cut], &LIMITS), Ok(None), "cut {cut}");
        }
        let (got, used) = parse_command(cmd, &LIMITS).expect("valid").expect("complete");
        assert_eq!((got, used), (args(&["SET", "k", "v\r\nxy"]), first_len));
        let (got, _) = parse_command(&cmd[used..], &LIMITS).expect("valid").expect("complete");
        assert_eq!(got, args(&["PING"]));
    }

    #[test]
    fn inline_commands_split_on_spaces_and_quotes() {
        let (got, used) = parse_command(b"set k \"a b\"\r\nrest", &LIMITS).expect("valid").expect("complete");
        assert_eq!((got, used), (args(&["set", "k", "a b"]), 13));
        assert_eq!(parse_command(b"\r\n", &LIMITS), Ok(Some((vec![], 2))));
        assert_eq!(parse_command(b"ping", &LIMITS), Ok(None));
    }

    #[test]
    fn limits_and_bad_syntax_are_errors_before_buffering() {
        for bad in [
            &b"*5\r\n"[..],
            b"*1\r\n$17\r\n",
            b"*1\r\n$-3\r\n",
            b"*x\r\n",
            b"*1\r\n:3\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"*99999999999999999999\r\n",
            &[b'a'; 40],
            b"\"unbalanced\r\n",
        ] {
            assert!(parse_command(bad, &LIMITS).is_err(), "{:?}", bad.escape_ascii().to_string());
        }
    }

    #[test]
    fn replies_encode_per_protocol() {
        let mut out = Vec::new();
        Reply::Map(vec![(Reply::text("a"), Reply::Int(1))]).encode(2, &mut out);
        assert_eq!(out, b"*2\r\n$1\r\na\r\n:1\r\n");
        out.clear();
        Reply::Map(vec![(Reply::text("a"), Reply::Null)]).encode(3, &mut out);
        assert_eq!(out, b"%1\r\n$1\r\na\r\n_\r\n");
        out.clear();
        Reply::Error("ERR bad\r\nthing".into()).encode(2, &mut out);
        assert_eq!(out, b"-ERR bad  thing\r\n");
    }
}
