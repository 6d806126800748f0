//! The `{token:NAME}` templates of `headers` and `basic`: their syntax, shared by validation
//! and by the injection forms built from them.

/// A piece of a template: literal text or a token's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Token(String),
}

/// Parses a template with `{token:NAME}` placeholders. A bare `{token}` is refused: these
/// templates name their tokens.
pub fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{token") {
        let after = &rest[start + "{token".len()..];
        if after.starts_with('}') {
            return Err("name the token: {token:NAME} ({token} alone is for `format`)".into());
        }
        let Some(named) = after.strip_prefix(':') else {
            // `{tokens` and the like: literal text.
            pieces.push(Piece::Text(rest[..start + 1].to_owned()));
            rest = &rest[start + 1..];
            continue;
        };
        let end = named.find('}').ok_or("an unclosed {token:NAME} placeholder")?;
        let name = &named[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return Err(format!("{{token:{name}}} does not name a token"));
        }
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_owned()));
        }
        pieces.push(Piece::Token(name.to_owned()));
        rest = &named[end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    // Adjacent text pieces (from skipped `{token...`) are joined.
    let mut joined: Vec<Piece> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match (joined.last_mut(), p) {
            (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
            (_, p) => joined.push(p),
        }
    }
    Ok(joined)
}

/// The tokens a template names, in order, without repeats.
pub fn template_tokens(pieces: &[Piece]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for p in pieces {
        if let Piece::Token(n) = p {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    names
}

/// A `headers` value that names exactly one token, as a `format` of that token (`{token}` for
/// its value): `(token, format)`.
pub fn as_format(pieces: &[Piece]) -> Result<(String, String), String> {
    let names = template_tokens(pieces);
    let [name] = names[..] else {
        return Err(match names.len() {
            0 => "names no token: add a {token:NAME} placeholder".into(),
            _ => "names more than one token; one header value carries one token (use `basic` for username:password)"
                .into(),
        });
    };
    let mut format = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => format.push_str(t),
            Piece::Token(_) => format.push_str("{token}"),
        }
    }
    Ok((name.to_owned(), format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_their_tokens() {
        use Piece::*;
        assert_eq!(parse_template("{token:a}").unwrap(), [Token("a".into())]);
        assert_eq!(
            parse_template("Key {token:a}; id={token:b-2}").unwrap(),
            [Text("Key ".into()), Token("a".into()), Text("; id=".into()), Token("b-2".into())]
        );
        assert_eq!(parse_template("plain").unwrap(), [Text("plain".into())]);
        assert_eq!(parse_template("{tokens} {token:x}").unwrap(), [Text("{tokens} ".into()), Token("x".into())]);
        assert!(parse_template("Bearer {token}").unwrap_err().contains("name the token"));
        assert!(parse_template("{token:a").is_err());
        assert!(parse_template("{token:}").is_err());
        assert!(parse_template("{token:a b}").is_err());

        assert_eq!(as_format(&parse_template("Key {token:a}").unwrap()).unwrap(), ("a".into(), "Key {token}".into()));
        assert_eq!(
            as_format(&parse_template("{token:a}/{token:a}").unwrap()).unwrap(),
            ("a".into(), "{token}/{token}".into())
        );
        assert!(as_format(&parse_template("{token:a}:{token:b}").unwrap()).is_err());
        assert!(as_format(&parse_template("none").unwrap()).is_err());
    }
}
