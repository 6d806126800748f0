//! Kubernetes YAML in and out: the stream cut into documents at their `---` markers (so a
//! document left alone is written back byte for byte, comments and all), one document read into
//! a [`Node`] the way `kubectl` reads it, and a [`Node`] written as block YAML.
//!
//! `kubectl` reads YAML 1.1 (go-yaml v2 under sigs.k8s.io/yaml): a plain `0440` is the octal
//! 288, a plain `yes` or `on` is `true`. A YAML 1.2 reader would take `defaultMode: 0440` as a
//! string or as 440, so the documents are read here with a YAML 1.1 resolution of plain
//! scalars, and strings are written quoted whenever a YAML 1.1 or 1.2 reader could take them for
//! anything else.

use std::collections::HashMap;
use std::fmt::Write;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::Number;

use super::node::{Map, Node};

/// Nesting deeper than this is refused rather than recursed into.
const MAX_DEPTH: usize = 200;
/// Nodes one document may expand to, aliases counted at every use (a "billion laughs" document
/// is refused instead of filling memory).
const MAX_NODES: usize = 1_000_000;

/// One document of a stream: its text (from its `---` line, or the stream's start, to the next
/// document's) and the line of the stream it starts on (1-based).
#[derive(Debug, PartialEq)]
pub struct Chunk<'a> {
    pub text: &'a str,
    pub line: usize,
}

/// A YAML error at a line and column of the stream (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} column {}: {}", self.line, self.col, self.message)
    }
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Cuts a stream before every `---` line and after every `...` line (a document marker at the
/// start of a line is never content, so no parse is needed to find them). Directive lines
/// (`%YAML`) go with the document they precede.
pub fn split(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    // The start of a run of directive lines right before a marker.
    let mut directives: Option<(usize, usize)> = None;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let line_no = n + 1;
        if is_marker(line, "---") {
            let (cut, cut_line) = directives.unwrap_or((offset, line_no));
            if cut > start {
                chunks.push(Chunk { text: &text[start..cut], line: start_line });
            }
            (start, start_line) = (cut, cut_line);
            directives = None;
        } else if line.starts_with('%') {
            directives.get_or_insert((offset, line_no));
        } else if !(line.trim().is_empty() || line.trim_start().starts_with('#')) {
            directives = None;
        }
        offset += line.len();
        if is_marker(line, "...") {
            chunks.push(Chunk { text: &text[start..offset], line: start_line });
            (start, start_line) = (offset, line_no + 1);
        }
    }
    if start < text.len() || chunks.is_empty() {
        chunks.push(Chunk { text: &text[start..], line: start_line });
    }
    chunks
}

/// The lines a document begins with that are not content: blank lines, comments, directives
/// and a bare `---` line. Kept when the document is written anew.
pub fn preamble(chunk: &str) -> &str {
    let mut end = 0;
    for line in chunk.split_inclusive('\n') {
        let t = line.trim();
        let bare_marker = is_marker(line, "---") && {
            let rest = line[3..].trim();
            rest.is_empty() || rest.starts_with('#')
        };
        if t.is_empty() || t.starts_with('#') || line.starts_with('%') || bare_marker {
            end += line.len();
        } else {
            break;
        }
    }
    &chunk[..end]
}

/// Reads one document (a [`split`] chunk). `None` for a document with no content.
pub fn parse(chunk: &Chunk<'_>) -> Result<Option<Node>, YamlError> {
    let mut reader = Reader {
        parser: Parser::new_from_str(chunk.text),
        first_line: chunk.line,
        anchors: HashMap::new(),
        nodes: 0,
        last: None,
    };
    let mut doc = None;
    loop {
        let (event, span) = reader.next()?;
        match event {
            Event::StreamStart | Event::DocumentStart(_) | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => return Ok(doc),
            _ if doc.is_some() => return Err(reader.error(span, "more than one document between two `---` markers")),
            event => doc = Some(reader.node(event, span, 0)?),
        }
    }
}

