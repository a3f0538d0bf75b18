//! Splitting a simple query's text into its statements, as the server
//! does: on `;` outside literals, comments, parentheses (a rule's actions)
//! and `BEGIN ATOMIC … END` bodies (PostgreSQL) or compound statements'
//! `BEGIN … END` (MySQL's stored programs).

use super::{
    Dialect,
    lex::{
        block_comment, dash_comment, dollar_quoted, escaped, line_comment, quoted, string, tokens,
    },
};

/// Splits a PostgreSQL simple query's text into its statements (on `;`
/// outside literals, identifiers and comments); empty ones are dropped.
pub fn statements(sql: &[u8]) -> Vec<&[u8]> {
    statements_in(Dialect::Postgres, sql)
}

/// [`statements`] of `dialect`.
pub fn statements_in(dialect: Dialect, sql: &[u8]) -> Vec<&[u8]> {
    let mysql = dialect == Dialect::Mysql;
    let mut out = Vec::new();
    let (mut start, mut i, mut depth, mut atomic) = (0, 0, 0usize, 0usize);
    while i < sql.len() {
        let rest = &sql[i..];
        let step = match sql[i] {
            b'\'' => string(rest, mysql),
            b'E' | b'e' if !mysql && rest.get(1) == Some(&b'\'') => 1 + string(&rest[1..], true),
            b'"' if mysql => escaped(rest, b'"'),
            b'"' => quoted(rest, b'"', false),
            b'`' if mysql => quoted(rest, b'`', false),
            b'#' if mysql => line_comment(rest),
            b'-' if dash_comment(rest, dialect) => line_comment(rest),
            // MySQL runs an executable comment's code: its `;` split.
            b'/' if mysql && rest.starts_with(b"/*!") => 3,
            b'*' if mysql && rest.starts_with(b"*/") => 2,
            b'/' if rest.starts_with(b"/*") => block_comment(rest),
            b'$' if !mysql => dollar_quoted(rest).unwrap_or(1),
            b'(' => {
                depth += 1;
                1
            }
            b')' => {
                depth = depth.saturating_sub(1);
                1
            }
            // A body `BEGIN ATOMIC … END` (its CASE … END within) holds
            // statements of its own.
            c if c.is_ascii_alphabetic() && !word_before(sql, i) => {
                let word = &rest[..rest.iter().take_while(|b| is_word_byte(**b)).count()];
                let is = |k: &str| word.eq_ignore_ascii_case(k.as_bytes());
                let before = last_word(&sql[..i]);
                let opens = if mysql {
                    // A BEGIN that does not start a statement opens a
                    // compound statement; within one, so do the flow
                    // controls (not IF(...), the function, nor the word
                    // after END).
                    let starts = sql[start..i].iter().all(u8::is_ascii_whitespace);
                    let after_end = before.eq_ignore_ascii_case(b"END");
                    let call = sql[i + word.len()..]
                        .iter()
                        .find(|b| !b.is_ascii_whitespace())
                        == Some(&b'(');
                    // Stored programs' bodies: a CREATE's or an ALTER's.
                    let first = first_word(&sql[start..i]);
                    let program = first.eq_ignore_ascii_case(b"CREATE")
                        || first.eq_ignore_ascii_case(b"ALTER");
                    // IF EXISTS, IF NOT EXISTS: no block.
                    let next = first_word(&sql[i + word.len()..]);
                    let clause =
                        next.eq_ignore_ascii_case(b"EXISTS") || next.eq_ignore_ascii_case(b"NOT");
                    let flow = ["IF", "LOOP", "WHILE", "REPEAT"].iter().any(|k| is(k))
                        && !(is("IF") && clause);
                    (is("BEGIN") && !starts && program)
                        || (atomic > 0 && !after_end && !call && flow)
                } else {
                    is("ATOMIC") && before.eq_ignore_ascii_case(b"BEGIN")
                };
                if opens || (atomic > 0 && is("CASE") && !before.eq_ignore_ascii_case(b"END")) {
                    atomic += 1;
                } else if atomic > 0 && is("END") {
                    atomic -= 1;
                }
                word.len()
            }
            // A `;` inside parentheses (a rule's actions) ends nothing.
            b';' if depth == 0 && atomic == 0 => {
                out.push(&sql[start..i]);
                start = i + 1;
                1
            }
            _ => 1,
        };
        i += step.max(1);
    }
    out.push(&sql[start.min(sql.len())..]);
    out.retain(|s| !tokens(s, dialect).is_empty());
    out
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether the byte before `i` continues a word (so `i` starts none).
fn word_before(sql: &[u8], i: usize) -> bool {
    i > 0 && is_word_byte(sql[i - 1])
}

/// The first word of `sql`, after any whitespace.
fn first_word(sql: &[u8]) -> &[u8] {
    let start = sql.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let len = sql[start..]
        .iter()
        .take_while(|b| is_word_byte(**b))
        .count();
    &sql[start..start + len]
}

/// The last word of `sql`, after any whitespace.
fn last_word(sql: &[u8]) -> &[u8] {
    let end = sql.len()
        - sql
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    let start = end
        - sql[..end]
            .iter()
            .rev()
            .take_while(|b| is_word_byte(**b))
            .count();
    &sql[start..end]
}
