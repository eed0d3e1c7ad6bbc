//! A Server-Sent Events parser, fed with bytes as they arrive.
//!
//! It follows the WHATWG "event stream" rules rather than the few lines a
//! well-behaved server needs, because a network splits bytes anywhere: a line,
//! a `\r\n` pair or a UTF-8 character may straddle two chunks. Lines end with
//! `\n`, `\r\n` or `\r`; `:` starts a comment (keep-alives); a blank line ends an
//! event; `data:` lines join with `\n`; an event without data is not dispatched.

use std::time::Duration;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` line of this event, if it had one.
    pub id: Option<String>,
    /// `event:`, or `message` when absent.
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The previous chunk ended with `\r`: a `\n` opening this one belongs to it.
    after_cr: bool,
    /// The stream's first bytes are still to come (a byte-order mark is dropped).
    started: bool,
    /// The `id:` of the event being read, if it has one.
    id: Option<String>,
    /// The last `id:` read (it carries over to events without one), and the
    /// one in effect at the last blank line: what a reconnection sends.
    id_buffer: Option<String>,
    last_event_id: Option<String>,
    event: String,
    data: String,
    has_data: bool,
    retry: Option<Duration>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events completed by `bytes`.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<SseEvent> {
        if !self.started && !bytes.is_empty() {
            self.started = true;
            bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        }
        let mut events = Vec::new();
        for &byte in bytes {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_ended(&String::from_utf8_lossy(&line)) {
                        events.push(event);
                    }
                }
                _ => self.line.push(byte),
            }
        }
        events
    }

    /// The id to resume from, as `Last-Event-ID`: the last `id:` of an event
    /// that was complete (ended by a blank line), even one without data.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The reconnection delay the server asked for with `retry:`, if any.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    fn line_ended(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // An id with a NUL is ignored, so that it cannot reach a header.
            "id" if !value.contains('\0') => {
                self.id = Some(value.to_owned());
                self.id_buffer = Some(value.to_owned());
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok().map(Duration::from_millis);
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        self.last_event_id.clone_from(&self.id_buffer);
        let id = self.id.take();
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(SseEvent {
            id,
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b": connected\n\
        \n\
        id: 1\n\
        event: batch\n\
        data: {\"ingestion_id\":\"i\",\"batch_id\":\"i:0\",\"status\":\"triggered\",\"at\":\"2026-01-01T00:00:00.000001Z\"}\n\
        \n\
        id: 2\r\n\
        event: batch\r\n\
        data: {\"ingestion_id\":\"i\",\"batch_id\":\"i:0\",\r\n\
        data: \"status\":\"completed\",\"at\":\"2026-01-01T00:00:00.5Z\"}\r\n\
        \r\n\
        retry: 1500\n\
        id:3\r\
        event:ingestion\r\
        data:{\"ingestion_id\":\"i\",\"status\":\"completed\",\"at\":\"2026-01-01T00:00:01Z\"}\r\
        \r\
        id: 4\n\
        event: batch\n\
        data: an event cut off by the end of the stream";

    fn expected() -> Vec<SseEvent> {
        let event = |id: &str, event: &str, data: &str| SseEvent {
            id: Some(id.to_owned()),
            event: event.to_owned(),
            data: data.to_owned(),
        };
        vec![
            event(
                "1",
                "batch",
                r#"{"ingestion_id":"i","batch_id":"i:0","status":"triggered","at":"2026-01-01T00:00:00.000001Z"}"#,
            ),
            event(
                "2",
                "batch",
                "{\"ingestion_id\":\"i\",\"batch_id\":\"i:0\",\n\"status\":\"completed\",\"at\":\"2026-01-01T00:00:00.5Z\"}",
            ),
            event(
                "3",
                "ingestion",
                r#"{"ingestion_id":"i","status":"completed","at":"2026-01-01T00:00:01Z"}"#,
            ),
        ]
    }

    #[test]
    fn a_whole_stream_parses_into_its_events() {
        let mut parser = SseParser::new();
        assert_eq!(parser.push(STREAM), expected());
        assert_eq!(parser.retry(), Some(Duration::from_millis(1500)));
        assert_eq!(
            parser.last_event_id(),
            Some("3"),
            "the id of an event cut off is not the one to resume from"
        );
    }

    #[test]
    fn the_stream_may_be_split_anywhere() {
        // Every split point, including inside `\r\n`, gives the same events.
        for at in 0..=STREAM.len() {
            let mut parser = SseParser::new();
            let mut events = parser.push(&STREAM[..at]);
            events.extend(parser.push(&STREAM[at..]));
            assert_eq!(events, expected(), "split at {at}");
        }
        // And byte by byte.
        let mut parser = SseParser::new();
        let events: Vec<SseEvent> = STREAM.iter().flat_map(|b| parser.push(&[*b])).collect();
        assert_eq!(events, expected());
    }

    #[test]
    fn a_character_split_between_chunks_stays_whole() {
        let bytes = "data: café\n\n".as_bytes();
        let split = bytes.iter().position(|&b| b == 0xc3).unwrap() + 1;
        let mut parser = SseParser::new();
        let mut events = parser.push(&bytes[..split]);
        events.extend(parser.push(&bytes[split..]));
        assert_eq!(events[0].data, "café");
        assert_eq!(events[0].event, "message");
        assert_eq!(events[0].id, None);
    }

    #[test]
    fn comments_fields_without_data_and_a_bom_dispatch_nothing() {
        let mut parser = SseParser::new();
        let bytes = "\u{feff}: keep-alive\n\nevent: batch\nid: 9\n\nretry: soon\n\n";
        assert!(parser.push(bytes.as_bytes()).is_empty());
        assert_eq!(parser.retry(), None);
        assert_eq!(parser.last_event_id(), Some("9"));
    }
}