struct Reader<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    first_line: usize,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    last: Option<Span>,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        match self.parser.next_event() {
            Some(Ok((event, span))) => {
                self.last = Some(span);
                Ok((event, span))
            }
            Some(Err(e)) => Err(YamlError {
                line: self.first_line + e.marker().line() - 1,
                col: e.marker().col() + 1,
                message: e.info().to_owned(),
            }),
            None => Err(self.error(self.last.unwrap_or_default(), "unexpected end of the document")),
        }
    }

    fn error(&self, span: Span, message: &str) -> YamlError {
        YamlError {
            line: self.first_line + span.start.line().max(1) - 1,
            col: span.start.col() + 1,
            message: message.to_owned(),
        }
    }

    fn count(&mut self, n: usize, span: Span) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(self.error(span, "the document expands to more than a million nodes (aliases?)"));
        }
        Ok(())
    }

    fn node(&mut self, event: Event<'a>, span: Span, depth: usize) -> Result<Node, YamlError> {
        if depth > MAX_DEPTH {
            return Err(self.error(span, "nested too deeply"));
        }
        self.count(1, span)?;
        let (node, anchor) = match event {
            Event::Alias(id) => {
                let node =
                    self.anchors.get(&id).cloned().ok_or_else(|| self.error(span, "alias to an unknown anchor"))?;
                self.count(size(&node), span)?;
                return Ok(node);
            }
            Event::Scalar(value, style, anchor, tag) => (self.scalar(&value, style, tag.as_deref(), span)?, anchor),
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    match self.next()? {
                        (Event::SequenceEnd, _) => break,
                        (event, span) => items.push(self.node(event, span, depth + 1)?),
                    }
                }
                (Node::Seq(items), anchor)
            }
            Event::MappingStart(anchor, _) => (Node::Map(self.mapping(depth)?), anchor),
            _ => return Err(self.error(span, "unexpected YAML event")),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }

    fn mapping(&mut self, depth: usize) -> Result<Map, YamlError> {
        let mut map = Map::default();
        let mut merges = Vec::new();
        loop {
            let (event, key_span) = self.next()?;
            let merge = matches!(&event, Event::Scalar(k, ScalarStyle::Plain, _, None) if k == "<<");
            let key = match event {
                Event::MappingEnd => break,
                Event::Scalar(..) | Event::Alias(_) => self.node(event, key_span, depth + 1)?,
                _ => return Err(self.error(key_span, "a mapping key must be a scalar")),
            };
            let (event, value_span) = self.next()?;
            let value = self.node(event, value_span, depth + 1)?;
            if merge {
                merges.push((value, value_span));
                continue;
            }
            let key = match key {
                Node::String(s) => s,
                Node::Null => "null".to_owned(),
                Node::Bool(b) => b.to_string(),
                Node::Number(n) => n.to_string(),
                _ => return Err(self.error(key_span, "a mapping key must be a scalar")),
            };
            if map.get(&key).is_some() {
                return Err(self.error(key_span, &format!("duplicate key {key:?}")));
            }
            map.0.push((key, value));
        }
        // `<<: *base` (YAML 1.1 merge keys, which kubectl reads): the keys written out win.
        for (value, value_span) in merges {
            let sources = match value {
                Node::Map(m) => vec![m],
                Node::Seq(items) => items
                    .into_iter()
                    .map(|i| match i {
                        Node::Map(m) => Ok(m),
                        _ => Err(self.error(value_span, "a merge key takes a mapping or a list of mappings")),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(self.error(value_span, "a merge key takes a mapping or a list of mappings")),
            };
            for source in sources {
                for (k, v) in source.0 {
                    if map.get(&k).is_none() {
                        map.0.push((k, v));
                    }
                }
            }
        }
        Ok(map)
    }

    fn scalar(&self, value: &str, style: ScalarStyle, tag: Option<&Tag>, span: Span) -> Result<Node, YamlError> {
        let core = tag.filter(|t| t.is_yaml_core_schema() || t.handle == "!!").map(|t| t.suffix.as_str());
        let resolved = match (core, style) {
            (Some("str" | "binary"), _) => return Ok(Node::str(value)),
            (_, ScalarStyle::Plain) | (Some(_), _) => resolve(value),
            _ => return Ok(Node::str(value)),
        };
        let want = |ok: bool, what: &str| {
            if ok {
                Ok(resolved.clone())
            } else {
                Err(self.error(span, &format!("{value:?} is not {what}")))
            }
        };
        match (core, &resolved) {
            (_, Resolved::Unrepresentable) => {
                Err(self.error(span, &format!("{value:?} (infinity or NaN) has no JSON form")))
            }
            (Some("int"), r) => want(matches!(r, Resolved::Node(Node::Number(n)) if !n.is_f64()), "an integer"),
            (Some("float"), r) => want(matches!(r, Resolved::Node(Node::Number(_))), "a number"),
            (Some("bool"), r) => want(matches!(r, Resolved::Node(Node::Bool(_))), "a boolean"),
            (Some("null"), r) => want(matches!(r, Resolved::Node(Node::Null)), "null"),
            _ => Ok(resolved),
        }
        .map(|r| match r {
            Resolved::Node(n) => n,
            Resolved::Unrepresentable => Node::Null,
        })
    }
}

fn size(node: &Node) -> usize {
    match node {
        Node::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Node::Map(m) => 1 + m.0.iter().map(|(_, v)| size(v)).sum::<usize>(),
        _ => 1,
    }
}

#[derive(Clone)]
enum Resolved {
    Node(Node),
    Unrepresentable,
}

/// A plain scalar the way go-yaml v2 reads it (YAML 1.1): null, booleans (`yes`, `on`...),
/// integers (`0x`, `0b`, `0o`, a leading-zero octal, `_` separators), floats.
fn resolve(s: &str) -> Resolved {
    let node = match s {
        "" | "~" | "null" | "Null" | "NULL" => Node::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "true" | "True" | "TRUE" => Node::Bool(true),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "false" | "False" | "FALSE" => Node::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF" | ".nan" | ".NaN"
        | ".NAN" => return Resolved::Unrepresentable,
        _ => match number(s) {
            Some(n) => Node::Number(n),
            None => Node::str(s),
        },
    };
    Resolved::Node(node)
}

fn number(s: &str) -> Option<Number> {
    let first = s.chars().next()?;
    if !(first.is_ascii_digit() || matches!(first, '-' | '+' | '.')) {
        return None;
    }
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    let (negative, digits) = match plain.as_bytes().first() {
        Some(b'-') => (true, &plain[1..]),
        Some(b'+') => (false, &plain[1..]),
        _ => (false, &plain[..]),
    };
    let (radix, body) = if let Some(b) = digits.strip_prefix("0x") {
        (16, b)
    } else if let Some(b) = digits.strip_prefix("0b") {
        (2, b)
    } else if let Some(b) = digits.strip_prefix("0o") {
        (8, b)
    } else if digits.len() > 1 && digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit()) {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_hexdigit()) {
        if let Ok(v) = u64::from_str_radix(body, radix) {
            if !negative {
                return Some(Number::from(v));
            }
            if let Ok(v) = i64::try_from(v) {
                return Some(Number::from(-v));
            }
        }
    }
    // go-yaml v2's float pattern.
    let float = {
        let b = digits.as_bytes();
        let mut i = 0;
        let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
        i += int_digits;
        let mut frac_digits = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            frac_digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            i += frac_digits;
        }
        let mantissa = int_digits > 0 || frac_digits > 0;
        if mantissa && matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if exp == 0 {
                return None;
            }
            i += exp;
        }
        mantissa && i == b.len()
    };
    if float {
        return plain.parse::<f64>().ok().and_then(Number::from_f64);
    }
    None
}

