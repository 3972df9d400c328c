//! A streamed send-message response as the Runtime API received it: a JSON
//! prelude, eight NUL bytes, then Server-Sent Events (`session`, `delta`s,
//! `done`), each located in the posted body so its arrival can be timed.

use serde_json::Value;

use crate::Res;

/// One event, and where it lies in the posted body (`end` exclusive,
/// the blank line that ends it included).
#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub data: Value,
    pub start: usize,
    pub end: usize,
}

/// The prelude's status code and the events of a streamed response.
pub fn parse(posted: &[u8]) -> Res<(u64, Vec<Event>)> {
    const DELIMITER: &[u8] = &[0; 8];
    let i = posted
        .windows(8)
        .position(|w| w == DELIMITER)
        .ok_or("not a streamed response (no prelude)")?;
    let prelude: Value = serde_json::from_slice(&posted[..i])?;
    let status = prelude["statusCode"].as_u64().unwrap_or(0);
    let mut events = Vec::new();
    let mut at = i + 8;
    let body = std::str::from_utf8(&posted[at..])?;
    for block in body.split_inclusive("\n\n") {
        let (start, end) = (at, at + block.len());
        at = end;
        if block.trim().is_empty() {
            continue;
        }
        let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name));
        let name = field("event: ").ok_or_else(|| format!("no event name in {block:?}"))?;
        let data = serde_json::from_str(field("data: ").unwrap_or("null"))?;
        events.push(Event {
            name: name.to_owned(),
            data,
            start,
            end,
        });
    }
    Ok((status, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_located_after_the_prelude() {
        let mut posted = br#"{"statusCode":200}"#.to_vec();
        posted.extend_from_slice(&[0; 8]);
        let prelude = posted.len();
        let body = "event: session\ndata: {\"sessionId\":\"s\"}\n\n\
                    event: delta\ndata: {\"text\":\"Hi\"}\n\n\
                    event: done\ndata: {\"reply\":\"Hi\"}\n\n";
        posted.extend_from_slice(body.as_bytes());
        let (status, ev) = parse(&posted).unwrap();
        assert_eq!(status, 200);
        let names: Vec<&str> = ev.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["session", "delta", "done"]);
        assert_eq!(ev[0].start, prelude);
        assert_eq!(&posted[ev[1].start..ev[1].start + 12], b"event: delta");
        assert_eq!(ev[2].end, posted.len());
        assert_eq!(ev[2].data["reply"], "Hi");
    }
}
