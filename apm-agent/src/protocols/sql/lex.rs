//! The SQL lexer: words, quoted identifiers, parameters, literals and
//! punctuation, in PostgreSQL's or MySQL's dialect. Comments and
//! whitespace go; a literal keeps nothing of its value.

/// Whose quoting and comments a statement follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// `"identifier"`, `$1` parameters, dollar quoting, `--` and `/* */`.
    #[default]
    Postgres,
    /// `` `identifier` ``, `"string"`, `?` parameters, `#` comments too.
    Mysql,
}

/// One lexical token: what the output keeps of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Token<'a> {
    /// A word (keyword or identifier), as written.
    Word(&'a [u8]),
    /// A quoted identifier, with its quotes.
    Quoted(&'a [u8]),
    /// A parameter `$n`.
    Param(u32),
    /// A literal of any kind.
    Literal,
    /// Punctuation or an operator.
    Punct(&'a [u8]),
}

/// Splits `sql` into tokens; comments and whitespace are dropped.
pub(super) fn tokens(sql: &[u8], dialect: Dialect) -> Vec<Token<'_>> {
    spanned(sql, dialect).into_iter().map(|s| s.0).collect()
}

/// [`tokens`] with where each starts and ends.
pub(super) fn spanned(sql: &[u8], dialect: Dialect) -> Vec<(Token<'_>, usize, usize)> {
    let mysql = dialect == Dialect::Mysql;
    // Where an open `/*!` comment's `*/` is.
    let mut executable: Option<usize> = None;
    let mut out: Vec<(Token<'_>, usize, usize)> = Vec::new();
    let mut i = 0;
    while i < sql.len() {
        let before = out.len();
        let at = i;
        let c = sql[i];
        let rest = &sql[i..];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if dash_comment(rest, dialect) || (mysql && c == b'#') {
            i += line_comment(rest);
        } else if mysql && executable.is_some_and(|end| rest.starts_with(b"*/") && i == end) {
            // The end of an executable comment's code.
            executable = None;
            i += 2;
        } else if mysql && rest.starts_with(b"/*!") {
            // `/*!50100 code */`: MySQL runs the code.
            let digits = rest[3..]
                .iter()
                .take(6)
                .take_while(|b| b.is_ascii_digit())
                .count();
            executable = Some(i + block_comment(rest) - 2);
            i += 3 + digits;
        } else if rest.starts_with(b"/*") {
            i += block_comment(rest);
        } else if c == b'\'' {
            i += string(rest, mysql);
            out.push((Token::Literal, 0, 0));
        } else if matches!(c, b'E' | b'e' | b'B' | b'b' | b'X' | b'x' | b'N' | b'n')
            && rest.get(1) == Some(&b'\'')
        {
            // E'' (PostgreSQL) reads backslash escapes.
            let escapes = mysql || matches!(c, b'E' | b'e');
            i += 1 + string(&rest[1..], escapes);
            out.push((Token::Literal, 0, 0));
        } else if mysql && c == b'"' {
            // A string in MySQL (unless ANSI_QUOTES: hiding an
            // identifier is the safe mistake).
            i += escaped(rest, c);
            out.push((Token::Literal, 0, 0));
        } else if mysql && c == b'?' {
            out.push((Token::Param(0), 0, 0));
            i += 1;
        } else if c == b'"' || (mysql && c == b'`') {
            let n = quoted(rest, c, false);
            out.push((Token::Quoted(&rest[..n]), 0, 0));
            i += n;
        } else if c == b'$' && !mysql {
            let digits = rest[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 {
                let n = std::str::from_utf8(&rest[1..=digits])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u32::MAX);
                out.push((Token::Param(n), 0, 0));
                i += 1 + digits;
            } else if let Some(n) = dollar_quoted(rest) {
                out.push((Token::Literal, 0, 0));
                i += n;
            } else {
                out.push((Token::Punct(&rest[..1]), 0, 0));
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == b'.' && rest.get(1).is_some_and(u8::is_ascii_digit)) {
            // Words take their own digits: this is a number.
            i += number(rest);
            out.push((Token::Literal, 0, 0));
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let n = rest
                .iter()
                .take_while(|&&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80)
                .count();
            out.push((Token::Word(&rest[..n]), 0, 0));
            i += n;
        } else {
            // Operators: runs of operator characters are one token.
            let ops: &[u8] = if mysql {
                b"+-*/<>=~!@%^&|"
            } else {
                b"+-*/<>=~!@#%^&|?"
            };
            let n = if ops.contains(&c) {
                rest.iter().take_while(|b| ops.contains(b)).count()
            } else {
                1
            };
            // `--` and `/*` start comments even inside an operator run.
            let n = (1..n)
                .find(|&k| dash_comment(&rest[k..], dialect) || rest[k..].starts_with(b"/*"))
                .unwrap_or(n);
            out.push((Token::Punct(&rest[..n]), 0, 0));
            i += n;
        }
        if out.len() > before
            && let Some(last) = out.last_mut()
        {
            last.1 = at;
            last.2 = i.min(sql.len());
        }
    }
    fold_signs(&mut out);
    out
}

/// A minus sign before a number, where no operand precedes it, is the
/// number's (as PostgreSQL's normalisation takes it).
fn fold_signs(tokens: &mut Vec<(Token<'_>, usize, usize)>) {
    let mut i = 0;
    while i + 1 < tokens.len() {
        let unary = tokens[i].0 == Token::Punct(b"-")
            && tokens[i + 1].0 == Token::Literal
            && match i.checked_sub(1).map(|p| tokens[p].0) {
                None => true,
                Some(Token::Punct(p)) => p != b")" && p != b"]",
                Some(Token::Word(w)) => is_keyword(w),
                Some(_) => false,
            };
        if unary {
            let sign = tokens.remove(i);
            tokens[i].1 = sign.1;
        }
        i += 1;
    }
}

/// Words after which a minus starts a value, not a subtraction.
fn is_keyword(w: &[u8]) -> bool {
    const WORDS: [&str; 16] = [
        "SELECT", "WHERE", "AND", "OR", "NOT", "SET", "VALUES", "THEN", "ELSE", "WHEN", "BY",
        "LIMIT", "OFFSET", "RETURN", "IN", "IS",
    ];
    WORDS.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(w))
}

/// Length of a `--` comment: to the end of its line (`\n` or `\r`).
pub(super) fn line_comment(s: &[u8]) -> usize {
    s.iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(s.len())
}

/// Length of a string literal opening `s`, with its continuations (another
/// quoted part after whitespace holding a newline). With `escapes` a
/// backslash escapes the next byte (MySQL, PostgreSQL's `E''`). Without,
/// a backslash is itself (PostgreSQL's `standard_conforming_strings`);
/// when the other reading would end the literal elsewhere (the setting
/// off), the rest of the statement counts as literal: both readings hide
/// what either takes for a value.
pub(super) fn string(s: &[u8], escapes: bool) -> usize {
    let part = |s: &[u8]| {
        if escapes {
            return escaped(s, b'\'');
        }
        let plain = quoted(s, b'\'', false);
        if quoted(s, b'\'', true) == plain {
            plain
        } else {
            s.len()
        }
    };
    let mut end = part(s);
    loop {
        let gap = s[end..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        let newline = s[end..end + gap].iter().any(|&b| b == b'\n' || b == b'\r');
        if !newline || s.get(end + gap) != Some(&b'\'') {
            return end;
        }
        end += gap + part(&s[end + gap..]);
    }
}

/// Length of a literal opening `s` with quote `q` whose backslashes
/// escape. A backslash after a byte of a multi-byte character may be that
/// character's second byte (sjis, gbk, big5 and their kin), escaping
/// nothing: then the rest of the statement counts as literal.
pub(super) fn escaped(s: &[u8], q: u8) -> usize {
    let end = quoted(s, q, true);
    let ambiguous = s[..end].windows(2).any(|w| w[0] >= 0x80 && w[1] == b'\\');
    if ambiguous { s.len() } else { end }
}

/// Whether `s` opens a `--` comment: in MySQL only when whitespace or a
/// control character (or the end) follows, else it is two minus signs.
pub(super) fn dash_comment(s: &[u8], dialect: Dialect) -> bool {
    s.starts_with(b"--") && (dialect == Dialect::Postgres || s.get(2).is_none_or(|b| *b <= b' '))
}

/// Length of a `/* */` comment (they nest), or all of `s` when open.
pub(super) fn block_comment(s: &[u8]) -> usize {
    let (mut depth, mut i) = (0usize, 0);
    while i < s.len() {
        if s[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if s[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

/// Length of a quoted token opening `s` with `q` (a doubled `q` is one;
/// with `backslash`, `\` escapes), or all of `s` when it never closes.
pub(super) fn quoted(s: &[u8], q: u8, backslash: bool) -> usize {
    let mut i = 1;
    while i < s.len() {
        if backslash && s[i] == b'\\' {
            i += 2;
        } else if s[i] == q {
            if s.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

/// Length of a dollar-quoted string opening `s` (`$tag$…$tag$`), all of
/// `s` when it never closes; None when `s` does not open one.
pub(super) fn dollar_quoted(s: &[u8]) -> Option<usize> {
    // A tag is an identifier without `$` (letters of any script).
    let tag_len = s[1..].iter().position(|&b| b == b'$').filter(|&n| {
        s[1..=n]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b >= 0x80)
    })?;
    let tag = &s[..tag_len + 2];
    let body = &s[tag.len()..];
    Some(
        body.windows(tag.len())
            .position(|w| w == tag)
            .map_or(s.len(), |p| tag.len() + p + tag.len()),
    )
}

/// Length of a numeric literal opening `s` (decimal, exponent, hex,
/// octal or binary, with `_` separators).
fn number(s: &[u8]) -> usize {
    if s.len() > 2 && s[0] == b'0' && matches!(s[1], b'x' | b'X' | b'o' | b'O' | b'b' | b'B') {
        return 2 + s[2..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit() || **b == b'_')
            .count();
    }
    let mut i = s
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'_' || **b == b'.')
        .count();
    if matches!(s.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(s.get(i + 1), Some(b'+' | b'-')));
        let digits = s[(i + 1 + sign).min(s.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 {
            i += 1 + sign + digits;
        }
    }
    i
}
