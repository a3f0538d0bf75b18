use super::*;

fn text(sql: &str) -> String {
    normalise(sql.as_bytes(), false).text
}

#[test]
fn pgbench_statements_normalise_as_pg_stat_statements_shows_them() {
    assert_eq!(
        text("UPDATE pgbench_accounts SET abalance = abalance + -4077 WHERE aid = 83712;"),
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
    );
    assert_eq!(
        text("SELECT abalance FROM pgbench_accounts WHERE aid = 83712;"),
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
    );
    assert_eq!(
        text(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES (7, 1, 83712, -4077, CURRENT_TIMESTAMP);"
        ),
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
    );
    // The extended protocol's own parameters stay; literals go after them.
    assert_eq!(
        text("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2"),
        "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2"
    );
    assert_eq!(
        text("SELECT $1, 5 FROM t WHERE a = 'x'"),
        "SELECT $1, $2 FROM t WHERE a = $3"
    );
    assert_eq!(text("BEGIN;"), "BEGIN");
    assert_eq!(text("END;"), "END");
}

#[test]
fn no_literal_survives() {
    let sql = "SELECT * FROM users WHERE email = 'alice@example.com' AND card = \
               E'4111\\'1111' AND token = $tok$s3cr3t$tok$ AND n = 1e-7 AND h = 0xFF \
               AND b = B'1010' AND x = X'1F' AND price > 19.99 -- 'comment 12345'\n\
               /* secret 999 /* nested */ */ AND note = 'it''s'";
    let s = normalise(sql.as_bytes(), false);
    for secret in [
        "alice", "4111", "1111", "s3cr3t", "1e", "FF", "1010", "1F", "19", "comment", "12345",
        "secret", "999", "it",
    ] {
        assert!(!s.text.contains(secret), "{secret} in {}", s.text);
    }
    assert_eq!(
        s.text,
        "SELECT * FROM users WHERE email = $1 AND card = $2 AND token = $3 AND n = $4 AND \
         h = $5 AND b = $6 AND x = $7 AND price > $8 AND note = $9"
    );
}

#[test]
fn in_lists_of_literals_fold() {
    assert_eq!(
        text("SELECT * FROM t WHERE id IN (1, 2, 3)"),
        text("SELECT * FROM t WHERE id IN (4,5,6,7,8)")
    );
    assert_eq!(
        text("SELECT * FROM t WHERE id IN (1, 2, 3) AND k = 'a'"),
        "SELECT * FROM t WHERE id IN ($1, ...) AND k = $2"
    );
    // Not only literals: kept as written.
    assert_eq!(
        text("SELECT * FROM t WHERE id IN (a, 2)"),
        "SELECT * FROM t WHERE id IN (a, $1)"
    );
}

#[test]
fn a_minus_after_an_operand_is_a_subtraction() {
    assert_eq!(text("SELECT a - 1 FROM t"), "SELECT a - $1 FROM t");
    // The text around a placeholder is kept as written.
    assert_eq!(text("SELECT (a) -1 FROM t"), "SELECT (a) -$1 FROM t");
    assert_eq!(text("SELECT -1"), "SELECT $1");
    assert_eq!(text("SELECT f(-1, -2)"), "SELECT f($1, $2)");
}