/// `node` as a block YAML document (no `---`), ending with a newline.
pub fn emit(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Map(m) if !m.0.is_empty() => emit_map(&mut out, m, 0, false),
        Node::Seq(s) if !s.is_empty() => emit_seq(&mut out, s, 0),
        other => {
            out.push_str(&inline(other, 0, true));
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A map's entries at `indent`; with `continued`, the first entry goes on the current line
/// (after a sequence's `- `).
fn emit_map(out: &mut String, m: &Map, at: usize, continued: bool) {
    for (i, (k, v)) in m.0.iter().enumerate() {
        if !(continued && i == 0) {
            indent(out, at);
        }
        out.push_str(&quote_if_needed(k));
        out.push(':');
        emit_value(out, v, at);
    }
}

/// What follows `key:` or `- `: a scalar on the same line, else a nested block.
fn emit_value(out: &mut String, v: &Node, at: usize) {
    match v {
        Node::Map(m) if !m.0.is_empty() => {
            out.push('\n');
            emit_map(out, m, at + 2, false);
        }
        Node::Seq(s) if !s.is_empty() => {
            out.push('\n');
            emit_seq(out, s, at + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other, at + 2, false));
            out.push('\n');
        }
    }
}

fn emit_seq(out: &mut String, items: &[Node], at: usize) {
    for item in items {
        indent(out, at);
        out.push('-');
        match item {
            Node::Map(m) if !m.0.is_empty() => {
                out.push(' ');
                emit_map(out, m, at + 2, true);
            }
            other => emit_value(out, other, at),
        }
    }
}

/// A scalar (or an empty collection) in its one-line or literal-block form.
fn inline(node: &Node, block_indent: usize, top: bool) -> String {
    match node {
        Node::Null => "null".into(),
        Node::Bool(b) => b.to_string(),
        Node::Number(n) => n.to_string(),
        Node::Map(_) => "{}".into(),
        Node::Seq(_) => "[]".into(),
        Node::String(s) if !top && s.contains('\n') => literal(s, block_indent).unwrap_or_else(|| double_quoted(s)),
        Node::String(s) => quote_if_needed(s),
    }
}

/// A literal block (`|`), when the text can be one: printable, no carriage return, some
/// content besides line breaks.
fn literal(s: &str, at: usize) -> Option<String> {
    let body = s.trim_end_matches('\n');
    if body.is_empty() || s.chars().any(|c| (c.is_control() && c != '\n') || is_yaml_break(c)) {
        return None;
    }
    let trailing = s.len() - body.len();
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let first = body.lines().find(|l| !l.is_empty()).unwrap_or("");
    let indicator = if first.starts_with(' ') { "2" } else { "" };
    let mut out = format!("|{indicator}{chomp}");
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            indent(&mut out, at);
            out.push_str(line);
        }
    }
    // The kept line breaks past the last content line, as empty lines.
    for _ in 1..trailing {
        out.push('\n');
    }
    Some(out)
}

