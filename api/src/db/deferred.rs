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
}

impl Deferred {
    /// Nothing kept yet, for statements to run on `backend`.
    pub fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            statements: Vec::new(),
        }
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
        self.statements.is_empty()
    }

    /// Sends what was kept, in order; one failed statement fails them all (the caller's
    /// transaction, or savepoint, undoes those before it).
    pub async fn run(self, db: &impl ConnectionTrait) -> Result<(), DbErr> {
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
    pub(super) fn into_statements(self) -> Vec<Statement> {
        self.statements
    }
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