#[test]
fn operation_and_table() {
    let id = |sql: &str| {
        let s = normalise(sql.as_bytes(), false);
        (s.operation, s.collection)
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(id("select * from Users u"), ("SELECT", some("Users")));
    assert_eq!(
        id("SELECT a FROM public.\"Order Items\" WHERE b IN (SELECT c FROM x)"),
        ("SELECT", some("public.Order Items"))
    );
    assert_eq!(
        id("insert into orders (a) values (1)"),
        ("INSERT", some("orders"))
    );
    assert_eq!(id("UPDATE ONLY t SET a = 1"), ("UPDATE", some("t")));
    assert_eq!(id("DELETE FROM s.t"), ("DELETE", some("s.t")));
    assert_eq!(
        id("WITH x AS (SELECT * FROM a) INSERT INTO b SELECT * FROM x"),
        ("INSERT", some("b"))
    );
    assert_eq!(id("SELECT (SELECT 1 FROM a) FROM b"), ("SELECT", some("b")));
    assert_eq!(id("SELECT 1"), ("SELECT", None));
    assert_eq!(id("BEGIN"), ("BEGIN", None));
    assert_eq!(id(""), ("", None));
    assert_eq!(
        normalise(b"select * from Users", false).summary(),
        "SELECT Users"
    );
}

#[test]
fn simple_queries_split_on_semicolons_outside_literals() {
    let parts = statements(b"SELECT ';'; UPDATE t SET a = $$;$$ ; -- c;\n; BEGIN");
    assert_eq!(
        parts,
        vec![
            &b"SELECT ';'"[..],
            &b" UPDATE t SET a = $$;$$ "[..],
            &b" BEGIN"[..]
        ]
    );
    assert!(statements(b" ; ;").is_empty());
}

#[test]
fn cut_and_hostile_input_is_normalised_safely() {
    // An open literal, comment or quote runs to the end: nothing leaks.
    let s = normalise(b"SELECT * FROM t WHERE a = 'secret-never-clo", true);
    assert!(s.truncated);
    assert_eq!(s.text, "SELECT * FROM t WHERE a = $1…");
    assert_eq!(
        normalise(b"SELECT 1 /* open comment secret", false).text,
        "SELECT $1"
    );
    for bytes in [
        &b"\xff\xfe\x00'"[..],
        b"$",
        b"$a",
        b"$$",
        b"E'\\",
        b"0x",
        b"1e+",
        b"\"",
        b"-",
    ] {
        let _ = normalise(bytes, false);
        let _ = statements(bytes);
    }
    let long = format!("SELECT {} FROM t", "a, ".repeat(1000));
    let s = normalise(long.as_bytes(), false);
    assert!(s.truncated && s.text.chars().count() <= MAX_TEXT + 1);
}

#[test]
fn literals_in_every_quoting_the_server_accepts_stay_inside() {
    for (sql, want) in [
        // A dollar quote tagged in another script.
        ("SELECT $é$hunter2$é$", "SELECT $1"),
        // An escape string continued on the next line.
        ("SELECT E'a'\n'\\'hunter2 x'", "SELECT $1"),
        // standard_conforming_strings off: a backslash escapes the quote.
        ("SELECT 'it\\'s hunter2'", "SELECT $1"),
        // A comment ends at a carriage return too.
        ("SELECT 1 -- c\r, 'l1\nhunter2'", "SELECT $1 , $2"),
        // A backtick is an operator character, not a quote.
        ("SELECT 1 ` 'hunter2' ` 2", "SELECT $1 ` $2 ` $3"),
    ] {
        assert_eq!(text(sql), want, "{sql:?}");
    }
}

#[test]
fn a_rule_with_several_actions_is_one_statement() {
    let sql = b"CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); SELECT 1";
    assert_eq!(statements(sql).len(), 2);
}

#[test]
fn an_unknown_first_word_is_other() {
    assert_eq!(normalise(b"SELEC 1", false).operation, "OTHER");
    let long = "x".repeat(4000);
    assert_eq!(normalise(long.as_bytes(), false).operation, "OTHER");
    assert_eq!(normalise(b"vacuum t", false).operation, "VACUUM");
}

#[test]
fn a_function_body_begin_atomic_is_one_statement() {
    let sql = b"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; SELECT 3";
    let parts = statements(sql);
    assert_eq!(
        parts.len(),
        2,
        "{:?}",
        parts
            .iter()
            .map(|p| String::from_utf8_lossy(p))
            .collect::<Vec<_>>()
    );
    // An ordinary END (a transaction's) splits as usual.
    assert_eq!(statements(b"BEGIN; SELECT 1; END; SELECT 2").len(), 4);
}

fn my(sql: &str) -> Statement {
    normalise_in(Dialect::Mysql, sql.as_bytes(), false)
}

#[test]
fn mysql_literals_become_question_marks_and_its_quotes_are_read() {
    assert_eq!(
        my("SELECT `name` FROM `shop`.`users` WHERE id = 42 AND email = \"a@b.c\"").text,
        "SELECT `name` FROM `shop`.`users` WHERE id = ? AND email = ?"
    );
    assert_eq!(
        my("SELECT `name` FROM `shop`.`users` WHERE id = 42")
            .collection
            .as_deref(),
        Some("shop.users")
    );
    // A backslash escapes a quote: nothing of the literal is left.
    let s = my(r#"INSERT INTO t (a, b) VALUES ('it\'s hunter2', "x\"y secret") # note"#);
    assert_eq!(s.text, "INSERT INTO t (a, b) VALUES (?, ?)");
    assert_eq!(s.operation, "INSERT");
    assert_eq!(
        my("SELECT * FROM t WHERE id IN (1, 2, 3) AND x = ?").text,
        "SELECT * FROM t WHERE id IN (?, ...) AND x = ?"
    );
    assert_eq!(
        my("UPDATE t SET n = n - 1 WHERE id = -7 -- cmt").text,
        "UPDATE t SET n = n - ? WHERE id = ?"
    );
    assert_eq!(
        my("SELECT 0x1F, X'AB', _utf8mb4'pw'").text,
        "SELECT ?, ?, _utf8mb4?"
    );
}

#[test]
fn mysql_queries_split_outside_compound_statements() {
    let split = |s: &str| -> Vec<String> {
        statements_in(Dialect::Mysql, s.as_bytes())
            .into_iter()
            .map(|p| String::from_utf8_lossy(p).trim().to_owned())
            .collect()
    };
    assert_eq!(
        split("SELECT 1; SELECT ';' # ;\n; BEGIN; COMMIT"),
        ["SELECT 1", "SELECT ';' # ;", "BEGIN", "COMMIT"]
    );
    let proc = "CREATE PROCEDURE p() BEGIN IF 1 THEN SELECT 1; END IF; SELECT IF(1, 2, 3); END";
    assert_eq!(split(&format!("{proc}; CALL p()")), [proc, "CALL p()"]);
}

#[test]
fn an_ambiguous_backslash_hides_the_rest_and_mysql_dashes_need_a_space() {
    // With standard_conforming_strings on, 'C:\' ends at its quote; off,
    // it does not: either way nothing after it is shown.
    let s = text(r"SELECT * FROM f WHERE dir = 'C:\' AND email = 'alice@example.com'");
    assert!(!s.contains("alice"), "{s}");
    assert_eq!(text(r"SELECT E'it\'s', 'x'"), "SELECT $1, $2");
    // MySQL: `--` with no space is two minus signs.
    let s = my("SELECT x--'\n' WHERE e = 'alice@example.com'").text;
    assert!(!s.contains("alice"), "{s}");
    // An executable comment's code runs: it is the statement.
    assert_eq!(my("/*!40101 SET NAMES utf8 */").text, "SET NAMES utf8");
    assert_eq!(my("/*!40101 SET NAMES utf8 */").operation, "SET");
}

#[test]
fn mysql_splits_on_what_the_server_splits_on() {
    let n = |s: &str| statements_in(Dialect::Mysql, s.as_bytes()).len();
    assert_eq!(n("SELECT 1--1; SELECT 2"), 2);
    assert_eq!(n("SELECT begin FROM t; SELECT 2"), 2);
    assert_eq!(n("XA BEGIN 'x'; SELECT 2"), 2);
    assert_eq!(
        n("CREATE PROCEDURE p() BEGIN DROP TABLE IF EXISTS t; SELECT 1; END; SELECT 2"),
        2
    );
    assert_eq!(
        n("/*!40101 SET NAMES utf8 */; /*!40103 SET TIME_ZONE='+00:00' */;"),
        2
    );
}

#[test]
fn a_backslash_that_may_end_a_multibyte_character_hides_the_rest() {
    // sjis 0x83 0x5c is one character: the quote after it ends the
    // string, and what follows is code the server runs. Either reading
    // hides the email.
    let mut sql = b"SELECT * FROM t WHERE a = '".to_vec();
    sql.extend_from_slice(&[0x83, 0x5c]);
    sql.extend_from_slice(b"' AND e = 'alice@example.com'");
    let s = normalise_in(Dialect::Mysql, &sql, false).text;
    assert!(!s.contains("alice"), "{s}");
    assert!(s.starts_with("SELECT * FROM t WHERE a = ?"), "{s}");
    // A plain escaped quote still reads as one.
    assert_eq!(my(r"SELECT 'it\'s', 2").text, "SELECT ?, ?");
}