/// Line breaks in YAML 1.1 besides `\n` and `\r`: NEL, LS, PS.
fn is_yaml_break(c: char) -> bool {
    matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || is_yaml_break(c) => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Plain when every YAML reader takes the text for this string and nothing else; else double
/// quoted. Conservative: letters, digits and `_./:@+=-`, starting with a letter, digit or `/`,
/// not a YAML 1.1 null, boolean or number, nothing a YAML 1.1 reader may take for a date or a
/// base-60 number.
pub fn quote_if_needed(s: &str) -> String {
    let Some(first) = s.chars().next() else { return "\"\"".into() };
    let charset = s.chars().all(|c| c.is_ascii_alphanumeric() || "_./:@+=-".contains(c));
    let plain = charset
        && (first.is_ascii_alphanumeric() || first == '/')
        && !s.ends_with(':')
        && !(first.is_ascii_digit() && (s.contains(':') || s.contains('-')))
        && matches!(resolve(s), Resolved::Node(Node::String(_)));
    if plain {
        s.to_owned()
    } else {
        double_quoted(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        parse(&Chunk { text, line: 1 }).unwrap().unwrap()
    }

    #[test]
    fn split_cuts_at_markers_only() {
        let text = "# head\na: 1\n---\nb: |\n  ---x\n  text\n--- # c\nc: 3\n...\n# tail\n";
        let chunks = split(text);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text).collect();
        assert_eq!(texts, ["# head\na: 1\n", "---\nb: |\n  ---x\n  text\n", "--- # c\nc: 3\n...\n", "# tail\n"]);
        assert_eq!(chunks.iter().map(|c| c.line).collect::<Vec<_>>(), [1, 3, 7, 10]);
        assert_eq!(texts.concat(), text);
        let directive = split("a: 1\n%YAML 1.1\n---\nb: 2\n");
        assert_eq!(directive[1].text, "%YAML 1.1\n---\nb: 2\n");
    }

    #[test]
    fn plain_scalars_resolve_as_kubectl_reads_them() {
        let m = one("a: 0440\nb: yes\nc: 'yes'\nd: 1_000\ne: 0x1F\nf: ~\ng: 1.5\nh: 50m\ni: !!str 12\nj: 09\n");
        let m = m.as_map().unwrap();
        let n = |k: &str| m.get(k).unwrap().clone();
        assert_eq!(n("a"), Node::Number(288.into()));
        assert_eq!(n("b"), Node::Bool(true));
        assert_eq!(n("c"), Node::str("yes"));
        assert_eq!(n("d"), Node::Number(1000.into()));
        assert_eq!(n("e"), Node::Number(31.into()));
        assert_eq!(n("f"), Node::Null);
        assert_eq!(n("g"), Node::Number(Number::from_f64(1.5).unwrap()));
        assert_eq!(n("h"), Node::str("50m"));
        assert_eq!(n("i"), Node::str("12"));
        assert_eq!(n("j"), Node::Number(Number::from_f64(9.0).unwrap()));
    }

    #[test]
    fn anchors_merges_and_limits() {
        let m = one("base: &b {p: 1, q: 2}\nuse:\n  <<: *b\n  q: 3\n");
        let used = m.as_map().unwrap().get("use").unwrap().as_map().unwrap();
        assert_eq!(used.get("p"), Some(&Node::Number(1.into())));
        assert_eq!(used.get("q"), Some(&Node::Number(3.into())));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            bomb.push_str(&format!(
                "{}: &{} [*{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}]\n",
                (b'b' + i) as char,
                (b'b' + i) as char,
                (b'a' + i) as char,
                (b'a' + i) as char,
                (b'a' + i) as char,
                (b'a' + i) as char,
                (b'a' + i) as char,
                (b'a' + i) as char,
                (b'a' + i) as char,
                (b'a' + i) as char,
                (b'a' + i) as char,
                (b'a' + i) as char
            ));
        }
        let e = parse(&Chunk { text: &bomb, line: 1 }).unwrap_err();
        assert!(e.message.contains("million"), "{e}");
        let deep = "a: ".to_owned() + &"[".repeat(220) + &"]".repeat(220) + "\n";
        let e = parse(&Chunk { text: &deep, line: 1 }).unwrap_err();
        assert!(e.message.contains("deep"), "{e}");
        let e = parse(&Chunk { text: "a: 1\na: 2\n", line: 10 }).unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (11, "duplicate key \"a\""));
    }

    #[test]
    fn emitted_strings_read_back_as_the_same_strings() {
        let tricky = [
            "yes",
            "on",
            "N",
            "0440",
            "1e3",
            "1.0",
            "12:30",
            "2026-01-01",
            "null",
            "",
            " lead",
            "a: b",
            "#x",
            "-x",
            "- x",
            "x:",
            "&a",
            "*a",
            "!t",
            "%p",
            "@x",
            "`x",
            "a #b",
            "\"q\"",
            "tab\there",
            "\u{2028}",
            "ünï",
            "line\nnext\n",
            "two\n\n",
            "  indented\nblock",
            "no newline\nat end",
            "\n",
            "50m",
            "/etc/sidekey",
            "http://127.0.0.1:8080",
            ".inf",
            "~",
            "<<",
            "a\n  \nb\n",
            "\nabc\n",
            "x\n\ty\n",
            "end \nspace\n",
        ];
        let mut map = Map::default();
        for (i, s) in tricky.iter().enumerate() {
            map.insert(&format!("k{i}"), Node::str(s));
            map.insert(s, Node::Number(i.into()));
        }
        let node = Node::Map(Map(vec![("m".into(), Node::Seq(vec![Node::Map(map), Node::Seq(vec![Node::str("x")])]))]));
        let text = emit(&node);
        assert_eq!(one(&text), node, "{text}");
        // And a YAML 1.2 reader agrees.
        let v: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(v, serde_json::Value::from(&node), "{text}");
    }
}
