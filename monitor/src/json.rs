//! Splits a byte stream into JSON messages, like QEMU's JSON streamer.
//!
//! Brackets and braces are counted outside strings; a message ends when the
//! nesting returns to zero (or, for a top-level scalar, at the next
//! delimiter). A raw control character inside a string, a stray closing
//! bracket or a byte that cannot occur in JSON outside a string is a lexical
//! error: the partial message is dropped and scanning starts afresh, so the
//! next well-formed message is read normally.

use std::io::{self, BufRead};

/// Nesting beyond this is a lexical error (QEMU uses the same limit).
const MAX_NESTING: usize = 1024;

/// One step of the splitter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// The bytes of one complete JSON value (not yet validated).
    Message(Vec<u8>),
    /// A lexical error; scanning has been reset.
    Error(String),
    /// A message exceeded the size limit; the stream should be closed.
    TooLarge,
    /// End of input (any partial message is dropped).
    Eof,
}

pub(crate) struct Splitter<R> {
    r: R,
    limit: usize,
    buf: Vec<u8>,
    depth: usize,
    in_str: bool,
    esc: bool,
    scalar: bool,
}

impl<R: BufRead> Splitter<R> {
    pub(crate) fn new(r: R, limit: usize) -> Self {
        Splitter { r, limit, buf: Vec::new(), depth: 0, in_str: false, esc: false, scalar: false }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.depth = 0;
        self.in_str = false;
        self.esc = false;
        self.scalar = false;
    }

    fn take(&mut self) -> Item {
        let m = std::mem::take(&mut self.buf);
        self.reset();
        Item::Message(m)
    }

    /// Reads until the next message, error or end of input.
    pub(crate) fn next_item(&mut self) -> io::Result<Item> {
        loop {
            let chunk = match self.r.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                if self.scalar {
                    return Ok(self.take());
                }
                self.reset();
                return Ok(Item::Eof);
            }
            let mut used = 0;
            let mut result = None;
            for &b in chunk {
                if self.scalar && !self.in_str && (b.is_ascii_whitespace() || b"{}[],:\"".contains(&b)) {
                    // The delimiter is not part of the scalar; leave it unread.
                    result = Some(Item::Message(std::mem::take(&mut self.buf)));
                    break;
                }
                used += 1;
                if self.in_str {
                    if b < 0x20 {
                        result = Some(Item::Error("JSON parse error, control character in string".into()));
                        break;
                    }
                    self.buf.push(b);
                    if self.esc {
                        self.esc = false;
                    } else if b == b'\\' {
                        self.esc = true;
                    } else if b == b'"' {
                        self.in_str = false;
                        if self.depth == 0 {
                            result = Some(Item::Message(std::mem::take(&mut self.buf)));
                            break;
                        }
                    }
                } else if self.scalar {
                    self.buf.push(b);
                } else {
                    match b {
                        b' ' | b'\t' | b'\r' | b'\n' => {
                            if self.depth > 0 {
                                self.buf.push(b);
                            }
                        }
                        b'{' | b'[' => {
                            self.buf.push(b);
                            self.depth += 1;
                            if self.depth > MAX_NESTING {
                                result = Some(Item::Error("JSON parse error, nesting too deep".into()));
                                break;
                            }
                        }
                        b'}' | b']' => {
                            if self.depth == 0 {
                                result = Some(Item::Error("JSON parse error, expecting value".into()));
                                break;
                            }
                            self.buf.push(b);
                            self.depth -= 1;
                            if self.depth == 0 {
                                result = Some(Item::Message(std::mem::take(&mut self.buf)));
                                break;
                            }
                        }
                        b'"' => {
                            self.buf.push(b);
                            self.in_str = true;
                        }
                        b',' | b':' if self.depth > 0 => self.buf.push(b),
                        b'-' | b'+' | b'.' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' => {
                            if self.depth == 0 {
                                self.scalar = true;
                            }
                            self.buf.push(b);
                        }
                        _ => {
                            let msg = if b.is_ascii_graphic() {
                                format!("JSON parse error, stray '{}'", b as char)
                            } else {
                                format!("JSON parse error, invalid byte 0x{b:02x}")
                            };
                            result = Some(Item::Error(msg));
                            break;
                        }
                    }
                }
                if self.buf.len() > self.limit {
                    result = Some(Item::TooLarge);
                    break;
                }
            }
            self.r.consume(used);
            if let Some(item) = result {
                self.reset();
                return Ok(item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(input: &[u8]) -> Vec<Item> {
        let mut s = Splitter::new(input, 64);
        let mut v = Vec::new();
        loop {
            let it = s.next_item().unwrap();
            if it == Item::Eof {
                return v;
            }
            v.push(it);
        }
    }

    fn msg(s: &str) -> Item {
        Item::Message(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_values() {
        assert_eq!(
            items(b"{\"a\": [1, \"}\"]}  {\"b\":\"\\\"{\"}\n12 \"x\" true"),
            vec![msg("{\"a\": [1, \"}\"]}"), msg("{\"b\":\"\\\"{\"}"), msg("12"), msg("\"x\""), msg("true")]
        );
    }

    #[test]
    fn resyncs_after_errors() {
        let v = items(b"{\"a\": \"x\n} {\"b\":1} ] {\"c\":\x01} {\"d\":2}");
        assert!(matches!(v[0], Item::Error(_)));
        // "} " after the error: a stray closing brace, then the next object.
        assert!(matches!(v[1], Item::Error(_)));
        assert_eq!(v[2], msg("{\"b\":1}"));
        assert!(matches!(v[3], Item::Error(_)));
        assert!(matches!(v[4], Item::Error(_)));
        assert!(matches!(v[5], Item::Error(_)));
        assert_eq!(v[6], msg("{\"d\":2}"));
    }

    #[test]
    fn too_large() {
        let mut big = b"{\"a\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'x', 100));
        assert_eq!(items(&big).first(), Some(&Item::TooLarge));
    }
}
