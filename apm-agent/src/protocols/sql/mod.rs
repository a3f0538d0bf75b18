//! SQL statement identity, the way `pg_stat_statements` sees it: every
//! literal (strings, numbers, dollar-quoted and bit strings; booleans and
//! NULL are keywords) becomes a `$n` placeholder numbered after the
//! statement's own parameters, so no value ever leaves this file. Comments are dropped
//! and whitespace runs become one space; a list of literals only in
//! `IN (…)` collapses to its first placeholder and `...`, so the number
//! of values does not make a new statement. Also: the operation (first
//! keyword, or a `WITH`'s main statement) and the main table.
//!
//! Input is bytes as captured: a statement cut short by the capture is
//! normalised as far as it goes, and a literal cut in the middle still
//! becomes a placeholder (nothing of it is kept).

mod split;
#[cfg(test)]
mod tests;

pub use self::split::statements;

/// Longest normalised text kept; longer ones end in `…` (truncated).
pub const MAX_TEXT: usize = 1024;
/// Longest table name kept (PostgreSQL's NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// A normalised statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statement {
    /// The text with literals replaced by placeholders.
    pub text: String,
    /// Its first keyword (upper case), or for `WITH` the statement the
    /// common table expressions feed; `""` for an empty statement.
    pub operation: &'static str,
    /// The main table: `FROM` of a SELECT or DELETE, `INTO` of an INSERT,
    /// the target of an UPDATE (schema-qualified as written, unquoted).
    pub collection: Option<String>,
    /// The text was longer than [`MAX_TEXT`], or the input was cut.
    pub truncated: bool,
}

impl Statement {
    /// `operation collection`, or the operation alone: a short,
    /// low-cardinality name (OpenTelemetry's `db.query.summary`).
    pub fn summary(&self) -> String {
        match &self.collection {
            Some(c) => format!("{} {c}", self.operation),
            None => self.operation.to_owned(),
        }
    }
}

/// One lexical token: what the output keeps of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token<'a> {
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
fn tokens(sql: &[u8]) -> Vec<Token<'_>> {
    spanned(sql).into_iter().map(|s| s.0).collect()
}

