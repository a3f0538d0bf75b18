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

mod lex;
mod split;
#[cfg(test)]
mod tests;

use self::lex::{Token, spanned};
pub use self::{
    lex::Dialect,
    split::{statements, statements_in},
};

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

/// Normalises PostgreSQL's `sql`; `cut`: the capture did not see all of it.
pub fn normalise(sql: &[u8], cut: bool) -> Statement {
    normalise_in(Dialect::Postgres, sql, cut)
}

/// Normalises `sql` of `dialect`: MySQL's literals become `?`, as its
/// statement digests show them.
pub fn normalise_in(dialect: Dialect, sql: &[u8], cut: bool) -> Statement {
    let mysql = dialect == Dialect::Mysql;
    let spans = spanned(sql, dialect);
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
            Token::Param(_) | Token::Literal if mysql => {
                text.push('?');
                if let Some(end) = literal_list(&tokens, i) {
                    text.push_str(", ...");
                    i = end;
                }
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
