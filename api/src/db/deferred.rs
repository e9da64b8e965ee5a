//! Writes whose outcome a step does not look at, sent together.
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryTrait, Statement, Values};

/// Inserts kept to be sent together at the end of a step. On SQLite one call runs them all,
/// in order: sqlx runs every statement of a text, binding the values of its `?` placeholders
/// one after the other. A step's statements each cost a hop between the writer thread and
/// the connection's own thread, and every step waits in that one line, so three inserts sent
/// as one save two of those hops. On PostgreSQL a statement with values must go alone: they
/// are sent one by one, as before.
///
/// The statements are sea-query's, whose SQLite placeholders are all plain `?`: a numbered
/// one (`?NNN`, `$NNN`) would name an absolute position in the joined values, and bind the
/// wrong one.
pub struct Deferred {
    backend: DbBackend,
    statements: Vec<Statement>,
    /// A `SELECT pg_notify(…)` telling other instances of the step's events (PostgreSQL),
    /// sent with the inserts so that it goes out with their commit.
    announcement: Option<Statement>,
}

impl Deferred {
    /// Nothing kept yet, for statements to run on `backend`.
    pub fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            statements: Vec::new(),
            announcement: None,
        }
    }

    /// Sends `announcement` (a `SELECT`) with the inserts, after them.
    pub fn announce(&mut self, announcement: Statement) {
        self.announcement = Some(announcement);
    }

    /// Keeps `query` to be sent with the others.
    pub fn push(&mut self, query: &impl QueryTrait) {
        self.statements.push(query.build(self.backend));
    }

    /// Keeps `statement` (built with plain `?` placeholders) to be sent with the others.
    #[cfg(test)]
    pub fn push_statement(&mut self, statement: Statement) {
        self.statements.push(statement);
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.announcement.is_none()
    }

    /// Sends what was kept, in order; one failed statement fails them all (the caller's
    /// transaction, or savepoint, undoes those before it).
    pub async fn run(mut self, db: &impl ConnectionTrait) -> Result<(), DbErr> {
        self.statements.extend(self.announcement.take());
        match self.backend {
            DbBackend::Sqlite if self.statements.len() > 1 => {
                db.execute_raw(joined(self.backend, None, self.statements))
                    .await?;
            }
            _ => {
                for statement in self.statements {
                    db.execute_raw(statement).await?;
                }
            }
        }
        Ok(())
    }

    /// What was kept, to be sent by [`joined`] with others' (SQLite).
    pub(super) fn into_statements(mut self) -> Vec<Statement> {
        self.statements.extend(self.announcement.take());
        self.statements
    }

    /// PostgreSQL: what was kept as one statement, which runs (and commits) as a whole or not
    /// at all: each insert a data-modifying `WITH` query (PostgreSQL runs those whether or not
    /// anything reads them), the announcement, if any, the main query. One round trip instead
    /// of a transaction's BEGIN, each insert, and COMMIT; foreign keys are checked at the end
    /// of the statement, when every row is in.
    ///
    /// The statements are sea-query's, numbered `$1…$n` each: the numbers are shifted to
    /// follow the values of the statements before. Their texts hold no literal (every value
    /// is a parameter), so every `$` followed by digits is a placeholder.
    pub fn chained(self) -> Statement {
        let mut sql = String::new();
        let mut values = Vec::new();
        for (i, statement) in self.statements.into_iter().enumerate() {
            sql.push_str(if i == 0 { "WITH " } else { ", " });
            sql.push_str(&format!("w{i} AS ("));
            push_shifted(&mut sql, &statement.sql, values.len());
            sql.push(')');
            values.extend(statement.values.map(|v| v.0).unwrap_or_default());
        }
        if !sql.is_empty() {
            sql.push(' ');
        }
        match self.announcement {
            Some(announcement) => {
                push_shifted(&mut sql, &announcement.sql, values.len());
                values.extend(announcement.values.map(|v| v.0).unwrap_or_default());
            }
            None => sql.push_str("SELECT 1"),
        }
        let mut all = Statement::from_string(self.backend, sql);
        all.values = Some(Values(values));
        all
    }
}

/// Appends `sql` with each placeholder `$n` written `$(n + shift)`.
fn push_shifted(out: &mut String, sql: &str, shift: usize) {
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + shift).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
}

/// SQLite: `statements` as one text, in order, after `first` (a statement without values)
/// if given; their values one after the other, as sqlx binds them.
pub(super) fn joined(
    backend: DbBackend,
    first: Option<&str>,
    statements: impl IntoIterator<Item = Statement>,
) -> Statement {
    let mut sql = first.map(str::to_owned).unwrap_or_default();
    let mut values = Vec::new();
    for statement in statements {
        if !sql.is_empty() {
            sql.push_str(";\n");
        }
        sql.push_str(&statement.sql);
        values.extend(statement.values.map(|v| v.0).unwrap_or_default());
    }
    let mut all = Statement::from_string(backend, sql);
    all.values = Some(Values(values));
    all
}

#[cfg(test)]
mod tests {
    use sea_orm::Value;

    use super::*;

    fn statement(sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    }

    #[test]
    fn postgres_inserts_chain_into_one_statement_with_their_placeholders_shifted() {
        let mut kept = Deferred::new(DbBackend::Postgres);
        kept.statements.push(statement(
            r#"INSERT INTO "a" ("x", "y") VALUES ($1, $2)"#,
            vec![1i32.into(), 2i32.into()],
        ));
        kept.statements.push(statement(
            r#"INSERT INTO "b" ("x", "y", "z") VALUES ($1, $2, $3), ($4, $5, $6)"#,
            (3..=8).map(|n: i32| n.into()).collect(),
        ));
        kept.announce(statement(
            "SELECT pg_notify($1, $2)",
            vec!["channel".into(), "payload".into()],
        ));
        let all = kept.chained();
        assert_eq!(
            all.sql,
            r#"WITH w0 AS (INSERT INTO "a" ("x", "y") VALUES ($1, $2)), w1 AS (INSERT INTO "b" ("x", "y", "z") VALUES ($3, $4, $5), ($6, $7, $8)) SELECT pg_notify($9, $10)"#
        );
        let values = all.values.expect("values").0;
        let expected: Vec<Value> = (1..=8)
            .map(|n: i32| n.into())
            .chain(["channel".into(), "payload".into()])
            .collect();
        assert_eq!(values, expected);
    }

    #[test]
    fn a_chain_without_announcement_ends_with_a_plain_select() {
        let mut kept = Deferred::new(DbBackend::Postgres);
        kept.statements.push(statement(
            r#"INSERT INTO "a" ("x") VALUES ($1)"#,
            vec![1i32.into()],
        ));
        assert_eq!(
            kept.chained().sql,
            r#"WITH w0 AS (INSERT INTO "a" ("x") VALUES ($1)) SELECT 1"#
        );
    }

    #[test]
    fn placeholders_past_nine_shift_whole() {
        let mut out = String::new();
        push_shifted(&mut out, "VALUES ($9, $10, $123) -- $", 7);
        assert_eq!(out, "VALUES ($16, $17, $130) -- $");
    }
}