/// [`tokens`] with where each starts and ends.
fn spanned(sql: &[u8]) -> Vec<(Token<'_>, usize, usize)> {
    let mut out: Vec<(Token<'_>, usize, usize)> = Vec::new();
    let mut i = 0;
    while i < sql.len() {
        let before = out.len();
        let at = i;
        let c = sql[i];
        let rest = &sql[i..];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if rest.starts_with(b"--") {
            i += line_comment(rest);
        } else if rest.starts_with(b"/*") {
            i += block_comment(rest);
        } else if c == b'\'' {
            i += string(rest);
            out.push((Token::Literal, 0, 0));
        } else if matches!(c, b'E' | b'e' | b'B' | b'b' | b'X' | b'x' | b'N' | b'n')
            && rest.get(1) == Some(&b'\'')
        {
            i += 1 + string(&rest[1..]);
            out.push((Token::Literal, 0, 0));
        } else if c == b'"' {
            let n = quoted(rest, c, false);
            out.push((Token::Quoted(&rest[..n]), 0, 0));
            i += n;
        } else if c == b'$' {
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
            const OPS: &[u8] = b"+-*/<>=~!@#%^&|?";
            let n = if OPS.contains(&c) {
                rest.iter().take_while(|b| OPS.contains(b)).count()
            } else {
                1
            };
            // `--` and `/*` start comments even inside an operator run.
            let n = (1..n)
                .find(|&k| rest[k..].starts_with(b"--") || rest[k..].starts_with(b"/*"))
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
fn line_comment(s: &[u8]) -> usize {
    s.iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .unwrap_or(s.len())
}

/// Length of a string literal opening `s`, with its continuations (another
/// quoted part after whitespace holding a newline). A backslash escapes
/// the next byte whatever the literal's prefix: with
/// `standard_conforming_strings` off it does in plain strings too, and
/// reading too much as literal hides more, never less.
fn string(s: &[u8]) -> usize {
    let mut end = quoted(s, b'\'', true);
    loop {
        let gap = s[end..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        let newline = s[end..end + gap].iter().any(|&b| b == b'\n' || b == b'\r');
        if !newline || s.get(end + gap) != Some(&b'\'') {
            return end;
        }
        end += gap + quoted(&s[end + gap..], b'\'', true);
    }
}

/// Length of a `/* */` comment (they nest), or all of `s` when open.
fn block_comment(s: &[u8]) -> usize {
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
fn quoted(s: &[u8], q: u8, backslash: bool) -> usize {
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
fn dollar_quoted(s: &[u8]) -> Option<usize> {
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

/// Normalises `sql`; `cut`: the capture did not see all of it.
pub fn normalise(sql: &[u8], cut: bool) -> Statement {
    let spans = spanned(sql);
    let tokens: Vec<Token<'_>> = spans.iter().map(|s| s.0).collect();
    let mut next = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Param(n) => Some(*n),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let body_end = tokens
        .iter()
        .rposition(|t| *t != Token::Punct(b";"))
        .map_or(0, |p| p + 1);
    let mut text = String::new();
    let mut prev_end: Option<usize> = None;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        // A trailing `;` (or several) is not part of the statement.
        if i >= body_end {
            break;
        }
        // What lay between tokens (spaces, comments) becomes one space.
        if prev_end.is_some_and(|end| end < spans[i].1) {
            text.push(' ');
        }
        match t {
            Token::Word(w) | Token::Quoted(w) | Token::Punct(w) => {
                text.push_str(&String::from_utf8_lossy(w));
            }
            Token::Param(n) => {
                text.push('$');
                text.push_str(&n.to_string());
            }
            Token::Literal => {
                next = next.saturating_add(1);
                text.push('$');
                text.push_str(&next.to_string());
                // IN ($1, $2, …): the rest of a literal-only list folds.
                if let Some(end) = literal_list(&tokens, i) {
                    text.push_str(", ...");
                    i = end;
                }
            }
        }
        prev_end = Some(spans[i].2);
        i += 1;
        if text.len() > MAX_TEXT {
            break;
        }
    }
    let truncated = cut || text.len() > MAX_TEXT;
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    // What was not seen is marked, so a cut text is never taken for a
    // whole statement.
    if truncated {
        text.push('…');
    }
    text.shrink_to_fit();
    let (operation, collection) = identity(&tokens);
    Statement {
        text,
        operation,
        collection,
        truncated,
    }
}

/// When the literal at `at` opens a list of two or more literals only,
/// directly after `IN (`: the index of its last literal.
fn literal_list(tokens: &[Token<'_>], at: usize) -> Option<usize> {
    let opened = at >= 2
        && tokens[at - 1] == Token::Punct(b"(")
        && matches!(tokens[at - 2], Token::Word(w) if w.eq_ignore_ascii_case(b"IN"));
    if !opened {
        return None;
    }
    let mut end = at;
    while tokens.get(end + 1) == Some(&Token::Punct(b","))
        && tokens.get(end + 2) == Some(&Token::Literal)
    {
        end += 2;
    }
    (end > at && tokens.get(end + 1) == Some(&Token::Punct(b")"))).then_some(end)
}

/// The operation and the main table of a statement's tokens.
fn identity(tokens: &[Token<'_>]) -> (&'static str, Option<String>) {
    let Some(first) = tokens.iter().position(|t| !matches!(t, Token::Punct(b"("))) else {
        return ("", None);
    };
    let Token::Word(word) = tokens[first] else {
        return ("", None);
    };
    let mut op = word;
    let mut at = first;
    if word.eq_ignore_ascii_case(b"WITH") {
        // The statement after the common table expressions: the first
        // DML keyword at depth 0.
        let mut depth = 0i32;
        for (i, t) in tokens.iter().enumerate().skip(first + 1) {
            match t {
                Token::Punct(b"(") => depth += 1,
                Token::Punct(b")") => depth -= 1,
                Token::Word(w) if depth == 0 && is_dml(w) => {
                    op = w;
                    at = i;
                    break;
                }
                _ => {}
            }
        }
    }
    let operation = operation_name(op);
    let after = |keyword: &[u8]| -> Option<usize> {
        let mut depth = 0i32;
        for (i, t) in tokens.iter().enumerate().skip(at + 1) {
            match t {
                Token::Punct(b"(") => depth += 1,
                Token::Punct(b")") => depth -= 1,
                Token::Word(w) if depth == 0 && w.eq_ignore_ascii_case(keyword) => {
                    return Some(i + 1);
                }
                _ => {}
            }
        }
        None
    };
    let name_at = match operation {
        "SELECT" | "DELETE" => after(b"FROM"),
        "INSERT" | "REPLACE" => after(b"INTO"),
        "UPDATE" => Some(at + 1),
        _ => None,
    };
    (operation, name_at.and_then(|i| table_name(&tokens[i..])))
}

/// Statement keywords an operation is named by; any other first word (a
/// typo, garbage, a dialect's own) is `OTHER`: the name is a label.
const OPERATIONS: [&str; 56] = [
    "ABORT",
    "ALTER",
    "ANALYZE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DESCRIBE",
    "DISCARD",
    "DO",
    "DROP",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "GRANT",
    "IMPORT",
    "INSERT",
    "LISTEN",
    "LOAD",
    "LOCK",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "PREPARE",
    "REFRESH",
    "REINDEX",
    "RELEASE",
    "RENAME",
    "REPLACE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SECURITY",
    "SELECT",
    "SET",
    "SHOW",
    "START",
    "TABLE",
    "TRUNCATE",
    "UNLISTEN",
    "UPDATE",
    "USE",
    "VACUUM",
    "VALUES",
    "WITH",
    "UNKNOWN",
];

/// The label of a statement's first keyword.
fn operation_name(word: &[u8]) -> &'static str {
    OPERATIONS
        .iter()
        .find(|k| k.as_bytes().eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("OTHER")
}

fn is_dml(w: &[u8]) -> bool {
    ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"]
        .iter()
        .any(|k| k.as_bytes().eq_ignore_ascii_case(w))
}

/// A (possibly qualified) table name opening `tokens`, unquoted; `ONLY`
/// and `LOW_PRIORITY`-style modifiers before it are skipped.
fn table_name(tokens: &[Token<'_>]) -> Option<String> {
    let mut i = 0;
    while let Some(Token::Word(w)) = tokens.get(i) {
        let modifier = [
            "ONLY",
            "LOW_PRIORITY",
            "IGNORE",
            "DELAYED",
            "QUICK",
            "LATERAL",
        ]
        .iter()
        .any(|k| k.as_bytes().eq_ignore_ascii_case(w));
        if !modifier {
            break;
        }
        i += 1;
    }
    let mut name = String::new();
    loop {
        let part = match tokens.get(i)? {
            Token::Word(w) => String::from_utf8_lossy(w).into_owned(),
            Token::Quoted(q) => {
                String::from_utf8_lossy(&q[1..q.len().saturating_sub(1).max(1)]).into_owned()
            }
            _ => return None,
        };
        name.push_str(&part);
        if tokens.get(i + 1) == Some(&Token::Punct(b".")) {
            name.push('.');
            i += 2;
        } else {
            break;
        }
    }
    if name.is_empty() || name.len() > MAX_NAME * 3 {
        return None;
    }
    Some(name)
}
